/**
 * Scheduler: pending server work per worker, session→worker affinity, and batch dispatch.
 *
 * One state (`running`); every event folds into the context through pure reducers, then
 * `pump` asks the configured batch policy (policies/, pure) what each ready worker should
 * run now. Sending batches, refusing requests, persisting estimator statistics and setting
 * the wake-up timer are provided actions: the live actor and the simulator supply their own.
 * Times are the `atMs` stamps on events (the scheduler's clock).
 */
import { enqueueActions, setup } from 'xstate';
import type { BatchItem, ErrorCode, ServingMode, SessionClose, SessionOpen, Slo, VerifyBatch, VerifyRequest, WorkerStatus } from '../protocol/messages.ts';
import { PROTOCOL_VERSION } from '../protocol/messages.ts';
import { requestKey } from '../protocol/builders.ts';
import type { PendingRequest } from '../policies/types.ts';
import {
  estimatorForLayout,
  layoutOf,
  observeBatch,
  selectBatch,
  type EstimatorState,
  type PassLayout,
  type PolicyName,
} from '../policies/index.ts';
import { prefillDeadlineMs, roundDeadlineMs } from '../policies/deadline.ts';
import { passTokenBudget, type BudgetLoad } from '../policies/pass-budget.ts';
import type { DraftingPace, ModeCalibration } from '../policies/serving-mode.ts';
import { calibratedFromStatus, handBack, pickMode, reviseSpeculating, switchesModes, SWITCHES_PER_PASS, type ModePredictions } from './scheduler-modes.ts';

export { SWITCHES_PER_PASS };

export interface SchedulerSettings {
  policy: PolicyName;
  bMax: number;
  waitMs: number;
  maxBatchTokens: number;
  ageBoundMs: number;
  truncation: boolean;
  defaultSlo: Slo;
  /** Return half of the device round trip when the device did not say, ms. */
  defaultReturnLatencyMs: number;
  /** Prompts go in chunks that share passes with verifications and decode steps (default off). */
  chunkedPrefill?: boolean;
  /** Tokens one pass may feed with chunked prefill; 0 or absent: the rule of policies/pass-budget.ts. */
  passTokenBudget?: number;
  /** Adaptive: revisit each session's mode at its rounds (absent or false: chosen once, at admission). */
  modeSwitching?: boolean;
}

export interface WorkerEntry {
  workerId: string;
  incarnation: string;
  model: string;
  vocabSize: number;
  maxPositions: number;
  ready: boolean;
  /** Batch in flight, if any: its id and the sessions it opened (for their first-token time). */
  inflight: { batchId: string; opened: string[] } | null;
  sessions: number;
  kvBytes: number;
  lastSeenMs: number;
  estimator: EstimatorState;
  /** How the worker lays out a pass (its estimator's family follows). */
  layout: PassLayout;
  /** KV-cache tokens the worker can hold; null = no limit to keep. */
  kvCapacityTokens: number | null;
  /** KV-cache tokens reserved by the sessions admitted on it. */
  kvReservedTokens: number;
  /** Centralized sessions it decodes in continuous batching (their tokens share every pass). */
  decoding: number;
  /** The pass-time curve the worker reported (policies/pass-budget.ts), or null. */
  passCurveMs: number[] | null;
  /** Adaptive: how far each mode's prediction is off on this worker (policies/serving-mode.ts). */
  calibration?: ModeCalibration;
  /** Adaptive: each device pace's predicted modes while the worker's sessions and estimator stand. */
  modePredictions?: ModePredictions;
  /** Adaptive: mode switches its sessions may still make before its next status (SWITCHES_PER_PASS). */
  switchAllowance?: number;
}

export interface SessionEntry {
  sessionId: string;
  deviceId: string;
  workerId: string;
  slo: Slo;
  promptLength: number;
  /** Scheduler time of the first target token (prefill batch done); null before. */
  firstTokenAtMs: number | null;
  returnLatencyMs: number;
  replyTo: string;
  /** Scheduler time of the session's latest request (for forgetting sessions whose device vanished). */
  lastSeenMs?: number;
  /** KV-cache tokens reserved for it on its worker (prompt + most new tokens); 0 while it waits for memory. */
  kvTokens?: number;
  /** How it is served, once admitted (an `adaptive` open is resolved then, and revisited at its rounds). */
  mode?: ServingMode;
  /** Adaptive: what its mode is judged on — its device's drafting pace and round trip — from its open. */
  pace?: { drafting: DraftingPace; rttMs: number; maxNewTokens: number };
  /** Adaptive, while it speculates: when its last round arrived and its committed length then. */
  lastRound?: { atMs: number; committed: number };
}

export interface PendingEntry {
  request: PendingRequest;
  message: SessionOpen | VerifyRequest;
  /** An open that waited for memory: when it was admitted. */
  admittedAtMs?: number;
  /** A verification after which the server decodes the session (adaptive switched it). */
  thenDecode?: boolean;
}

