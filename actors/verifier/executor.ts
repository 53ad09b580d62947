/**
 * Executes one VerifyBatch on the worker's target model: prefills new sessions, verifies
 * drafts (greedy or rejection sampling), rolls caches back to the committed length, records
 * the committed tokens (Redis, through `SessionLedger`) and answers each device.
 *
 * Invariant per session: the cache holds committed − 1 tokens; a verification feeds
 * [last committed token, d1..dm] and keeps the accepted prefix. Every decision at a sequence
 * position uses randomness keyed by (seed, position), so a round replayed on another worker
 * (after a crash) commits exactly the same tokens.
 */
import { ROOT_CONTEXT, type Context } from '@opentelemetry/api';
import {
  PROTOCOL_VERSION,
  type BatchItem,
  type ErrorCode,
  type ErrorMessage,
  type Sampling,
  type SessionOpen,
  type TokenStream,
  type VerifyBatch,
  type VerifyRequest,
  type VerifyResult,
} from '../../protocol/messages.ts';
import { errorMessage, verifyResult } from '../../protocol/builders.ts';
import type { DecoderRunner, ForwardItem, KvCacheHandle } from '../../inference/types.ts';
import type { BatchShape } from '../../policies/types.ts';
import { sampleTargetToken } from '../../inference/sampling.ts';
import { verifyDraft, VerifyInputError } from '../../inference/verify.ts';
import { DECODE_STEP_PREFIX, nextDecodeTpotMs, stepSharesPass, type BatchReport } from '../../machines/verifier-worker.ts';
import type { VerifierMetrics } from '../../telemetry/metrics.ts';
import { ATTR, startBatchSpan, startItemSpan, tracingOn, type SpanHandle } from '../../telemetry/spans.ts';
import { errorCode } from '../../common/errors.ts';

/** What the worker keeps per session (the durable copy lives in the ledger). */
export interface WorkerSession {
  sessionId: string;
  deviceId: string;
  mode: 'speculative' | 'centralized';
  sampling: Sampling;
  maxNewTokens: number;
  promptLength: number;
  replyTo: string;
  cache: KvCacheHandle;
  /** Committed tokens: prompt + generated. */
  tokens: number[];
  lastRound: number;
  lastResult: VerifyResult | null;
  lastAccessMs: number;
  /** Centralized mode: next stream sequence number, and whether it still decodes. */
  streamSeq: number;
  decoding: boolean;
  /** Centralized mode: when its last pass (prefill or decode step) ended, for the wait before its next step. */
  lastStepEndMs?: number;
  /** Prompt tokens in its cache while its prompt is fed in chunks; absent once it has its first token. */
  prefilled?: number;
  /** Adaptive serving: decoded, and handed back to its device with its next token (VerifyBatch.speculate). */
  handoff?: boolean;
  /** Adaptive serving: the committed length at its last hand-back (SessionRecord.handedBackAt). */
  handedBackAt?: number;
}

/** The durable per-session record a worker writes and, after a crash elsewhere, reads back. */
export interface SessionRecord {
  deviceId: string;
  mode: 'speculative' | 'centralized';
  sampling: Sampling;
  maxNewTokens: number;
  promptLength: number;
  replyTo: string;
  tokens: number[];
  lastRound: number;
  lastResult: VerifyResult | null;
  /**
   * Adaptive serving: the committed length at which the server last handed the session back to
   * its device. A device that resumes its stream before hearing so is told again, not decoded.
   */
  handedBackAt?: number;
}

/** Narrow view of the Redis store the executor needs. */
export interface SessionLedger {
  /** Creates a session's record at prefill: the prompt, the first token and the settings. */
  open(sessionId: string, record: SessionRecord, kvBytes: number): Promise<void>;
  /** Appends committed tokens and records the round's result, atomically. */
  commit(sessionId: string, newTokens: number[], result: VerifyResult, kvBytes: number): Promise<void>;
  /**
   * Appends tokens the server decoded (after the first `fromLength`); the last round's result
   * stays. `handBack`: they end its decoding (recorded as the session's `handedBackAt`).
   */
  append(sessionId: string, fromLength: number, newTokens: number[], kvBytes: number, handBack?: boolean): Promise<void>;
  load(sessionId: string): Promise<SessionRecord | null>;
  /** Records that this worker now holds the session (after rebuilding it from the ledger). */
  adopt(sessionId: string, kvBytes: number): Promise<void>;
  remove(sessionId: string): Promise<void>;
}

