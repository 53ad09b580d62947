/**
 * The discrete-event simulator: edge devices, the scheduler and verifier workers on simulated
 * time (ms), with simulated transport.
 *
 * What runs as in the live system:
 * - the scheduler is machines/scheduler.ts itself — every OPEN/VERIFY/CLOSE/WORKER_STATUS/WAKE
 *   is folded by its reducer (`applySchedulerEvent`, the in-place form of `reduceScheduler`),
 *   so session placement, KV admission, deadlines, the WISP/SLED/centralized batch policies and
 *   the online estimator are exactly the live ones;
 * - every session is the EdgeSession's own transition (`applyEdgeSessionEvent`, the in-place
 *   form of `reduceEdgeSession`, machines/edge-session.ts): opening, drafting, verdicts,
 *   streaming and their counters are the live device's;
 * - the device's rules are edge/: the speculation controller it runs (policies/controller.ts,
 *   learning online), keep/stop per drafted token and pipelined drafting's look-ahead reuse
 *   (edge/drafting.ts), link delays and the round-overhead estimate (edge/link.ts), session stats
 *   and energy (edge/session-stats.ts).
 * What is modelled: the draft model (the class's acceptance model draws each token's features
 * and verdict), drafting time (the profile's pace), and the worker — pass time from the server's
 * cost model, greedy acceptance = the longest accepted prefix, centralized sessions decoding in
 * continuous-batching steps between batches as actors/verifier/executor.ts does.
 */
import {
  PROTOCOL_VERSION,
  type ErrorCode,
  type SessionOpen,
  type Slo,
  type TokenStream,
  type VerifyBatch,
  type VerifyRequest,
  type VerifyResult,
  type WorkerStatus,
} from '../protocol/messages.ts';
import { errorMessage, verifyResult, workerStatus } from '../protocol/builders.ts';
import type { BatchRecord, SessionRecord } from '../results/metrics.ts';
import { controllerFor, emptyDraft, keepDraftedToken, reuseLookahead, stopRuleOf, type DraftedToken } from '../edge/drafting.ts';
import { initialRoundOverheadMs, nextRoundOverheadMs, oneWayDelayMs } from '../edge/link.ts';
import { deviceEnergyJ, sessionStats } from '../edge/session-stats.ts';
import { applyEdgeSessionEvent, startEdgeSession, type EdgeSessionContext, type EdgeSessionEvent } from '../machines/edge-session.ts';
import { applySchedulerEvent, initialSchedulerContext, type SchedulerContext, type SchedulerEvent } from '../machines/scheduler.ts';
import { FOLLOW_UP_HOLD_MS, holdsForFollowUp, nextDecodeTpotMs, stepSharesPass } from '../machines/verifier-worker.ts';
import { learnFromRound, type ControllerState } from '../policies/controller.ts';
import { agreementOf, countAgreement, hasWispExtras, NO_AGREEMENT_SEEN, requestedModeOf, type AgreementCounts } from '../policies/serving-mode.ts';
import { passCurveMs } from '../policies/pass-budget.ts';
import type { BatchShape } from '../policies/types.ts';
import type { DraftedTokenDraw } from './acceptance.ts';
import { EventQueue } from './event-queue.ts';
import { deriveSeed, Rng, STREAMS } from './random.ts';
import type { DeviceClassSpec, SimRunConfig, SimRunResult } from './types.ts';
import { WispError } from '../common/errors.ts';

export class SimConfigError extends WispError {
  constructor(message: string) {
    super('bad_sim_config', message);
  }
}

/** Soonest a scheduler wake-up fires after it is asked for, ms. */
const MIN_WAKE_MS = 0.001;

/** The token id every simulated token carries (only counts matter; there is no EOS). */
const TOKEN = 1;

interface SimSession {
  ctx: EdgeSessionContext;
  slo: Slo;
  /** Per-prompt difficulty for the acceptance model. */
  offset: number;
  /** Latent acceptance of each draft token of the round in flight. */
  outcomes: boolean[];
  /** The last verified round accepted its whole draft (pipelined look-ahead may continue it). */
  allAccepted: boolean;
  lookahead: { startMs: number; limit: number } | null;
  /** When the round being drafted is sent (its drafting ends then). */
  verifyAtMs: number;
  /** When the last chunk of its prompt so far ended (chunked prefill), or null before the first. */
  prefillEndMs: number | null;
  /** Where the session's time went so far, ms (network is what remains of its duration). */
  time: { drafting: number; queue: number; verify: number; memoryWait: number };
  /** The next stream chunk's sequence number the server sends it (kept across mode switches). */
  streamSeq: number;
}

interface SimDevice {
  id: string;
  cls: DeviceClassSpec;
  controller: ControllerState | null;
  /** EWMA of a round's overhead (send → result), ms, as actors/edge/device.ts keeps it. */
  roundOverheadMs: number;
  /** When the current round's verification was sent. */
  verifySentAtMs: number;
  workload: Rng;
  tokens: Rng;
  network: Rng;
  session: SimSession | null;
  /** Sessions started so far (numbers the session ids). */
  sessions: number;
  /** Latest arrival on each direction of the device's link (messages stay in order). */
  upLastMs: number;
  downLastMs: number;
  /** What it has seen of its draft's agreement (reported in an adaptive open, as the live device does). */
  agreement: AgreementCounts;
}