export interface SchedulerContext {
  settings: SchedulerSettings;
  workers: Record<string, WorkerEntry>;
  sessions: Record<string, SessionEntry>;
  pending: Record<string, PendingEntry[]>;
  /**
   * Requests that arrived before any worker could take them: opens, and rounds of sessions this
   * scheduler does not know yet (a restarted scheduler drains its queue before the first worker
   * status arrives). They are placed when the first worker reports.
   */
  unplaced: { message: SessionOpen | VerifyRequest; atMs: number; workerHint?: string }[];
  /**
   * Recently closed sessions → close time. A stale or redelivered request for one of them is
   * dropped instead of bringing the session back (the adoption path would re-place it).
   */
  closed: Record<string, number>;
  /**
   * Opens admitted to a worker but waiting for KV-cache memory, first come first served (a
   * worker that reports a capacity admits a session only when its whole cache — prompt plus its
   * most new tokens — fits beside the others', as vLLM admits requests before their prefill).
   */
  memoryWait: Record<string, { message: SessionOpen; atMs: number }[]>;
  evictions: Record<string, string[]>;
  batchSeq: number;
  wakeAtMs: number | null;
  stats: { dispatched: number; batches: number; refused: number };
}

export type SchedulerEvent =
  | { type: 'OPEN'; message: SessionOpen; atMs: number }
  /** `workerHint`: the worker Redis records for a session this scheduler does not know (after a restart). */
  | { type: 'VERIFY'; message: VerifyRequest; atMs: number; workerHint?: string }
  | { type: 'CLOSE'; message: SessionClose; atMs: number }
  | { type: 'WORKER_STATUS'; message: WorkerStatus; atMs: number }
  | { type: 'WORKER_LOST'; workerId: string; atMs: number }
  | { type: 'WAKE'; atMs: number }
  /** A batch could not be handed to the broker: its worker is free again and its requests wait again. */
  | { type: 'DISPATCH_FAILED'; batch: VerifyBatch; atMs: number }
  /** Forget sessions with no request for longer than `idleMs` (their device vanished; the worker evicts them too). */
  | { type: 'EXPIRE_IDLE'; atMs: number; idleMs: number }
  | { type: 'RESTORE_ESTIMATOR'; workerId: string; estimator: EstimatorState };

export interface RefusalParams {
  replyTo: string;
  code: ErrorCode;
  message: string;
  sessionId: string;
  round?: number;
  /** The refused request itself, for the dead-letter queue (docs/design.md §3). */
  request?: SessionOpen | VerifyRequest;
}

const notProvided = (name: string) => () => {
  throw new Error(`Scheduler: ${name} was not provided by the adapter`);
};

/** What a reduction asks the adapter to do (send a batch, refuse, persist, set the wake-up timer). */
export type SchedulerEffect =
  | { kind: 'dispatch'; batch: VerifyBatch }
  | { kind: 'refuse'; params: RefusalParams }
  | { kind: 'persist'; workerId: string; model: string; estimator: EstimatorState }
  /** A session its device closed: its durable record (the ledger in Redis) goes too. */
  | { kind: 'forget'; sessionId: string }
  /** A message let go on purpose (counted, never silent): a request of an ended session, a close from another device. */
  | { kind: 'ignored'; reason: 'ended_session' | 'foreign_close' }
  | { kind: 'wake'; atMs: number };
type Effect = SchedulerEffect;

/** Picks the live worker serving `model` (any model when unset) with the fewest sessions. */
export function placeSession(workers: Record<string, WorkerEntry>, model: string | undefined): WorkerEntry | null {
  let best: WorkerEntry | null = null;
  for (const w of Object.values(workers)) {
    if (model !== undefined && w.model !== model) continue;
    if (!best || w.sessions < best.sessions) best = w;
  }
  return best;
}

function pendingFor(ctx: SchedulerContext, workerId: string): PendingEntry[] {
  return ctx.pending[workerId] ?? [];
}

function addPending(ctx: SchedulerContext, workerId: string, entry: PendingEntry): void {
  // Replace an older copy of the same round (a device retry) instead of queueing it twice.
  const list = pendingFor(ctx, workerId).filter((p) => p.request.requestId !== entry.request.requestId);
  list.push(entry);
  ctx.pending[workerId] = list;
  const s = ctx.sessions[entry.request.sessionId];
  if (s && (s.lastSeenMs ?? -Infinity) < entry.request.arrivalMs) ctx.sessions[s.sessionId] = { ...s, lastSeenMs: entry.request.arrivalMs };
}

/**
 * The mode an admitted session is served in: what its open asked for, or for `adaptive` the
 * rule of policies/serving-mode.ts on its worker's state now (a redelivered open gets the mode
 * the session has). A device that gave no drafting pace speculates.
 */
function resolveMode(ctx: SchedulerContext, s: SessionEntry, m: SessionOpen, w: WorkerEntry, nowMs: number): ServingMode {
  if (s.mode) return s.mode;
  if (m.mode !== 'adaptive') return m.mode;
  return pickMode(ctx, w, s, nowMs) ?? 'speculative';
}

/** The pending prefill of an admitted open (`arrivalMs`: when it arrived, for its deadline), its mode resolved (the session entry keeps it). */
function admittedOpen(ctx: SchedulerContext, s: SessionEntry, m: SessionOpen, arrivalMs: number, nowMs = arrivalMs): PendingEntry {
  const w = ctx.workers[s.workerId];
  const mode = w ? resolveMode(ctx, s, m, w, nowMs) : m.mode === 'adaptive' ? 'speculative' : m.mode;
  ctx.sessions[s.sessionId] = { ...ctx.sessions[s.sessionId], mode };
  return openRequest(s, m.mode === mode ? m : { ...m, mode }, arrivalMs);
}