export interface ExecutorDeps {
  workerId: string;
  runner: DecoderRunner;
  ledger: SessionLedger;
  /**
   * Sends a reply to a device's queue (results, stream chunks, errors). Should report its own
   * failures: a rejection of a batch's reply is ignored (the device retries the round).
   */
  reply: (queue: string, message: VerifyResult | TokenStream | ErrorMessage) => Promise<void>;
  now: () => number;
  eosTokenId: number | null;
  /** Dead-letters a refused request with its reason (docs/design.md §3); optional (unit tests). */
  deadLetter?: (request: unknown, reason: string) => Promise<void>;
  /** Prometheus series of the verifier role; none when absent. */
  metrics?: VerifierMetrics;
  /** Counts a request let go on purpose (wisp_ignored_messages_total): a stale round or committed length. */
  onIgnored?: (reason: 'stale_round' | 'stale_length') => void;
}

interface Job {
  item: BatchItem;
  session: WorkerSession;
  tokens: number[];
  verifyTokens: number;
  /** A prompt (chunk): whether it ends the prompt (the first token comes with it), and where it ends. */
  prefill?: { last: boolean; end: number };
}

export class BatchExecutor {
  readonly sessions = new Map<string, WorkerSession>();
  /** Replies of the last batch or decode step whose broker confirms are still outstanding. */
  #replying: Promise<unknown> = Promise.resolve();
  #decodeTpotMs: number | undefined;
  constructor(private readonly deps: ExecutorDeps) {}

  get kvBytes(): number {
    let total = 0;
    for (const s of this.sessions.values()) total += s.cache.bytes;
    return total;
  }

  /** Mean time between a decoded session's tokens over the recent passes (an EWMA), ms; undefined before any. */
  get decodeTpotMs(): number | undefined {
    return this.#decodeTpotMs;
  }

  get decodeActive(): number {
    let n = 0;
    for (const s of this.sessions.values()) if (s.decoding) n++;
    return n;
  }

  evict(sessionId: string): void {
    this.sessions.delete(sessionId);
  }

  /** Drops caches of sessions idle for longer than `idleMs` (their devices vanished). */
  evictIdle(nowMs: number, idleMs: number): string[] {
    const gone: string[] = [];
    for (const s of this.sessions.values()) {
      if (nowMs - s.lastAccessMs > idleMs) {
        this.sessions.delete(s.sessionId);
        gone.push(s.sessionId);
      }
    }
    return gone;
  }

  private async refuse(item: BatchItem, code: ErrorCode, message: string): Promise<void> {
    const r = item.request;
    // Kept for inspection beside malformed messages; a failure here must not cost the answer.
    void this.deps.deadLetter?.(r, `${code}: ${message}`).catch(() => {});
    await this.deps.reply(r.replyTo, errorMessage(code, message, { sessionId: r.sessionId, round: r.type === 'open' ? 0 : r.round }));
  }

  private outOfVocab(tokens: readonly number[]): number | undefined {
    const V = this.deps.runner.info.vocabSize;
    return tokens.find((t) => t >= V);
  }

  /** Rebuilds a session this worker does not hold from the ledger (another worker had it). */
  private async rebuild(sessionId: string, loaded?: SessionRecord | null): Promise<WorkerSession | null> {
    const rec = loaded === undefined ? await this.deps.ledger.load(sessionId) : loaded;
    if (!rec || rec.tokens.length < 2) return null;
    const cache = this.deps.runner.newCache();
    await this.deps.runner.forward([{ cache, tokens: rec.tokens.slice(0, -1) }]);
    const s: WorkerSession = { sessionId, ...rec, cache, lastAccessMs: this.deps.now(), streamSeq: 0, decoding: false };
    this.sessions.set(sessionId, s);
    await this.deps.ledger.adopt(sessionId, cache.bytes);
    return s;
  }