interface Decoding {
  dev: SimDevice;
  session: SimSession;
  sessionId: string;
  promptLength: number;
  maxNewTokens: number;
  /** Tokens the server has produced for it (generated tokens, drafted ones included once it was switched). */
  produced: number;
  /** When its last token came out (the worker's mean decode interval, WorkerStatus.decodeTpotMs). */
  lastStepEndMs: number;
  /** Adaptive serving: handed back to its device with its next token (VerifyBatch.speculate). */
  handoff?: boolean;
}

interface SimWorker {
  id: string;
  busy: boolean;
  queue: VerifyBatch[];
  decoding: Decoding[];
  rng: Rng;
  /** Counts holds for a follow-up batch (machines/verifier-worker.ts holdsForFollowUp); a stale hold's end is ignored. */
  holdGen: number;
  /** EWMA of the time between a decoded session's tokens, ms (as the live executor keeps it). */
  decodeTpotMs: number | undefined;
  current: {
    batch: VerifyBatch;
    shapes: BatchShape[];
    startedAtMs: number;
    actualMs: number;
    /** Centralized sessions whose decode step shares this pass (chunked prefill). */
    step: Decoding[];
    tokens: { verify: number; decode: number; prefill: number };
  } | null;
}

type SimEvent =
  | { k: 'start'; dev: SimDevice }
  | { k: 'sched'; ev: SchedulerEvent }
  | { k: 'wake'; gen: number }
  | { k: 'dispatch'; w: SimWorker; batch: VerifyBatch }
  | { k: 'batchDone'; w: SimWorker }
  | { k: 'stepDone'; w: SimWorker; shapes: BatchShape[]; startedAtMs: number; actualMs: number }
  | { k: 'holdEnd'; w: SimWorker; gen: number }
  | { k: 'result'; dev: SimDevice; sessionId: string; result: VerifyResult }
  /** `length`: the session's prompt and generated tokens once this chunk's one token is appended. */
  | { k: 'stream'; dev: SimDevice; sessionId: string; seq: number; length: number; speculate?: boolean }
  | { k: 'failed'; dev: SimDevice; sessionId: string; code: ErrorCode; message: string };

/** A drafted token of the simulator: the draft's features and whether the target accepts it. */
type SimDraftedToken = DraftedToken & { accepted: boolean };

/** @throws SimConfigError on a configuration that cannot run */
export function checkRunConfig(c: SimRunConfig): void {
  const bad = (why: string): never => {
    throw new SimConfigError(why);
  };
  if (!(Number.isInteger(c.devices) && c.devices >= 1)) bad(`devices must be an integer ≥ 1, got ${c.devices}`);
  if (!(Number.isInteger(c.workers) && c.workers >= 1)) bad(`workers must be an integer ≥ 1, got ${c.workers}`);
  if (!(c.durationMs > 0)) bad(`duration must be > 0 ms, got ${c.durationMs}`);
  if (!(c.warmupMs >= 0 && c.warmupMs < c.durationMs)) bad(`warmup must be in [0, duration), got ${c.warmupMs} ms of ${c.durationMs} ms`);
  if (c.classes.length === 0) bad('at least one device class is needed');
  if (c.classes.some((k) => !(k.weight > 0))) bad('device class weights must be > 0');
  const { promptTokens: p, outputTokens: o } = c.workload;
  if (!(Number.isInteger(p.min) && p.min >= 1 && p.max >= p.min)) bad(`prompt tokens range must be integers 1 ≤ min ≤ max, got ${p.min}..${p.max}`);
  if (!(Number.isInteger(o.min) && o.min >= 1 && o.max >= o.min)) bad(`output tokens range must be integers 1 ≤ min ≤ max, got ${o.min}..${o.max}`);
  if (p.max + o.max >= c.server.maxPositions) bad(`prompt + output (${p.max + o.max}) must fit the model's ${c.server.maxPositions} positions`);
  if (!(c.controller.kMax >= 0)) bad(`kMax must be ≥ 0, got ${c.controller.kMax}`);
}

/** Deals device i to a class in proportion to the weights (deterministic, interleaved). */
export function classOfDevice(classes: readonly DeviceClassSpec[], count: number): number[] {
  const total = classes.reduce((a, k) => a + k.weight, 0);
  const dealt = classes.map(() => 0);
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    let best = 0;
    let bestDebt = -Infinity;
    classes.forEach((k, j) => {
      const debt = (k.weight / total) * (i + 1) - dealt[j];
      if (debt > bestDebt + 1e-12) {
        best = j;
        bestDebt = debt;
      }
    });
    dealt[best]++;
    out.push(best);
  }
  return out;
}

/** How long a run may go on past its window so the sessions started in it can end, ms. */
export function drainMs(c: Pick<SimRunConfig, 'durationMs'>): number {
  return Math.max(30_000, c.durationMs / 2);
}