function openRequest(s: SessionEntry, m: SessionOpen, atMs: number): PendingEntry {
  return {
    message: m,
    request: {
      requestId: requestKey(m.sessionId, 0),
      sessionId: m.sessionId,
      kind: 'prefill',
      round: 0,
      n: m.promptTokens.length,
      contextLength: 0,
      predictedAcceptance: [],
      arrivalMs: atMs,
      deadlineMs: prefillDeadlineMs(atMs, s.slo.ttftMs, s.returnLatencyMs),
    },
  };
}

/** Places an open on a worker (or parks it), returning effects for refusals. */
function acceptOpen(ctx: SchedulerContext, m: SessionOpen, atMs: number, effects: Effect[]): void {
  if (ctx.closed[m.sessionId] !== undefined) return void effects.push({ kind: 'ignored', reason: 'ended_session' }); // a redelivered open of a session that ended
  const workers = Object.values(ctx.workers);
  if (workers.length === 0) {
    ctx.unplaced.push({ message: m, atMs });
    return;
  }
  const w = placeSession(ctx.workers, m.targetModel);
  if (!w) {
    const served = [...new Set(workers.map((x) => x.model))].join(', ');
    effects.push({
      kind: 'refuse',
      params: { replyTo: m.replyTo, code: 'unknown_model', message: `no worker serves model "${m.targetModel}" (served: ${served})`, sessionId: m.sessionId, round: 0, request: m },
    });
    return;
  }
  if (m.promptTokens.length >= w.maxPositions) {
    effects.push({
      kind: 'refuse',
      params: {
        replyTo: m.replyTo,
        code: 'prompt_too_long',
        message: `prompt of ${m.promptTokens.length} tokens does not fit the ${w.maxPositions}-token context of model "${w.model}"`,
        sessionId: m.sessionId,
        round: 0,
        request: m,
      },
    });
    return;
  }
  const existing = ctx.sessions[m.sessionId];
  if (existing && existing.deviceId !== m.deviceId) return refuseNotOwner(m, effects);
  const need = kvNeed(m, w.maxPositions);
  if (!existing && w.kvCapacityTokens !== null && need > w.kvCapacityTokens) {
    effects.push({
      kind: 'refuse',
      params: {
        replyTo: m.replyTo,
        code: 'prompt_too_long',
        message: `prompt of ${m.promptTokens.length} tokens and ${m.maxNewTokens} new tokens need ${need} tokens of KV cache; worker ${w.workerId} holds ${w.kvCapacityTokens}`,
        sessionId: m.sessionId,
        round: 0,
        request: m,
      },
    });
    return;
  }
  const s: SessionEntry = existing ?? {
    sessionId: m.sessionId,
    deviceId: m.deviceId,
    workerId: w.workerId,
    slo: m.slo,
    promptLength: m.promptTokens.length,
    firstTokenAtMs: null,
    returnLatencyMs: m.rttMs !== undefined ? m.rttMs / 2 : ctx.settings.defaultReturnLatencyMs,
    replyTo: m.replyTo,
    ...(m.mode === 'adaptive' && m.drafting ? { pace: { drafting: m.drafting, rttMs: m.rttMs ?? 2 * ctx.settings.defaultReturnLatencyMs, maxNewTokens: m.maxNewTokens } } : {}),
  };
  if (!existing) {
    ctx.sessions[m.sessionId] = { ...s, kvTokens: 0 };
    ctx.workers[w.workerId] = { ...w, sessions: w.sessions + 1 };
  } else if ((existing.kvTokens ?? 0) > 0 || ctx.workers[existing.workerId]?.kvCapacityTokens == null) {
    // A redelivered open of an admitted session: queue it again (it replaces the older copy).
    addPending(ctx, existing.workerId, admittedOpen(ctx, existing, m, atMs));
    return;
  } else {
    // Still waiting for memory: the newer copy takes the older one's place in the queue.
    const queue = ctx.memoryWait[existing.workerId] ?? [];
    const at = queue.findIndex((q) => q.message.sessionId === m.sessionId);
    if (at >= 0) {
      ctx.memoryWait[existing.workerId] = queue.map((q, i) => (i === at ? { message: m, atMs: q.atMs } : q));
      return;
    }
  }
  const wid = ctx.sessions[m.sessionId].workerId;
  ctx.memoryWait[wid] = [...(ctx.memoryWait[wid] ?? []), { message: m, atMs }];
  admitWaiting(ctx, wid, atMs);
}

/** KV-cache tokens a session may need: its prompt plus every token it may generate (drafts in flight never pass that). */
function kvNeed(m: SessionOpen, maxPositions: number): number {
  return Math.min(maxPositions, m.promptTokens.length + m.maxNewTokens);
}

/** Admits waiting opens of a worker, first come first served, while their caches fit. */
function admitWaiting(ctx: SchedulerContext, workerId: string, atMs: number): void {
  const queue = ctx.memoryWait[workerId];
  if (!queue || queue.length === 0) return;
  let w = ctx.workers[workerId];
  if (!w) return;
  let admitted = 0;
  for (const q of queue) {
    const s = ctx.sessions[q.message.sessionId];
    if (!s) {
      admitted++;
      continue;
    }
    const need = kvNeed(q.message, w.maxPositions);
    if (w.kvCapacityTokens !== null && w.kvReservedTokens + need > w.kvCapacityTokens) break;
    w = { ...w, kvReservedTokens: w.kvReservedTokens + need };
    ctx.workers[workerId] = w;
    ctx.sessions[s.sessionId] = { ...s, kvTokens: need };
    const entry = admittedOpen(ctx, ctx.sessions[s.sessionId], q.message, q.atMs, atMs);
    addPending(ctx, workerId, q.atMs === atMs ? entry : { ...entry, admittedAtMs: atMs });
    admitted++;
  }
  ctx.workers[workerId] = w;
  ctx.memoryWait[workerId] = queue.slice(admitted);
}