  private async planOpen(item: BatchItem, m: SessionOpen): Promise<Job | null> {
    const chunk = item.chunk ?? { start: 0, end: m.promptTokens.length };
    if (chunk.end > m.promptTokens.length) {
      await this.refuse(item, 'malformed', `chunk [${chunk.start}, ${chunk.end}) runs past the ${m.promptTokens.length}-token prompt`);
      return null;
    }
    const last = chunk.end === m.promptTokens.length;
    const existing = this.sessions.get(m.sessionId);
    if (existing && existing.prefilled !== undefined && existing.deviceId === m.deviceId) {
      // Its prompt is being fed in chunks: the next one extends the cache; any other (a chunk
      // redelivered, or the prompt started over after a failure) rebuilds it from the prompt,
      // which every chunk's open carries, so the cache is always exactly the prompt's.
      const from = existing.prefilled === chunk.start ? chunk.start : 0;
      if (from === 0 && existing.cache.length > 0) existing.cache.rollback(0);
      return { item, session: existing, tokens: m.promptTokens.slice(from, chunk.end), verifyTokens: 0, prefill: { last, end: chunk.end } };
    }
    if (existing) {
      if (existing.deviceId !== m.deviceId) {
        await this.refuse(item, 'not_owner', `session ${m.sessionId} belongs to another device`);
        return null;
      }
      // A repeated open (retry, redelivery) gets the same answer while the session is at round 0;
      // later it is stale. It never restarts a session that has moved on. A session this worker
      // decodes got its first token as stream chunk 0: that chunk again (a device past it drops
      // it), so an adaptive device still opening learns the right mode.
      if (last && existing.lastResult && existing.lastRound === 0) await this.deps.reply(m.replyTo, existing.mode === 'centralized' ? this.firstChunk(existing) : existing.lastResult);
      return null;
    }
    // Not held here: the ledger says whether it was opened already (elsewhere, or before a crash).
    const recorded = await this.deps.ledger.load(m.sessionId);
    if (recorded) {
      if (recorded.deviceId !== m.deviceId) {
        await this.refuse(item, 'not_owner', `session ${m.sessionId} belongs to another device`);
        return null;
      }
      if (last && recorded.lastResult && recorded.lastRound === 0) await this.deps.reply(m.replyTo, recorded.lastResult);
      return null;
    }
    const bad = this.outOfVocab(m.promptTokens);
    if (bad !== undefined) {
      await this.refuse(item, 'token_out_of_vocab', `prompt token ${bad} is outside the vocabulary (size ${this.deps.runner.info.vocabSize})`);
      return null;
    }
    if (m.mode === 'adaptive') {
      // The scheduler resolves `adaptive` before it dispatches an open; one that did not is a bug upstream.
      await this.refuse(item, 'malformed', 'mode "adaptive" reached a worker: the scheduler must choose speculative or centralized');
      return null;
    }
    const maxPositions = this.deps.runner.info.maxPositions;
    if (m.promptTokens.length >= maxPositions) {
      await this.refuse(item, 'prompt_too_long', `prompt of ${m.promptTokens.length} tokens does not fit the ${maxPositions}-token context`);
      return null;
    }
    const session: WorkerSession = {
      sessionId: m.sessionId,
      deviceId: m.deviceId,
      mode: m.mode,
      sampling: m.sampling,
      maxNewTokens: m.maxNewTokens,
      promptLength: m.promptTokens.length,
      replyTo: m.replyTo,
      cache: this.deps.runner.newCache(),
      tokens: [...m.promptTokens],
      lastRound: -1,
      lastResult: null,
      lastAccessMs: this.deps.now(),
      streamSeq: 0,
      decoding: false,
      prefilled: 0,
    };
    this.sessions.set(m.sessionId, session);
    // A chunk that does not start the prompt, on a worker that never had it (it moved, or this
    // worker restarted): the cache is built from the prompt's start.
    return { item, session, tokens: m.promptTokens.slice(0, chunk.end), verifyTokens: 0, prefill: { last, end: chunk.end } };
  }

  /**
   * A device whose server-decoded stream stalled asks for it again from its committed text: the
   * worker holding the session (or this one, taking it over from the ledger, which has every
   * token a device was sent) re-sends what the device lacks and decodes on. Nothing to run now:
   * the session's next token comes with the next decode step.
   */
  private async resume(item: BatchItem, m: VerifyRequest): Promise<void> {
    let s: WorkerSession | null | undefined = this.sessions.get(m.sessionId);
    if (s && s.deviceId === m.deviceId && m.committedLength > s.tokens.length) {
      this.sessions.delete(m.sessionId); // a stale copy: another worker served it since
      s = undefined;
    }
    if (!s) {
      const rec = await this.deps.ledger.load(m.sessionId);
      if (rec && rec.deviceId !== m.deviceId) return this.refuse(item, 'not_owner', `session ${m.sessionId} belongs to another device`);
      s = await this.rebuild(m.sessionId, rec);
    }
    if (!s) return this.refuse(item, 'unknown_session', `session ${m.sessionId} is not open (closed, expired, or never opened)`);
    if (s.deviceId !== m.deviceId) return this.refuse(item, 'not_owner', `session ${m.sessionId} belongs to another device`);
    if (s.prefilled !== undefined) return; // its prompt is still being fed: the first token is yet to come
    if (m.committedLength > s.tokens.length) return this.#refuseAhead(item, m, s);
    const last = s.tokens[s.tokens.length - 1];
    const finished = this.#finished(s, last);
    // Handed back to its device before the stall (nothing verified since): it drafts on.
    const handedBack = !s.decoding && s.handedBackAt === s.tokens.length;
    if (!finished && !handedBack) {
      s.mode = 'centralized';
      s.decoding = true;
      s.lastStepEndMs ??= this.deps.now();
      delete s.handoff;
    }
    s.lastAccessMs = this.deps.now();
    const missing = s.tokens.slice(m.committedLength);
    if (missing.length > 0) await this.deps.reply(m.replyTo, { ...this.streamChunk(s, missing, finished), ...(handedBack && !finished ? { speculate: true } : {}) });
  }