/** Observers of a run (tests replay the scheduler's input through the pure reducer). */
export interface SimHooks {
  /** Every event the scheduler folds, in order, before it is applied. */
  onSchedulerEvent?: (event: SchedulerEvent) => void;
}

/**
 * Runs one simulation. Sessions that start in the window [warmupMs, durationMs) are judged; the
 * closed loop keeps running past durationMs (same load) until they have all ended, or until
 * the drain limit — a session still unfinished then counts as an SLO miss. Deterministic for
 * `config.seed`.
 */
export function runSimulation(config: SimRunConfig, hooks: SimHooks = {}): SimRunResult {
  checkRunConfig(config);
  const wallStart = performance.now();
  const c = config;
  const speculative = c.policy !== 'centralized';
  const requestedMode = requestedModeOf(c.policy);
  const pipelining = c.pipelinedDrafting && hasWispExtras(c.policy);
  const q = new EventQueue<SimEvent>();
  const records: SessionRecord[] = [];
  const batches: BatchRecord[] = [];
  let now = 0;
  let events = 0;
  let wakeGen = 0;
  let refused = 0;
  let sessionsStarted = 0;
  const lookahead = { started: 0, reused: 0 };
  /** Judged sessions (started in the window) still running. */
  let judgedOpen = 0;
  const inWindow = (atMs: number): boolean => atMs >= c.warmupMs && atMs < c.durationMs;
  const drainLimitMs = c.durationMs + drainMs(c);

  const sched: SchedulerContext = initialSchedulerContext({
    policy: c.policy,
    bMax: c.scheduler.bMax,
    waitMs: c.scheduler.waitMs,
    maxBatchTokens: c.scheduler.maxBatchTokens,
    ageBoundMs: c.scheduler.ageBoundMs,
    truncation: c.scheduler.truncation,
    chunkedPrefill: c.scheduler.chunkedPrefill,
    passTokenBudget: c.scheduler.passTokenBudget,
    modeSwitching: c.scheduler.modeSwitching,
    defaultSlo: c.slo,
    defaultReturnLatencyMs: 0,
  });

  const classIndex = classOfDevice(c.classes, c.devices);
  const devices: SimDevice[] = [];
  const byId = new Map<string, SimDevice>();
  for (let i = 0; i < c.devices; i++) {
    const cls = c.classes[classIndex[i]];
    const dev: SimDevice = {
      id: `d${i}`,
      cls,
      controller: speculative ? controllerFor(c.policy, c.controller) : null,
      // The live device's starting guess (times are real-world here: time scale 1).
      roundOverheadMs: initialRoundOverheadMs(cls.profile.rttMs, 1),
      verifySentAtMs: 0,
      workload: new Rng(deriveSeed(c.seed, STREAMS.workload, i)),
      tokens: new Rng(deriveSeed(c.seed, STREAMS.tokens, i)),
      network: new Rng(deriveSeed(c.seed, STREAMS.network, i)),
      session: null,
      sessions: 0,
      upLastMs: 0,
      downLastMs: 0,
      agreement: NO_AGREEMENT_SEEN,
    };
    devices.push(dev);
    byId.set(dev.id, dev);
  }
  const workers: SimWorker[] = [];
  const workerById = new Map<string, SimWorker>();
  for (let i = 0; i < c.workers; i++) {
    const w: SimWorker = { id: `w${i}`, busy: false, queue: [], decoding: [], rng: new Rng(deriveSeed(c.seed, STREAMS.server, i)), holdGen: 0, decodeTpotMs: undefined, current: null };
    workers.push(w);
    workerById.set(w.id, w);
  }

  // ---- transport ----
  /** One-way delay as actors/edge/device.ts draws it: rtt/2 ± jitter/2, never negative. */
  const oneWayMs = (dev: SimDevice): number => oneWayDelayMs(dev.cls.profile, 1, dev.network.uniform());
  /** Arrival time at the scheduler of a message the device sends at `atMs`. */
  const link = c.server.linkHopMs;
  const upArrival = (dev: SimDevice, atMs: number): number => {
    const arrive = Math.max(dev.upLastMs, atMs + oneWayMs(dev) + link);
    dev.upLastMs = arrive;
    return arrive;
  };
  const sendDown = (dev: SimDevice, atMs: number, ev: SimEvent): void => {
    const arrive = Math.max(dev.downLastMs, atMs + oneWayMs(dev) + link);
    dev.downLastMs = arrive;
    q.push(arrive, ev);
  };

  // ---- scheduler ----
  const tap = hooks.onSchedulerEvent;
  const toScheduler = (ev: SchedulerEvent): void => {
    tap?.(ev);
    const effects = applySchedulerEvent(sched, ev);
    for (const e of effects) {
      if (e.kind === 'dispatch') {
        const w = workerById.get(e.batch.workerId)!;
        if (c.server.hopMs > 0) q.push(now + c.server.hopMs, { k: 'dispatch', w, batch: e.batch });
        else dispatch(w, e.batch);
      } else if (e.kind === 'wake') {
        // Never at `now` itself: a policy asking to be woken at a time it does not yet call due
        // (floating-point: arrival + W − arrival < W) would otherwise spin at one instant. Live
        // timers cannot fire sooner than 1 ms either.
        const gen = ++wakeGen;
        q.push(Math.max(now + MIN_WAKE_MS, e.atMs), { k: 'wake', gen });
      } else if (e.kind === 'refuse') {
        refused++;
        const dev = byId.get(e.params.replyTo);
        if (dev) sendDown(dev, now, { k: 'failed', dev, sessionId: e.params.sessionId, code: e.params.code, message: e.params.message });
      }
      // 'persist', 'forget': the simulated scheduler keeps its estimator in memory only, and no ledger.
    }
  };
  const statusOf = (w: SimWorker, report: { batch: VerifyBatch; shapes: BatchShape[]; actualMs: number } | null): WorkerStatus =>
    workerStatus({
      workerId: w.id,
      model: c.server.model,
      vocabSize: c.server.vocabSize,
      maxPositions: c.server.maxPositions,
      state: 'ready',
      sessions: 0,
      kvBytes: 0,
      passLayout: c.server.cost.layout,
      decoding: w.decoding.length,
      ...(w.decodeTpotMs !== undefined ? { decodeTpotMs: w.decodeTpotMs } : {}),
      passCurveMs: curve,
      ...(c.server.cost.kvCapacityTokens !== null ? { kvCapacityTokens: c.server.cost.kvCapacityTokens } : {}),
      incarnation: 'sim',
      ...(report
        ? {
            doneBatchId: report.batch.batchId,
            lastBatch: { batchId: report.batch.batchId, shapes: report.shapes, actualMs: report.actualMs, predictedMs: report.batch.predictedMs },
          }
        : {}),
      sentAtMs: now,
    });

  /** The server's pass-time curve, as a worker that knows its cost reports it (once per run). */
  const curve = passCurveMs((shapes) => c.server.cost.meanBatchMs(shapes));

  /** The scheduler's view of a worker's KV cache when a pass ends: reserved tokens and sessions waiting for memory. */
  const kvSnapshot = (w: SimWorker): { kvReservedTokens: number; memoryWaiting: number } => ({
    kvReservedTokens: sched.workers[w.id]?.kvReservedTokens ?? 0,
    memoryWaiting: sched.memoryWait[w.id]?.length ?? 0,
  });

  // ---- workers ----
  const dispatch = (w: SimWorker, batch: VerifyBatch): void => {
    w.queue.push(batch);
    if (!w.busy) startNext(w);
  };
  /** A batch item as the server's cost model sees it: a prompt (chunk), or a verification. */
  const itemShape = (it: VerifyBatch['items'][number]): BatchShape => {
    const r = it.request;
    if (r.type !== 'open') return { n: it.verifyTokens + 1, L: r.committedLength - 1 };
    if (!it.chunk) return { n: r.promptTokens.length, L: 0 };
    return it.chunk.start > 0 ? { n: it.chunk.end - it.chunk.start, L: it.chunk.start, prefill: true } : { n: it.chunk.end, L: 0 };
  };
  const decodeShape = (d: Decoding): BatchShape => ({ n: 1, L: d.promptLength + d.produced - 1 });
  const startNext = (w: SimWorker): void => {
    const batch = w.queue.shift();
    if (batch) {
      for (const id of batch.speculate ?? []) {
        const d = w.decoding.find((x) => x.sessionId === id);
        if (d) d.handoff = true;
      }
      const itemShapes = batch.items.map(itemShape);
      // The decode step of the sessions decoding here shares the pass, as on the live worker.
      const step = stepSharesPass(batch) ? w.decoding.slice() : [];
      const shapes = [...step.map(decodeShape), ...itemShapes];
      const tokens = { verify: 0, decode: step.length, prefill: 0 };
      batch.items.forEach((it, i) => (it.request.type === 'open' ? (tokens.prefill += itemShapes[i].n) : (tokens.verify += itemShapes[i].n)));
      const actualMs = c.server.cost.batchMs(shapes, w.rng);
      w.busy = true;
      w.current = { batch, shapes, startedAtMs: now, actualMs, step, tokens };
      q.push(now + actualMs + c.server.batchOverheadMs, { k: 'batchDone', w });
      return;
    }
    if (w.decoding.length > 0) {
      // Continuous batching: every decoding session gets one token this step.
      const shapes = w.decoding.map((d) => ({ n: 1, L: d.promptLength + d.produced - 1 }));
      const actualMs = c.server.cost.batchMs(shapes, w.rng);
      w.busy = true;
      q.push(now + actualMs + c.server.stepOverheadMs, { k: 'stepDone', w, shapes, startedAtMs: now, actualMs });
      return;
    }
    w.busy = false;
  };
  const onBatchDone = (w: SimWorker): void => {
    const cur = w.current!;
    w.current = null;
    const size = cur.batch.items.length;
    let truncated = 0;
    // Sessions decoding on this worker either had their step in this pass, or waited for it.
    if (cur.step.length > 0) stepTokens(w, cur.step, cur.startedAtMs);
    for (const d of w.decoding) if (!cur.step.includes(d)) d.session.time.queue += now - cur.startedAtMs;
    for (const it of cur.batch.items) {
      const r = it.request;
      const dev = byId.get(r.deviceId);
      if (!dev) continue;
      const queueMs = Math.max(0, cur.startedAtMs - it.arrivedAtMs);
      const verifyMs = cur.actualMs;
      const s = dev.session;
      const mine = s !== null && s.ctx.sessionId === r.sessionId;
      if (mine) {
        const admitted = it.admittedAtMs ?? it.arrivedAtMs;
        // A later chunk of a prompt waited since the chunk before it ended.
        const since = r.type === 'open' && s.prefillEndMs !== null ? s.prefillEndMs : admitted;
        if (since === admitted) s.time.memoryWait += Math.max(0, admitted - it.arrivedAtMs);
        s.time.queue += Math.max(0, cur.startedAtMs - since);
        s.time.verify += now - cur.startedAtMs;
        if (r.type === 'open') s.prefillEndMs = now;
      }
      if (r.type === 'open' && it.chunk && it.chunk.end < r.promptTokens.length) continue; // a middle chunk: no token yet
      if (r.type === 'open') {
        if (r.mode === 'centralized') {
          if (r.maxNewTokens > 1 && mine) w.decoding.push({ dev, session: s, sessionId: r.sessionId, promptLength: r.promptTokens.length, maxNewTokens: r.maxNewTokens, produced: 1, lastStepEndMs: now });
          if (mine) s.streamSeq = 1;
          sendDown(dev, now, { k: 'stream', dev, sessionId: r.sessionId, seq: 0, length: r.promptTokens.length + 1 });
        } else {
          sendDown(dev, now, { k: 'result', dev, sessionId: r.sessionId, result: result(r.sessionId, 0, 0, 0, r.promptTokens.length + 1, queueMs, verifyMs, size, w.id) });
        }
        continue;
      }
      if (!mine) continue;
      const m = Math.min(it.verifyTokens, r.draftTokens.length);
      truncated += r.draftTokens.length - m;
      let accepted = 0;
      while (accepted < m && s.outcomes[accepted]) accepted++;
      let res = result(r.sessionId, r.round, accepted, m, r.committedLength + accepted + 1, queueMs, verifyMs, size, w.id);
      const generated = r.committedLength + accepted + 1 - s.ctx.promptTokens.length;
      if (it.thenDecode === true && generated < s.ctx.maxNewTokens) {
        // Adaptive serving: the server decodes it from here, as the live executor does.
        w.decoding.push({ dev, session: s, sessionId: r.sessionId, promptLength: s.ctx.promptTokens.length, maxNewTokens: s.ctx.maxNewTokens, produced: generated, lastStepEndMs: now });
        res = { ...res, decodes: true, streamSeq: s.streamSeq };
      }
      sendDown(dev, now, { k: 'result', dev, sessionId: r.sessionId, result: res });
    }
    if (inWindow(cur.startedAtMs)) {
      const t = cur.tokens;
      const kind = t.verify >= t.prefill && t.verify >= t.decode ? 'verify' : t.prefill >= t.decode ? 'prefill' : 'step';
      batches.push({ workerId: w.id, kind, size, startedAtMs: cur.startedAtMs, actualMs: cur.actualMs, busyMs: now - cur.startedAtMs, predictedMs: cur.batch.predictedMs, truncatedTokens: truncated, tokens: t, ...kvSnapshot(w) });
    }
    // Like the live worker: pick the next work (a decode step) before reporting ready — or,
    // when the scheduler said a batch follows, wait a little for it to share the step's pass.
    w.busy = false;
    w.holdGen++;
    if (holdsForFollowUp(cur.batch, w.queue.length, w.decoding.length)) q.push(now + FOLLOW_UP_HOLD_MS, { k: 'holdEnd', w, gen: w.holdGen });
    else startNext(w);
    const status = statusOf(w, { batch: cur.batch, shapes: cur.shapes, actualMs: cur.actualMs });
    if (c.server.hopMs > 0) q.push(now + c.server.hopMs, { k: 'sched', ev: { type: 'WORKER_STATUS', message: status, atMs: now + c.server.hopMs } });
    else toScheduler({ type: 'WORKER_STATUS', message: status, atMs: now });
  };
  /** Every session of `step` gets its next token; those done leave continuous batching. */
  const stepTokens = (w: SimWorker, step: readonly Decoding[], startedAtMs: number): void => {
    const ended = new Set<Decoding>();
    let intervalSum = 0;
    for (const d of step) {
      d.session.time.verify += now - startedAtMs;
      d.produced++;
      intervalSum += now - d.lastStepEndMs;
      d.lastStepEndMs = now;
      const done = d.produced >= d.maxNewTokens;
      const speculate = d.handoff === true && !done;
      sendDown(d.dev, now, { k: 'stream', dev: d.dev, sessionId: d.sessionId, seq: d.session.streamSeq++, length: d.promptLength + d.produced, ...(speculate ? { speculate } : {}) });
      if (done || speculate) ended.add(d);
    }
    if (step.length > 0) w.decodeTpotMs = nextDecodeTpotMs(w.decodeTpotMs, intervalSum / step.length);
    if (ended.size > 0) w.decoding = w.decoding.filter((d) => !ended.has(d));
  };
  const onStepDone = (w: SimWorker, shapes: BatchShape[], startedAtMs: number, actualMs: number): void => {
    stepTokens(w, w.decoding, startedAtMs);
    if (inWindow(startedAtMs)) batches.push({ workerId: w.id, kind: 'step', size: shapes.length, startedAtMs, actualMs, busyMs: now - startedAtMs, predictedMs: null, truncatedTokens: 0, ...kvSnapshot(w) });
    w.busy = false;
    startNext(w);
  };
  const result = (sessionId: string, round: number, accepted: number, verified: number, committedLength: number, queueMs: number, verifyMs: number, batchSize: number, workerId: string): VerifyResult =>
    verifyResult({ sessionId, round, accepted, token: TOKEN, verified, committedLength, queueMs, verifyMs, batchSize, workerId });

  // ---- devices ----
  /** One read-only prompt array per length, shared by every session of that length (only lengths matter). */
  const prompts = new Map<number, number[]>();
  const promptOf = (length: number): number[] => {
    let p = prompts.get(length);
    if (!p) {
      p = new Array<number>(length).fill(TOKEN);
      prompts.set(length, p);
    }
    return p;
  };
  /** Runs one session event through the edge session's own transition and carries out its effects. */
  const apply = (dev: SimDevice, s: SimSession, event: EdgeSessionEvent): void => {
    // The simulator owns each session's context: the in-place form of the transition.
    const effects = applyEdgeSessionEvent(s.ctx, event);
    for (const e of effects) {
      switch (e.kind) {
        case 'sendOpen':
          sendOpen(dev, s);
          break;
        case 'draft':
          draftRound(dev, s, e.maxDraft);
          break;
        case 'sendVerify':
          // A resume follows only a stalled stream's TIMEOUT, which never comes here (below).
          if (e.params.resume !== true) sendVerify(dev, s);
          break;
        case 'roundVerified': {
          // The controller learns; the expected round overhead follows the measured rounds.
          dev.controller = learnFromRound(dev.controller!, e.draft.features, e.result.accepted, e.result.verified);
          dev.agreement = countAgreement(dev.agreement, e.result.accepted, Math.min(e.result.verified, e.draft.tokens.length));
          dev.roundOverheadMs = nextRoundOverheadMs(dev.roundOverheadMs, now - dev.verifySentAtMs);
          s.allAccepted = Math.min(e.result.accepted, e.result.verified, e.draft.tokens.length) === e.draft.tokens.length;
          break;
        }
        case 'sendClose':
          endSession(dev, s, e.reason);
          break;
        // Tokens go to no client here, and no reply timer is needed: simulated messages are never lost.
        case 'emitTokens':
        case 'timer':
        case 'clearTimer':
        case 'cancelDraft':
          break;
      }
    }
  };

  const startSession = (dev: SimDevice): void => {
    const w = c.workload;
    const promptLength = dev.workload.int(w.promptTokens.min, w.promptTokens.max);
    const maxNewTokens = dev.workload.int(w.outputTokens.min, w.outputTokens.max);
    const offset = dev.cls.acceptance.sessionOffset(dev.workload);
    const sessionId = `${dev.id}.s${dev.sessions++}`;
    sessionsStarted++;
    if (inWindow(now)) judgedOpen++;
    const { context, effects } = startEdgeSession({
      sessionId,
      deviceId: dev.id,
      requestId: sessionId,
      mode: requestedMode,
      promptTokens: promptOf(promptLength),
      maxNewTokens,
      eosTokenId: null,
      verifyTimeoutMs: Infinity,
      maxRetries: 0,
      kMax: c.controller.kMax,
      startedAtMs: now,
    });
    const s: SimSession = { ctx: context, slo: c.slo, offset, outcomes: [], allAccepted: false, lookahead: null, verifyAtMs: now, prefillEndMs: null, time: { drafting: 0, queue: 0, verify: 0, memoryWait: 0 }, streamSeq: 0 };
    dev.session = s;
    if (effects.some((e) => e.kind === 'sendOpen')) sendOpen(dev, s);
  };

  const sendOpen = (dev: SimDevice, s: SimSession): void => {
    const ctx = s.ctx;
    const open: SessionOpen = {
      v: PROTOCOL_VERSION,
      type: 'open',
      sessionId: ctx.sessionId,
      deviceId: dev.id,
      requestId: ctx.requestId,
      draftModel: dev.cls.profile.draftModel,
      targetModel: c.server.model,
      mode: ctx.mode,
      promptTokens: ctx.promptTokens,
      maxNewTokens: ctx.maxNewTokens,
      slo: c.slo,
      sampling: { temperature: 0, topP: 1, seed: 0 },
      replyTo: dev.id,
      sentAtMs: now,
      rttMs: dev.cls.profile.rttMs,
      ...(ctx.mode === 'adaptive' ? { drafting: { msPerToken: dev.cls.profile.draftMsPerToken, agreement: agreementOf(dev.agreement, dev.cls.acceptance.meanAcceptance), kMax: dev.controller!.kMax, ...(pipelining ? { pipelined: true } : {}) } } : {}),
    };
    const arrive = upArrival(dev, now);
    q.push(arrive, { k: 'sched', ev: { type: 'OPEN', message: open, atMs: arrive } });
  };

  /** The session's record: judged by its own stats, its time by part (network is the rest of its duration). */
  const toRecord = (dev: SimDevice, s: SimSession, done: boolean): SessionRecord => {
    const ctx = s.ctx;
    const stats = sessionStats(ctx, s.slo, ctx.startedAtMs);
    const t = s.time;
    const network = Math.max(0, now - ctx.startedAtMs - t.drafting - t.queue - t.verify - t.memoryWait);
    return {
      sessionId: ctx.sessionId,
      deviceId: dev.id,
      deviceClass: dev.cls.name,
      startedAtMs: ctx.startedAtMs,
      endedAtMs: now,
      finished: done && ctx.error === null,
      outputTokens: ctx.generated.length,
      stats: done ? stats : { ...stats, sloAttained: false },
      energyJ: deviceEnergyJ(dev.cls.profile, ctx, now - ctx.startedAtMs),
      draftMs: ctx.counters.draftMs,
      timeMs: { drafting: t.drafting, network, queue: t.queue, verify: t.verify, memoryWait: t.memoryWait },
    };
  };

  const endSession = (dev: SimDevice, s: SimSession, reason: 'done' | 'failed' | 'cancelled'): void => {
    const ctx = s.ctx;
    if (inWindow(ctx.startedAtMs)) {
      records.push(toRecord(dev, s, true));
      judgedOpen--;
    }
    const arrive = upArrival(dev, now);
    q.push(arrive, { k: 'sched', ev: { type: 'CLOSE', message: { v: PROTOCOL_VERSION, type: 'close', sessionId: ctx.sessionId, deviceId: dev.id, reason }, atMs: arrive } });
    dev.session = null;
    const next = now + c.workload.thinkMs;
    if (next < drainLimitMs) q.push(next, { k: 'start', dev });
  };

  /**
   * Drafts one round with the device's rules (edge/drafting.ts: keep/stop, look-ahead reuse) on
   * the class's acceptance model, on simulated time, and hands the draft to the session.
   */
  const draftRound = (dev: SimDevice, s: SimSession, maxDraft: number): void => {
    const ctl = dev.controller!;
    const acc = dev.cls.acceptance;
    const msPerToken = dev.cls.profile.draftMsPerToken;
    const rule = stopRuleOf(() => ctl, msPerToken, () => dev.roundOverheadMs);
    const out = emptyDraft();
    const outcomes: boolean[] = [];
    const token = (d: DraftedTokenDraw): SimDraftedToken => ({ token: TOKEN, features: d.features, ms: msPerToken, accepted: d.accepted });
    const keep = (t: SimDraftedToken, position: number): boolean => {
      const before = out.tokens.length;
      const goOn = keepDraftedToken(out, t, position, rule, null);
      if (out.tokens.length > before) outcomes.push(t.accepted);
      return goOn;
    };
    let t = now;
    let carryOn = maxDraft > 0;
    const la = s.lookahead;
    if (la) {
      s.lookahead = null;
      // The look-ahead is cancelled now; the token in progress still completes (the drafter awaits it).
      const elapsed = now - la.startMs;
      const drafted = Math.min(la.limit, Math.max(0, Math.ceil(elapsed / msPerToken - 1e-9)));
      t = Math.max(now, la.startMs + drafted * msPerToken);
      // Usable when the whole draft was accepted and the target's bonus token equals the first
      // look-ahead token (drawn only when it matters; later ones only as they are reused).
      const matches = s.allAccepted && drafted > 0 && acc.draw(dev.tokens, s.offset, 0).accepted;
      const bonusGuess: SimDraftedToken = { token: TOKEN, features: { top1Prob: 1, entropy: 0, margin: 1, logitSpread: 0 }, ms: msPerToken, accepted: true };
      const reuse = reuseLookahead(
        { count: drafted, totalMs: drafted * msPerToken, matches, tokenAt: (i) => (i === 0 ? bonusGuess : token(acc.draw(dev.tokens, s.offset, i - 1))) },
        maxDraft,
        out,
        keep,
      );
      carryOn = reuse.carryOn;
      if (out.tokens.length > 0) lookahead.reused++;
      out.discardedDraftMs = reuse.discardedMs;
    }
    while (carryOn && out.tokens.length < maxDraft) {
      const d = acc.draw(dev.tokens, s.offset, out.tokens.length);
      t += msPerToken;
      carryOn = keep(token(d), out.tokens.length);
    }
    s.outcomes = outcomes;
    // Drafting on the session's critical path: from the result to the next request (a reused look-ahead shortens it).
    s.time.drafting += t - now;
    s.verifyAtMs = t;
    apply(dev, s, { type: 'DRAFTED', draft: out, atMs: t });
  };

  /** Sends the round the session asks to verify, at the time its drafting ended; starts the look-ahead. */
  const sendVerify = (dev: SimDevice, s: SimSession): void => {
    const ctx = s.ctx;
    const draft = ctx.draft!;
    const t = s.verifyAtMs;
    // Predictions are probabilities already (the live device clamps them; nothing to clamp here).
    const request: VerifyRequest = {
      v: PROTOCOL_VERSION,
      type: 'verify',
      sessionId: ctx.sessionId,
      deviceId: dev.id,
      round: ctx.round,
      committedLength: ctx.promptTokens.length + ctx.generated.length,
      draftTokens: draft.tokens,
      predictedAcceptance: draft.predictedAcceptance,
      replyTo: dev.id,
      sentAtMs: t,
    };
    dev.verifySentAtMs = t;
    const arrive = upArrival(dev, t);
    q.push(arrive, { k: 'sched', ev: { type: 'VERIFY', message: request, atMs: arrive } });
    if (pipelining && draft.tokens.length > 0) {
      // Room left after this round commits everything plus the bonus token (as the live device computes it).
      const room = ctx.maxNewTokens - ctx.generated.length - draft.tokens.length - 1;
      const limit = Math.min(ctx.kMax + 1, room);
      if (limit > 0) {
        s.lookahead = { startMs: t, limit };
        lookahead.started++;
      }
    }
  };

  const onResult = (dev: SimDevice, sessionId: string, r: VerifyResult): void => {
    const s = dev.session;
    if (!s || s.ctx.sessionId !== sessionId) return;
    // Switched to server decoding: the look-ahead past this round is never used.
    if (r.decodes === true) s.lookahead = null;
    apply(dev, s, { type: 'RESULT', result: r, atMs: now });
  };

  const onStream = (dev: SimDevice, sessionId: string, seq: number, length: number, speculate: boolean): void => {
    const s = dev.session;
    if (!s || s.ctx.sessionId !== sessionId) return;
    const chunk: TokenStream = { v: PROTOCOL_VERSION, type: 'stream', sessionId, seq, tokens: [TOKEN], committedLength: length, done: false, workerId: 'sim', ...(speculate ? { speculate } : {}) };
    apply(dev, s, { type: 'STREAM', chunk, atMs: now });
  };

  // ---- run ----
  for (const w of workers) toScheduler({ type: 'WORKER_STATUS', message: statusOf(w, null), atMs: 0 });
  for (const dev of devices) q.push(dev.workload.uniform() * c.workload.startSpreadMs, { k: 'start', dev });

  while (q.size > 0 && (q.peekTime() <= c.durationMs || (judgedOpen > 0 && q.peekTime() <= drainLimitMs))) {
    const { atMs, event } = q.pop()!;
    now = atMs;
    events++;
    switch (event.k) {
      case 'start':
        startSession(event.dev);
        break;
      case 'sched':
        toScheduler(event.ev);
        break;
      case 'wake':
        if (event.gen === wakeGen) toScheduler({ type: 'WAKE', atMs: now });
        break;
      case 'dispatch':
        dispatch(event.w, event.batch);
        break;
      case 'batchDone':
        onBatchDone(event.w);
        break;
      case 'stepDone':
        onStepDone(event.w, event.shapes, event.startedAtMs, event.actualMs);
        break;
      case 'holdEnd':
        // No follow-up came in time: the decode step runs alone.
        if (event.gen === event.w.holdGen && !event.w.busy) startNext(event.w);
        break;
      case 'result':
        onResult(event.dev, event.sessionId, event.result);
        break;
      case 'stream':
        onStream(event.dev, event.sessionId, event.seq, event.length, event.speculate === true);
        break;
      case 'failed': {
        const s = event.dev.session;
        // The scheduler refused the session: the device gets its typed error, as a live one would.
        if (s && s.ctx.sessionId === event.sessionId) apply(event.dev, s, { type: 'ERROR', error: errorMessage(event.code, event.message, { sessionId: event.sessionId }), atMs: now });
        break;
      }
    }
  }

  // Judged sessions still running at the drain limit: SLO misses.
  const endMs = now;
  for (const dev of devices) {
    const s = dev.session;
    if (s && inWindow(s.ctx.startedAtMs)) records.push(toRecord(dev, s, false));
  }

  return {
    config: { policy: c.policy, devices: c.devices, workers: c.workers, durationMs: c.durationMs, warmupMs: c.warmupMs, seed: c.seed },
    records,
    batches,
    windowMs: c.durationMs - c.warmupMs,
    endMs,
    sessionsStarted,
    refused,
    events,
    estimators: Object.values(sched.workers).map((w) => ({ workerId: w.workerId, ewmaApe: w.estimator.error.ewmaApe, observations: w.estimator.error.count })),
    lookahead,
    wallMs: performance.now() - wallStart,
  };
}