/** Gives back a session's KV reservation on its worker. */
function releaseKv(ctx: SchedulerContext, s: SessionEntry): void {
  const w = ctx.workers[s.workerId];
  if (w && (s.kvTokens ?? 0) > 0) ctx.workers[s.workerId] = { ...w, kvReservedTokens: Math.max(0, w.kvReservedTokens - (s.kvTokens ?? 0)) };
}

/** A request naming a session another device owns: refused, never queued in place of the owner's. */
function refuseNotOwner(m: SessionOpen | VerifyRequest, effects: Effect[]): void {
  effects.push({
    kind: 'refuse',
    params: { replyTo: m.replyTo, code: 'not_owner', message: `session ${m.sessionId} belongs to another device`, sessionId: m.sessionId, round: m.type === 'open' ? 0 : m.round, request: m },
  });
}

function acceptVerify(ctx: SchedulerContext, m: VerifyRequest, atMs: number, effects: Effect[], workerHint?: string): void {
  if (ctx.closed[m.sessionId] !== undefined) return void effects.push({ kind: 'ignored', reason: 'ended_session' }); // stale: the session ended
  let s = ctx.sessions[m.sessionId];
  if (s && s.deviceId !== m.deviceId) return refuseNotOwner(m, effects);
  if (!s) {
    // Unknown here (e.g. this scheduler restarted): adopt it; the worker rebuilds its cache
    // from the committed history in Redis, or refuses it as unknown.
    // The worker that holds its cache, when it is still here; else the least loaded one.
    const w = (workerHint !== undefined ? ctx.workers[workerHint] : undefined) ?? placeSession(ctx.workers, undefined);
    if (!w) {
      // No worker yet: park it (a newer copy of the same round replaces the older one).
      ctx.unplaced = ctx.unplaced.filter((u) => u.message.type !== 'verify' || u.message.sessionId !== m.sessionId || u.message.round !== m.round);
      ctx.unplaced.push({ message: m, atMs, ...(workerHint !== undefined ? { workerHint } : {}) });
      return;
    }
    s = {
      sessionId: m.sessionId,
      deviceId: m.deviceId,
      workerId: w.workerId,
      slo: ctx.settings.defaultSlo,
      promptLength: m.committedLength - 1,
      firstTokenAtMs: atMs,
      returnLatencyMs: ctx.settings.defaultReturnLatencyMs,
      replyTo: m.replyTo,
      // Its final length is unknown here: reserve what its cache holds now.
      kvTokens: m.committedLength,
    };
    ctx.sessions[m.sessionId] = s;
    ctx.workers[w.workerId] = { ...w, sessions: w.sessions + 1, kvReservedTokens: w.kvReservedTokens + m.committedLength };
  }
  // Tokens committed after the first one: the next result must arrive by t0 + τ·(that + 1).
  const afterFirst = Math.max(0, m.committedLength - s.promptLength - 1);
  const t0 = s.firstTokenAtMs ?? atMs;
  const thenDecode = switchesModes(ctx) ? reviseSpeculating(ctx, s, m, atMs) : false;
  addPending(ctx, s.workerId, {
    ...(thenDecode ? { thenDecode } : {}),
    message: m,
    request: {
      requestId: requestKey(m.sessionId, m.round),
      sessionId: m.sessionId,
      kind: 'verify',
      round: m.round,
      n: m.draftTokens.length + 1,
      contextLength: m.committedLength - 1,
      predictedAcceptance: m.predictedAcceptance,
      arrivalMs: atMs,
      deadlineMs: roundDeadlineMs(t0, s.slo.tpotMs, afterFirst, s.returnLatencyMs),
    },
  });
}

/** What a worker's next pass carries besides prompt chunks, and the prompts waiting (policies/pass-budget.ts). */
function budgetLoad(entries: readonly PendingEntry[], decoding: number, nowMs: number): BudgetLoad {
  let otherTokens = decoding;
  const prompts: { tokensLeft: number; deadlineMs: number }[] = [];
  for (const e of entries) {
    if (e.request.kind === 'prefill') prompts.push({ tokensLeft: e.request.n, deadlineMs: e.request.deadlineMs });
    else otherTokens += e.request.n;
  }
  return { otherTokens, prompts, nowMs };
}

/** Mean cached context of the pending verifications (the decoded sessions' contexts are alike), tokens; 256 when none. */
function typicalContext(entries: readonly PendingEntry[]): number {
  let sum = 0;
  let n = 0;
  for (const e of entries) if (e.request.kind === 'verify') (sum += e.request.contextLength), n++;
  return n === 0 ? 256 : Math.round(sum / n);
}