  /** A request claiming more committed tokens than the server holds (forged, or a device bug). */
  #refuseAhead(item: BatchItem, m: VerifyRequest, s: WorkerSession): Promise<void> {
    return this.refuse(item, 'malformed', `session ${m.sessionId}: committedLength ${m.committedLength} is ahead of the server's ${s.tokens.length} (tokens the server never committed)`);
  }

  private async planVerify(item: BatchItem, m: VerifyRequest): Promise<Job | null> {
    if (m.resume === true) return this.resume(item, m).then(() => null);
    let s: WorkerSession | null | undefined = this.sessions.get(m.sessionId);
    if (s && s.deviceId === m.deviceId && m.round > s.lastRound && m.committedLength > s.tokens.length) {
      // This worker is behind the ledger (its copy went stale while another worker served it).
      this.sessions.delete(m.sessionId);
      s = undefined;
    }
    if (!s) {
      const rec = await this.deps.ledger.load(m.sessionId);
      if (rec && rec.deviceId !== m.deviceId) {
        await this.refuse(item, 'not_owner', `session ${m.sessionId} belongs to another device`);
        return null;
      }
      if (rec && m.round <= rec.lastRound) {
        // A duplicate or stale round of a session this worker does not hold (closed, evicted or
        // moved): answer a retry from the ledger; never re-prefill a whole history for it.
        if (m.round === rec.lastRound && rec.lastResult) await this.deps.reply(m.replyTo, rec.lastResult);
        else this.deps.onIgnored?.('stale_round');
        return null;
      }
      s = await this.rebuild(m.sessionId, rec);
    }
    if (!s) {
      await this.refuse(item, 'unknown_session', `session ${m.sessionId} is not open (closed, expired, or never opened)`);
      return null;
    }
    if (s.deviceId !== m.deviceId) {
      await this.refuse(item, 'not_owner', `session ${m.sessionId} belongs to another device`);
      return null;
    }
    if (m.round <= s.lastRound) {
      // A retry of the round already done gets the same answer (one that switched the session to
      // server decoding says so again); older rounds are stale.
      if (m.round === s.lastRound && s.lastResult) await this.deps.reply(m.replyTo, s.lastResult);
      else this.deps.onIgnored?.('stale_round');
      return null;
    }
    if (s.decoding) {
      // The server decodes this session: a verification would feed its cache a second time.
      await this.refuse(item, 'malformed', `session ${m.sessionId} is decoded by the server; it takes no verifications`);
      return null;
    }
    if (m.committedLength !== s.tokens.length) {
      if (m.committedLength < s.tokens.length) {
        this.deps.onIgnored?.('stale_length'); // stale: the device has moved on
        return null;
      }
      await this.#refuseAhead(item, m, s);
      return null;
    }
    const badDraft = this.outOfVocab(m.draftTokens) ?? m.draftDists?.flatMap((d) => d.ids).find((t) => t >= this.deps.runner.info.vocabSize);
    if (badDraft !== undefined) {
      await this.refuse(item, 'token_out_of_vocab', `draft token ${badDraft} is outside the vocabulary (size ${this.deps.runner.info.vocabSize})`);
      return null;
    }
    // Never feed past the context: keep room for the target's own token.
    const room = this.deps.runner.info.maxPositions - s.tokens.length;
    const verifyTokens = Math.max(0, Math.min(item.verifyTokens, m.draftTokens.length, room - 1));
    if (room < 1) {
      await this.refuse(item, 'prompt_too_long', `session ${m.sessionId} reached the model's ${this.deps.runner.info.maxPositions}-token context`);
      return null;
    }
    return { item, session: s, tokens: [s.tokens[s.tokens.length - 1], ...m.draftTokens.slice(0, verifyTokens)], verifyTokens };
  }

  /**
   * Records a round in the ledger. When the ledger lost the session (Redis emptied, or its keys
   * expired) the whole record is written again from this worker's copy (docs/design.md §4: the worker
   * still holds every committed token), so later take-overs and replays keep working.
   */
  private async commit(s: WorkerSession, fresh: number[], result: VerifyResult): Promise<void> {
    await this.#recorded(s, () => this.deps.ledger.commit(s.sessionId, fresh, result, s.cache.bytes), result);
  }

  /** Records tokens the server decoded (a decode step's, before its chunk goes out), as commit does a round's. */
  private async append(s: WorkerSession, fresh: number[], handBack: boolean): Promise<void> {
    await this.#recorded(s, () => this.deps.ledger.append(s.sessionId, s.tokens.length - fresh.length, fresh, s.cache.bytes, handBack), s.lastResult);
  }

  async #recorded(s: WorkerSession, write: () => Promise<void>, lastResult: VerifyResult | null): Promise<void> {
    try {
      await write();
    } catch (err) {
      if (errorCode(err) === 'session_closed') {
        // Its device closed it (cancelled: the client left, or the device stopped) while this
        // worker still served it: stop, and free its cache now rather than with the eviction.
        s.decoding = false;
        this.sessions.delete(s.sessionId);
        return;
      }
      if (errorCode(err) !== 'unknown_session') throw err;
      const record: SessionRecord = { deviceId: s.deviceId, mode: s.mode, sampling: s.sampling, maxNewTokens: s.maxNewTokens, promptLength: s.promptLength, replyTo: s.replyTo, tokens: s.tokens, lastRound: lastResult?.round ?? s.lastRound, lastResult };
      await this.deps.ledger.open(s.sessionId, record, s.cache.bytes);
    }
  }

  /**
   * Runs the batch and returns its cost report (model time only, for the estimator). With
   * tracing on, the batch gets a span linked to every member's round (`itemContexts`, one per
   * item, from the batch message's headers) and each member a span in its session's trace.
   */
  /**
   * The batch being executed as this worker's clock saw it arrive: a member's queue time is its
   * wait at the scheduler (dispatch − arrival, both on the scheduler's clock) plus its wait here
   * (start − receipt, both on this one), never a difference across two machines' clocks.
   */
  #arrival: { dispatchedAtMs: number; receivedAtMs: number } | null = null;

  /** Runs one batch; `receivedAtMs` is when this worker took it from its queue (its own clock; default: now). */
  async execute(batch: VerifyBatch, itemContexts?: readonly Context[], receivedAtMs = this.deps.now()): Promise<BatchReport> {
    this.#arrival = { dispatchedAtMs: batch.dispatchedAtMs, receivedAtMs };
    if (!tracingOn()) return this.#execute(batch, null);
    const contexts = batch.items.map((_, i) => itemContexts?.[i] ?? ROOT_CONTEXT);
    const members = batch.items.map((i) => ({ sessionId: i.request.sessionId, round: i.request.type === 'open' ? 0 : i.request.round }));
    const span = startBatchSpan({ batchId: batch.batchId, workerId: this.deps.workerId, size: batch.items.length, predictedMs: batch.predictedMs }, contexts, members);
    const itemSpans = new Map<BatchItem, SpanHandle>();
    batch.items.forEach((item, i) => {
      const r = item.request;
      itemSpans.set(
        item,
        startItemSpan(span, contexts[i], {
          kind: r.type,
          sessionId: r.sessionId,
          round: members[i].round,
          workerId: this.deps.workerId,
          draftTokens: r.type === 'verify' ? r.draftTokens.length : undefined,
          verifyTokens: r.type === 'verify' ? item.verifyTokens : undefined,
          contextTokens: r.type === 'verify' ? r.committedLength : r.promptTokens.length,
        }),
      );
    });
    try {
      const report = await span.run(() => this.#execute(batch, itemSpans));
      const ape = report.predictedMs > 0 && report.actualMs > 0 ? Math.abs(report.predictedMs - report.actualMs) / report.actualMs : undefined;
      span.end({
        [ATTR.actualMs]: report.actualMs,
        [ATTR.estimatorApe]: ape,
        [ATTR.batchTokens]: report.shapes.reduce((a, x) => a + x.n, 0),
        [ATTR.sessions]: report.sessions,
        [ATTR.kvBytes]: report.kvBytes,
      });
      return report;
    } catch (err) {
      for (const s of [span, ...itemSpans.values()]) {
        s.fail((err as Error).message, 'internal');
        s.end();
      }
      throw err;
    }
  }

  async #execute(batch: VerifyBatch, itemSpans: Map<BatchItem, SpanHandle> | null): Promise<BatchReport> {
    const startedMs = this.deps.now();
    for (const id of batch.evict) this.sessions.delete(id);
    for (const id of batch.speculate ?? []) {
      const s = this.sessions.get(id);
      if (s?.decoding) s.handoff = true;
    }
    // The decode step of the sessions decoding here shares the pass (chunked prefill, adaptive
    // serving); one that starts decoding in this batch (switched, or resumed) steps from the next.
    const step = stepSharesPass(batch) ? this.#decoding() : [];
    const opens: Job[] = [];
    const verifies: Job[] = [];
    for (const item of batch.items) {
      const r = item.request;
      const plan = () => (r.type === 'open' ? this.planOpen(item, r) : this.planVerify(item, r));
      const itemSpan = itemSpans?.get(item);
      // Refusals and repeated answers go out inside the member's span (its session's trace).
      const job = itemSpan ? await itemSpan.run(plan) : await plan();
      if (job) (r.type === 'open' ? opens : verifies).push(job);
      else itemSpan?.end({ [ATTR.outcome]: 'answered without running (duplicate, stale or refused)' });
    }
    const shapeOf = (j: Job): BatchShape => (j.prefill && j.session.cache.length > 0 ? { n: j.tokens.length, L: j.session.cache.length, prefill: true } : { n: j.tokens.length, L: j.session.cache.length });
    const stepShapes = step.map((st) => ({ n: 1, L: st.cache.length }));
    const openShapes = opens.map(shapeOf);
    const verifyShapes = verifies.map(shapeOf);
    const shapes = [...stepShapes, ...openShapes, ...verifyShapes];
    let modelMs = 0;
    const parts: { shapes: BatchShape[]; actualMs: number }[] = [];
    // One pass, run here as up to three model calls (padding them together would cost more on a
    // CPU): each is timed, so a padded estimator learns each kind from its own part.
    const run = async (items: ForwardItem[], partShapes: BatchShape[]): Promise<Float32Array[]> => {
      if (items.length === 0) return [];
      const t0 = this.deps.now();
      const out = await this.deps.runner.forward(items);
      const ms = this.deps.now() - t0;
      modelMs += ms;
      parts.push({ shapes: partShapes, actualMs: ms });
      return out;
    };
    const stepLogits = await run(step.map((st) => ({ cache: st.cache, tokens: [st.tokens[st.tokens.length - 1]] })), stepShapes);
    const openLogits = await run(opens.map((j) => ({ cache: j.session.cache, tokens: j.tokens })), openShapes);
    const verifyLogits = await run(verifies.map((j) => ({ cache: j.session.cache, tokens: j.tokens })), verifyShapes);
    const V = this.deps.runner.info.vocabSize;
    const doneMs = this.deps.now();
    const size = opens.length + verifies.length;
    const writes: Promise<void>[] = [];
    const replies: [string, VerifyResult | TokenStream, SpanHandle | undefined][] = [];
    /** Runs `fn` inside the member's span (when tracing), so its Redis writes and reply join its trace. */
    const within = <T>(job: Job, fn: () => T): T => {
      const span = itemSpans?.get(job.item);
      return span ? span.run(fn) : fn();
    };

    const stepChunks = this.#stepTokens(step, stepLogits, startedMs, doneMs, modelMs, writes);

    opens.forEach((job, i) => {
      const s = job.session;
      if (job.prefill) s.prefilled = job.prefill.end;
      if (job.prefill && !job.prefill.last) {
        // A middle chunk: the cache grew; the first token comes with the chunk that ends the prompt.
        s.lastAccessMs = doneMs;
        itemSpans?.get(job.item)?.end({ [ATTR.contextTokens]: job.prefill.end });
        return;
      }
      delete s.prefilled;
      const logits = openLogits[i];
      const token = sampleTargetToken(logits.subarray(logits.length - V), s.sampling, s.tokens.length);
      s.tokens.push(token);
      const result = this.result(job, 0, 0, token, 0, startedMs, doneMs, size);
      s.lastRound = 0;
      s.lastResult = result;
      s.lastAccessMs = doneMs;
      const record: SessionRecord = { deviceId: s.deviceId, mode: s.mode, sampling: s.sampling, maxNewTokens: s.maxNewTokens, promptLength: s.promptLength, replyTo: s.replyTo, tokens: s.tokens, lastRound: 0, lastResult: result };
      writes.push(within(job, () => this.deps.ledger.open(s.sessionId, record, s.cache.bytes)));
      itemSpans?.get(job.item)?.end({ [ATTR.generatedTokens]: 1, [ATTR.contextTokens]: s.promptLength });
      if (s.mode === 'centralized') {
        const finished = s.maxNewTokens <= 1 || token === this.deps.eosTokenId;
        s.decoding = !finished;
        s.lastStepEndMs = doneMs;
        replies.push([s.replyTo, { ...this.streamChunk(s, [token], finished), queueMs: result.queueMs, verifyMs: result.verifyMs }, itemSpans?.get(job.item)]);
      } else {
        replies.push([s.replyTo, result, itemSpans?.get(job.item)]);
      }
    });

    verifies.forEach((job, i) => {
      const s = job.session;
      const m = job.item.request as VerifyRequest;
      const drafts = m.draftTokens.slice(0, job.verifyTokens);
      const dists = m.draftDists?.slice(0, job.verifyTokens);
      const committed = s.tokens.length;
      let outcome;
      try {
        outcome = verifyDraft(drafts, dists, verifyLogits[i], V, s.sampling, committed);
      } catch (e) {
        // A malformed sampling request (e.g. a draft token outside its own top-k): undo its feed.
        s.cache.rollback(committed - 1);
        const code = e instanceof VerifyInputError ? e.code : 'internal';
        writes.push(within(job, () => this.refuse(job.item, code, (e as Error).message)));
        const span = itemSpans?.get(job.item);
        span?.fail((e as Error).message, code);
        span?.end();
        return;
      }
      const fresh = [...drafts.slice(0, outcome.accepted), outcome.token];
      s.tokens.push(...fresh);
      s.cache.rollback(s.tokens.length - 1);
      let result = this.result(job, m.round, outcome.accepted, outcome.token, job.verifyTokens, startedMs, doneMs, size);
      if (job.item.thenDecode === true && !this.#finished(s, outcome.token)) {
        // Adaptive serving: the server decodes it from here; its cache already holds committed − 1
        // tokens, as a decoded session's does, so the next decode step continues exactly.
        s.mode = 'centralized';
        s.decoding = true;
        s.lastStepEndMs = doneMs;
        result = { ...result, decodes: true, streamSeq: s.streamSeq };
      }
      s.lastRound = m.round;
      s.lastResult = result;
      s.lastAccessMs = doneMs;
      writes.push(within(job, () => this.commit(s, fresh, result)));
      itemSpans?.get(job.item)?.end({ [ATTR.verified]: job.verifyTokens, [ATTR.accepted]: outcome.accepted });
      replies.push([m.replyTo, result, itemSpans?.get(job.item)]);
    });

    // The ledger is written before anyone hears of the result, so a crash in between only
    // means the device retries and gets the recorded answer.
    await Promise.all(writes);
    await this.#sendReplies([...stepChunks.map(([q, chunk]) => this.deps.reply(q, chunk)), ...replies.map(([q, msg, span]) => (span ? span.run(() => this.deps.reply(q, msg)) : this.deps.reply(q, msg)))]);
    this.deps.metrics?.batchExecuted({
      workerId: this.deps.workerId,
      size,
      tokens: shapes.reduce((a, x) => a + x.n, 0),
      modelMs,
      predictedMs: batch.predictedMs,
      prefillTokens: opens.reduce((a, j) => a + j.tokens.length, 0),
      verifyTokens: verifies.reduce((a, j) => a + j.tokens.length, 0) + step.length,
    });
    return {
      batchId: batch.batchId,
      shapes: shapes.length > 0 ? shapes : [{ n: 1, L: 0 }],
      ...(parts.length > 1 ? { parts } : {}),
      actualMs: modelMs,
      busyMs: this.deps.now() - startedMs,
      startedAtMs: startedMs,
      predictedMs: batch.predictedMs,
      sessions: this.sessions.size,
      kvBytes: this.kvBytes,
      decodeActive: this.decodeActive,
    };
  }

  /**
   * Lets a batch's replies (already published, in order) be confirmed while the next batch runs:
   * waits only for the previous batch's confirms. Waiting for our own made every batch and
   * decode step last a persistent-publish confirm longer (~1–3 ms here) and bounded centralized
   * decoding by the broker's fsync rate; one batch of slack still bounds the unconfirmed backlog.
   */
  async #sendReplies(replies: Promise<unknown>[]): Promise<void> {
    const previous = this.#replying;
    // Failures are the reply function's to report (the role logs them; the device retries and
    // gets the recorded answer): they never fail a later batch.
    this.#replying = Promise.all(replies).then(
      () => undefined,
      () => undefined,
    );
    await previous;
  }

  private result(job: Job, round: number, accepted: number, token: number, verified: number, startedMs: number, doneMs: number, batchSize: number): VerifyResult {
    return verifyResult({
      sessionId: job.session.sessionId,
      round,
      accepted,
      token,
      verified,
      committedLength: job.session.tokens.length,
      queueMs: this.#queueMs(job.item, startedMs),
      verifyMs: Math.max(0, doneMs - startedMs),
      batchSize,
      workerId: this.deps.workerId,
    });
  }

  #queueMs(item: BatchItem, startedMs: number): number {
    const a = this.#arrival;
    if (!a) return 0;
    return Math.max(0, a.dispatchedAtMs - item.arrivedAtMs) + Math.max(0, startedMs - a.receivedAtMs);
  }

  /** Stream chunk 0 of a decoded session as it was first sent: its first token. */
  private firstChunk(s: WorkerSession): TokenStream {
    const first = s.tokens[s.promptLength];
    const done = s.maxNewTokens <= 1 || first === this.deps.eosTokenId;
    return { v: PROTOCOL_VERSION, type: 'stream', sessionId: s.sessionId, seq: 0, tokens: [first], committedLength: s.promptLength + 1, done, workerId: this.deps.workerId };
  }

  private streamChunk(s: WorkerSession, tokens: number[], done: boolean): TokenStream {
    return { v: PROTOCOL_VERSION, type: 'stream', sessionId: s.sessionId, seq: s.streamSeq++, tokens, committedLength: s.tokens.length, done, workerId: this.deps.workerId };
  }

  /** Whether a session has all its tokens after `token`: its budget, the end of sequence, or the model's context. */
  #finished(s: WorkerSession, token: number): boolean {
    return s.tokens.length - s.promptLength >= s.maxNewTokens || token === this.deps.eosTokenId || s.tokens.length >= this.deps.runner.info.maxPositions;
  }

  /** The centralized sessions decoding on this worker. */
  #decoding(): WorkerSession[] {
    return [...this.sessions.values()].filter((s) => s.decoding);
  }

  /**
   * Each decoding session's next token from its row of `logits`; its ledger write joins `writes`
   * (to finish before any chunk goes out: a worker that takes a session over, this one having
   * died, decodes on from the ledger when the device asks again). Returns the chunks to send.
   */
  #stepTokens(active: readonly WorkerSession[], logits: readonly Float32Array[], startedMs: number, doneMs: number, modelMs: number, writes: Promise<void>[]): [string, TokenStream][] {
    const V = this.deps.runner.info.vocabSize;
    let intervalSum = 0;
    let intervals = 0;
    for (const s of active) if (s.lastStepEndMs !== undefined) (intervalSum += doneMs - s.lastStepEndMs), intervals++;
    if (intervals > 0) this.#decodeTpotMs = nextDecodeTpotMs(this.#decodeTpotMs, intervalSum / intervals);
    return active.map((s, i): [string, TokenStream] => {
      // Each chunk says how long the session waited for this step (other passes ran) and how long the step took.
      const queueMs = Math.max(0, startedMs - (s.lastStepEndMs ?? startedMs));
      s.lastStepEndMs = doneMs;
      const row = logits[i];
      const token = sampleTargetToken(row.subarray(row.length - V), s.sampling, s.tokens.length);
      s.tokens.push(token);
      s.lastAccessMs = doneMs;
      const finished = this.#finished(s, token);
      if (finished) s.decoding = false;
      const chunk = { ...this.streamChunk(s, [token], finished), queueMs, verifyMs: modelMs };
      const handBack = s.handoff === true && !finished;
      if (handBack) {
        // Adaptive serving: this token is its last from the server; its device drafts from here.
        s.decoding = false;
        s.mode = 'speculative';
        s.handedBackAt = s.tokens.length;
        chunk.speculate = true;
      }
      delete s.handoff;
      writes.push(this.append(s, [token], handBack));
      return [s.replyTo, chunk];
    });
  }

  /** One continuous-batching step for centralized sessions: every decoding session gets one token. */
  async decodeStep(): Promise<BatchReport> {
    const active = this.#decoding();
    const shapes = active.map((s) => ({ n: 1, L: s.cache.length }));
    const t0 = this.deps.now();
    const logits = active.length ? await this.deps.runner.forward(active.map((s) => ({ cache: s.cache, tokens: [s.tokens[s.tokens.length - 1]] }))) : [];
    const modelMs = this.deps.now() - t0;
    const writes: Promise<void>[] = [];
    const chunks = this.#stepTokens(active, logits, t0, this.deps.now(), modelMs, writes);
    await Promise.all(writes);
    await this.#sendReplies(chunks.map(([q, chunk]) => this.deps.reply(q, chunk)));
    if (active.length > 0) this.deps.metrics?.batchExecuted({ workerId: this.deps.workerId, size: active.length, tokens: active.length, modelMs, predictedMs: 0, prefillTokens: 0, verifyTokens: active.length });
    return { batchId: `${DECODE_STEP_PREFIX}${t0}`, shapes: shapes.length ? shapes : [{ n: 1, L: 0 }], actualMs: modelMs, busyMs: this.deps.now() - t0, startedAtMs: t0, predictedMs: 0, sessions: this.sessions.size, kvBytes: this.kvBytes, decodeActive: this.decodeActive };
  }
}