/** Asks the policy, for every ready worker, what to run now; returns dispatch and wake effects. */
export function pump(ctx: SchedulerContext, nowMs: number, effects: Effect[]): void {
  let wakeAtMs: number | null = null;
  // for…in, not Object.values: this runs on every event, and the array would be garbage.
  for (const id in ctx.workers) {
    const w = ctx.workers[id];
    if (!w.ready) continue;
    const entries = pendingFor(ctx, w.workerId);
    if (entries.length === 0) continue;
    const chunked = ctx.settings.chunkedPrefill === true;
    const decision = selectBatch(
      ctx.settings.policy,
      {
        pending: entries.map((e) => e.request),
        estimator: w.estimator,
        bMax: ctx.settings.bMax,
        waitMs: ctx.settings.waitMs,
        maxBatchTokens: ctx.settings.maxBatchTokens,
        ageBoundMs: ctx.settings.ageBoundMs,
        truncation: ctx.settings.truncation,
        ...(chunked
          ? { chunkedPrefill: true, passTokenBudget: passTokenBudget(w.passCurveMs ?? w.estimator, ctx.settings.defaultSlo.tpotMs, ctx.settings.passTokenBudget ?? 0, budgetLoad(entries, w.decoding, nowMs)), decodeTokens: w.decoding }
          : {}),
        ...(ctx.settings.policy === 'adaptive' && w.decoding > 0 ? { sharedDecodeRows: { count: w.decoding, context: typicalContext(entries) } } : {}),
      },
      nowMs,
    );
    if (decision.members.length === 0) {
      if (decision.wakeAtMs !== null) wakeAtMs = wakeAtMs === null ? decision.wakeAtMs : Math.min(wakeAtMs, decision.wakeAtMs);
      continue;
    }
    const byId = new Map<string, PendingEntry>();
    for (const e of entries) byId.set(e.request.requestId, e);
    const chosen = new Set(decision.members.map((m) => m.requestId));
    /** Prompts fed only in part: they stay pending with what is left. */
    const partial = new Map<string, PendingEntry>();
    const finishing: string[] = [];
    const batchId = `${w.workerId}.${ctx.batchSeq++}`;
    const items: BatchItem[] = decision.members.map((m) => {
      const e = byId.get(m.requestId)!;
      let chunk: { start: number; end: number } | undefined;
      if (e.message.type === 'open') {
        const start = e.request.contextLength;
        const end = m.prefillTokens !== undefined ? Math.min(e.message.promptTokens.length, start + m.prefillTokens) : e.message.promptTokens.length;
        if (chunked) chunk = { start, end };
        if (end < e.message.promptTokens.length) partial.set(m.requestId, { ...e, request: { ...e.request, n: e.message.promptTokens.length - end, contextLength: end } });
        else finishing.push(e.message.sessionId);
      }
      return {
        request: e.message,
        verifyTokens: e.message.type === 'verify' ? Math.min(m.verifyTokens, e.message.draftTokens.length) : 0,
        arrivedAtMs: e.request.arrivalMs,
        deadlineMs: e.request.deadlineMs,
        ...(e.admittedAtMs !== undefined ? { admittedAtMs: e.admittedAtMs } : {}),
        ...(chunk ? { chunk } : {}),
        ...(e.thenDecode ? { thenDecode: true } : {}),
      };
    });
    const speculate = switchesModes(ctx) ? handBack(ctx, w, entries, nowMs) : [];
    const batch: VerifyBatch = {
      v: PROTOCOL_VERSION,
      type: 'batch',
      batchId,
      workerId: w.workerId,
      items,
      predictedMs: decision.predictedMs,
      dispatchedAtMs: nowMs,
      evict: ctx.evictions[w.workerId] ?? [],
      ...(speculate.length > 0 ? { speculate } : {}),
    };
    ctx.evictions[w.workerId] = [];
    ctx.pending[w.workerId] = entries.flatMap((e) => (chosen.has(e.request.requestId) ? (partial.has(e.request.requestId) ? [partial.get(e.request.requestId)!] : []) : [e]));
    if (chunked && ctx.pending[w.workerId].length > 0) batch.followUp = true;
    // The first token of a session comes with the chunk that finishes its prompt.
    ctx.workers[w.workerId] = { ...ctx.workers[w.workerId], ready: false, inflight: { batchId, opened: finishing } };
    ctx.stats = { ...ctx.stats, dispatched: ctx.stats.dispatched + items.length, batches: ctx.stats.batches + 1 };
    effects.push({ kind: 'dispatch', batch });
  }
  if (wakeAtMs !== null && wakeAtMs !== ctx.wakeAtMs) effects.push({ kind: 'wake', atMs: wakeAtMs });
  ctx.wakeAtMs = wakeAtMs;
}

function applyWorkerStatus(ctx: SchedulerContext, m: WorkerStatus, atMs: number, effects: Effect[]): void {
  const prev = ctx.workers[m.workerId];
  const layout: PassLayout = m.passLayout ?? 'padded';
  // A worker that now lays passes out differently (another runner) needs the other family.
  let estimator = prev && layoutOf(prev.estimator) === layout ? prev.estimator : estimatorForLayout(layout);
  if (m.lastBatch && m.lastBatch.shapes.length > 0) {
    // A padded server that ran the pass as several timed calls teaches each sub-model its own part.
    const parts = layout === 'padded' && m.lastBatch.parts && m.lastBatch.parts.length > 1 ? m.lastBatch.parts : [{ shapes: m.lastBatch.shapes, actualMs: m.lastBatch.actualMs }];
    for (const p of parts) estimator = observeBatch(estimator, p.shapes, p.actualMs);
    effects.push({ kind: 'persist', workerId: m.workerId, model: m.model, estimator });
  }
  const calibration = switchesModes(ctx) && prev ? calibratedFromStatus(ctx, prev, m, atMs) : prev?.calibration;
  const restarted = prev !== undefined && prev.incarnation !== m.incarnation;
  const finished = prev?.inflight && (restarted || m.doneBatchId === prev.inflight.batchId) ? prev.inflight : null;
  if (finished) {
    for (const sid of finished.opened) {
      const s = ctx.sessions[sid];
      if (s && s.firstTokenAtMs === null) ctx.sessions[sid] = { ...s, firstTokenAtMs: atMs };
    }
  }
  const ready = m.state === 'ready' && (!prev?.inflight || finished !== null);
  ctx.workers[m.workerId] = {
    workerId: m.workerId,
    incarnation: m.incarnation,
    model: m.model,
    vocabSize: m.vocabSize,
    maxPositions: m.maxPositions,
    ready,
    inflight: ready ? null : (prev?.inflight ?? null),
    sessions: prev?.sessions ?? m.sessions,
    kvBytes: m.kvBytes,
    lastSeenMs: atMs,
    estimator,
    layout,
    kvCapacityTokens: m.kvCapacityTokens ?? null,
    kvReservedTokens: prev?.kvReservedTokens ?? 0,
    decoding: m.decoding ?? 0,
    passCurveMs: m.passCurveMs ?? prev?.passCurveMs ?? null,
    ...(calibration ? { calibration } : {}),
    // Each report starts a fresh allowance of mode switches.
    ...(switchesModes(ctx) ? { switchAllowance: SWITCHES_PER_PASS } : {}),
    ...(prev?.modePredictions ? { modePredictions: prev.modePredictions } : {}),
  };
  if (m.state === 'stopping') forgetWorker(ctx, m.workerId, atMs);
  else if (prev && prev.kvCapacityTokens !== (m.kvCapacityTokens ?? null)) admitWaiting(ctx, m.workerId, atMs);
  if (!prev && ctx.unplaced.length > 0) {
    const parked = ctx.unplaced;
    ctx.unplaced = [];
    for (const p of parked) {
      if (p.message.type === 'open') acceptOpen(ctx, p.message, p.atMs, effects);
      else acceptVerify(ctx, p.message, p.atMs, effects, p.workerHint);
    }
  }
}

/** Moves a lost worker's sessions and pending work to the remaining workers. */
function forgetWorker(ctx: SchedulerContext, workerId: string, atMs: number): void {
  const lost = ctx.workers[workerId];
  if (!lost) return;
  delete ctx.workers[workerId];
  const orphaned = pendingFor(ctx, workerId);
  const waiting = ctx.memoryWait[workerId] ?? [];
  delete ctx.pending[workerId];
  delete ctx.evictions[workerId];
  delete ctx.memoryWait[workerId];
  const waitingIds = new Set(waiting.map((q) => q.message.sessionId));
  for (const s of Object.values(ctx.sessions)) {
    if (s.workerId !== workerId) continue;
    const w = placeSession(ctx.workers, lost.model);
    if (!w) {
      delete ctx.sessions[s.sessionId];
      continue;
    }
    // An admitted session's cache is rebuilt on its new worker: its reservation moves with it,
    // even past that worker's capacity (recovery first; new opens wait until memory frees).
    const kv = waitingIds.has(s.sessionId) ? 0 : (s.kvTokens ?? 0);
    ctx.sessions[s.sessionId] = { ...s, workerId: w.workerId, kvTokens: kv };
    ctx.workers[w.workerId] = { ...w, sessions: w.sessions + 1, kvReservedTokens: w.kvReservedTokens + kv };
  }
  for (const e of orphaned) {
    const s = ctx.sessions[e.message.sessionId];
    // A prompt half prefilled on the lost worker starts over on its new one (nothing of it is there).
    const restart = e.message.type === 'open' ? { n: e.message.promptTokens.length, contextLength: 0 } : {};
    if (s) addPending(ctx, s.workerId, { ...e, request: { ...e.request, ...restart, arrivalMs: Math.min(e.request.arrivalMs, atMs) } });
  }
  for (const q of waiting) {
    const s = ctx.sessions[q.message.sessionId];
    if (!s) continue;
    (ctx.memoryWait[s.workerId] ??= []).push(q);
  }
  for (const id of new Set(waiting.map((q) => ctx.sessions[q.message.sessionId]?.workerId).filter((x): x is string => x !== undefined))) admitWaiting(ctx, id, atMs);
}

/** Forgets sessions that sent nothing for longer than `idleMs` and have nothing pending. */
function expireIdle(ctx: SchedulerContext, atMs: number, idleMs: number): void {
  const waiting = new Set<string>();
  for (const list of Object.values(ctx.pending)) for (const p of list) waiting.add(p.request.sessionId);
  for (const s of Object.values(ctx.sessions)) {
    if (waiting.has(s.sessionId) || atMs - (s.lastSeenMs ?? atMs) <= idleMs) continue;
    // A session still waiting for memory is not idle: its device waits for the first token.
    if ((ctx.memoryWait[s.workerId] ?? []).some((q) => q.message.sessionId === s.sessionId)) continue;
    releaseKv(ctx, s);
    delete ctx.sessions[s.sessionId];
    const w = ctx.workers[s.workerId];
    if (w) ctx.workers[s.workerId] = { ...w, sessions: Math.max(0, w.sessions - 1) };
    admitWaiting(ctx, s.workerId, atMs);
  }
}

/** How long, and how many, closed sessions are remembered to drop their stale requests. */
export const CLOSED_RETAIN_MS = 10 * 60_000;
export const CLOSED_RETAIN_MAX = 4_096;

function rememberClosed(ctx: SchedulerContext, sessionId: string, atMs: number, owned = false): void {
  if (owned && rememberClosedInPlace(ctx.closed, sessionId, atMs)) return;
  const closed: Record<string, number> = {};
  const kept = Object.entries(ctx.closed).filter(([id, at]) => id !== sessionId && atMs - at < CLOSED_RETAIN_MS);
  // Insertion order is close order: keep the newest.
  for (const [id, at] of kept.slice(Math.max(0, kept.length - (CLOSED_RETAIN_MAX - 1)))) closed[id] = at;
  closed[sessionId] = atMs;
  ctx.closed = closed;
}

/**
 * The in-place path's index of a `closed` record it owns: ids in key order (= close order) with
 * their times, a head pointer past evicted/stale slots, and id → slot of the live entry.
 */
interface ClosedIndex {
  order: string[];
  times: number[];
  head: number;
  live: Map<string, number>;
  lastAtMs: number;
}
const closedIndexes = new WeakMap<Record<string, number>, ClosedIndex>();
/** Integer-like keys enumerate before the others, so key order would not be close order. */
const INTEGER_KEY = /^(?:0|[1-9][0-9]*)$/;

function closedIndexOf(closed: Record<string, number>): ClosedIndex | null {
  const known = closedIndexes.get(closed);
  if (known) return known;
  const ix: ClosedIndex = { order: [], times: [], head: 0, live: new Map(), lastAtMs: -Infinity };
  for (const id of Object.keys(closed)) {
    const at = closed[id];
    if (at < ix.lastAtMs || INTEGER_KEY.test(id)) return null;
    ix.live.set(id, ix.order.length);
    ix.order.push(id);
    ix.times.push(at);
    ix.lastAtMs = at;
  }
  closedIndexes.set(closed, ix);
  return ix;
}

/**
 * rememberClosed's update done in place, amortised O(1), for a context the caller owns: exactly
 * the rebuild's result while close times never decrease (then the expired entries are the
 * oldest, a prefix of key order). Returns false, having changed nothing, when that does not
 * hold; the caller then rebuilds.
 */
function rememberClosedInPlace(closed: Record<string, number>, sessionId: string, atMs: number): boolean {
  if (INTEGER_KEY.test(sessionId)) return false;
  const ix = closedIndexOf(closed);
  if (!ix || atMs < ix.lastAtMs) return false;
  if (ix.live.delete(sessionId)) delete closed[sessionId];
  while (ix.head < ix.order.length) {
    const id = ix.order[ix.head];
    if (ix.live.get(id) !== ix.head) {
      ix.head++; // a stale slot: that id was closed again later
      continue;
    }
    if (atMs - ix.times[ix.head] < CLOSED_RETAIN_MS && ix.live.size < CLOSED_RETAIN_MAX) break;
    ix.live.delete(id);
    delete closed[id];
    ix.head++;
  }
  if (ix.head >= 1_024 && ix.head * 2 > ix.order.length) {
    ix.order = ix.order.slice(ix.head);
    ix.times = ix.times.slice(ix.head);
    ix.head = 0;
    ix.live.clear();
    ix.order.forEach((id, i) => {
      if (closed[id] === ix.times[i]) ix.live.set(id, i);
    });
  }
  ix.live.set(sessionId, ix.order.length);
  ix.order.push(sessionId);
  ix.times.push(atMs);
  ix.lastAtMs = atMs;
  closed[sessionId] = atMs;
  return true;
}

function applyClose(ctx: SchedulerContext, m: SessionClose, atMs: number, effects: Effect[], owned = false): void {
  const s = ctx.sessions[m.sessionId];
  if (s && s.deviceId !== m.deviceId) return void effects.push({ kind: 'ignored', reason: 'foreign_close' });
  rememberClosed(ctx, m.sessionId, atMs, owned);
  ctx.unplaced = ctx.unplaced.filter((u) => u.message.sessionId !== m.sessionId || u.message.deviceId !== m.deviceId);
  if (!s) return;
  // Only for a session known to be this device's: a close on an unknown one (a restarted
  // scheduler) cannot be checked, and its record then goes by its TTL.
  effects.push({ kind: 'forget', sessionId: m.sessionId });
  releaseKv(ctx, s);
  delete ctx.sessions[m.sessionId];
  const w = ctx.workers[s.workerId];
  if (w) ctx.workers[s.workerId] = { ...w, sessions: Math.max(0, w.sessions - 1) };
  ctx.pending[s.workerId] = pendingFor(ctx, s.workerId).filter((p) => p.message.sessionId !== m.sessionId);
  ctx.evictions[s.workerId] = [...(ctx.evictions[s.workerId] ?? []), m.sessionId];
  const queue = ctx.memoryWait[s.workerId];
  if (queue?.some((q) => q.message.sessionId === m.sessionId)) ctx.memoryWait[s.workerId] = queue.filter((q) => q.message.sessionId !== m.sessionId);
  admitWaiting(ctx, s.workerId, atMs);
}

/** Copies what reducers mutate, so a snapshot's context is never changed in place. */
function draft(ctx: SchedulerContext): SchedulerContext {
  return {
    ...ctx,
    workers: { ...ctx.workers },
    sessions: { ...ctx.sessions },
    pending: { ...ctx.pending },
    unplaced: [...ctx.unplaced],
    memoryWait: { ...ctx.memoryWait },
    evictions: { ...ctx.evictions },
  };
}

/** The whole transition function: event → (new context, effects). Pure. */
export function reduceScheduler(prev: SchedulerContext, event: SchedulerEvent): { context: SchedulerContext; effects: Effect[] } {
  const ctx = draft(prev);
  return { context: ctx, effects: transition(ctx, event, false) };
}

/**
 * The same transition applied in place: mutates `ctx` (its top-level records) and returns the
 * effects. For a caller that owns its context exclusively — the simulator — so it skips the
 * defensive copy `reduceScheduler` makes of every record (O(sessions) per event).
 */
export function applySchedulerEvent(ctx: SchedulerContext, event: SchedulerEvent): Effect[] {
  return transition(ctx, event, true);
}

/** `owned`: ctx's records are the caller's alone, so nested ones may be updated in place too. */
function transition(ctx: SchedulerContext, event: SchedulerEvent, owned: boolean): Effect[] {
  const effects: Effect[] = [];
  switch (event.type) {
    case 'OPEN':
      acceptOpen(ctx, event.message, event.atMs, effects);
      break;
    case 'VERIFY':
      acceptVerify(ctx, event.message, event.atMs, effects, event.workerHint);
      break;
    case 'CLOSE':
      applyClose(ctx, event.message, event.atMs, effects, owned);
      break;
    case 'WORKER_STATUS':
      applyWorkerStatus(ctx, event.message, event.atMs, effects);
      break;
    case 'WORKER_LOST':
      forgetWorker(ctx, event.workerId, event.atMs);
      break;
    case 'WAKE':
      ctx.wakeAtMs = null;
      break;
    case 'EXPIRE_IDLE':
      expireIdle(ctx, event.atMs, event.idleMs);
      break;
    case 'DISPATCH_FAILED': {
      const w = ctx.workers[event.batch.workerId];
      if (w?.inflight?.batchId === event.batch.batchId) ctx.workers[w.workerId] = { ...w, ready: true, inflight: null };
      // A copy the broker redelivers later replaces these (same request ids), so nothing runs twice here.
      for (const item of event.batch.items) {
        if (item.request.type === 'open') acceptOpen(ctx, item.request, item.arrivedAtMs, effects);
        else acceptVerify(ctx, item.request, item.arrivedAtMs, effects);
      }
      break;
    }
    case 'RESTORE_ESTIMATOR': {
      const w = ctx.workers[event.workerId];
      // A stored state of the other family (the worker changed runner) is of no use.
      if (w && layoutOf(event.estimator) === w.layout) ctx.workers[event.workerId] = { ...w, estimator: event.estimator };
      return effects;
    }
  }
  let refused = 0;
  for (const e of effects) if (e.kind === 'refuse') refused++;
  if (refused > 0) ctx.stats = { ...ctx.stats, refused: ctx.stats.refused + refused };
  pump(ctx, event.atMs, effects);
  return effects;
}

export function initialSchedulerContext(settings: SchedulerSettings): SchedulerContext {
  return {
    settings,
    workers: {},
    sessions: {},
    pending: {},
    unplaced: [],
    closed: {},
    memoryWait: {},
    evictions: {},
    batchSeq: 0,
    wakeAtMs: null,
    stats: { dispatched: 0, batches: 0, refused: 0 },
  };
}

export const schedulerMachine = setup({
  types: {
    context: {} as SchedulerContext,
    events: {} as SchedulerEvent,
    input: {} as SchedulerSettings,
  },
  actions: {
    dispatchBatch: notProvided('dispatchBatch') as (args: unknown, params: { batch: VerifyBatch }) => void,
    refuseRequest: notProvided('refuseRequest') as (args: unknown, params: RefusalParams) => void,
    persistEstimator: notProvided('persistEstimator') as (args: unknown, params: { workerId: string; model: string; estimator: EstimatorState }) => void,
    forgetSession: notProvided('forgetSession') as (args: unknown, params: { sessionId: string }) => void,
    countIgnored: notProvided('countIgnored') as (args: unknown, params: { reason: string }) => void,
    /** Arrange a WAKE event at `atMs` (replacing any earlier wake-up). */
    scheduleWake: notProvided('scheduleWake') as (args: unknown, params: { atMs: number }) => void,
  },
}).createMachine({
  id: 'scheduler',
  context: ({ input }) => initialSchedulerContext(input),
  initial: 'running',
  states: {
    running: {
      on: {
        '*': {
          actions: enqueueActions(({ context, event, enqueue }) => {
            const { context: next, effects } = reduceScheduler(context, event);
            enqueue.assign(() => next);
            for (const e of effects) {
              if (e.kind === 'dispatch') enqueue({ type: 'dispatchBatch', params: { batch: e.batch } });
              else if (e.kind === 'refuse') enqueue({ type: 'refuseRequest', params: e.params });
              else if (e.kind === 'persist') enqueue({ type: 'persistEstimator', params: { workerId: e.workerId, model: e.model, estimator: e.estimator } });
              else if (e.kind === 'forget') enqueue({ type: 'forgetSession', params: { sessionId: e.sessionId } });
              else if (e.kind === 'ignored') enqueue({ type: 'countIgnored', params: { reason: e.reason } });
              else enqueue({ type: 'scheduleWake', params: { atMs: e.atMs } });
            }
          }),
        },
      },
    },
  },
});
