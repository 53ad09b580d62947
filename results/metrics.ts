/**
 * Run metrics (docs/design.md §6), shared by the simulator (`wisp sim`) and the live benchmark
 * (`wisp bench`): pure functions of per-session records and per-batch records, no I/O. What
 * they produce is persisted in results.json, whose shapes are results/schema.ts.
 *
 * - SLO attainment: a session attains its SLO when TTFT ≤ ttftMs and its mean time per output
 *   token (after the first) ≤ tpotMs.
 * - Goodput: output tokens per second, counted only from sessions that attained their SLO.
 * - System capacity: the largest number of concurrent devices at which at least 90 % of
 *   sessions attain their SLO.
 */
import type { SessionStats, Slo } from '../protocol/messages.ts';
import type { AcceptanceSummary, KvMemorySummary, LoadPoint, ModeSummary, PolicyResult, Ratio, ServerTimeParts, SessionTimeParts, Summary, WastedDraftSummary } from './schema.ts';

/** One judged session (finished, or unfinished but already past its TTFT SLO). */
export interface SessionRecord {
  sessionId: string;
  deviceId: string;
  /** Device class (profile name), e.g. 'jetson-orin-nano'. */
  deviceClass: string;
  /** When the prompt reached the device, ms on the run's clock. */
  startedAtMs: number;
  /** When its last token reached the device (or the run ended, if unfinished), ms. */
  endedAtMs: number;
  /** False for a session that failed, or was cut off by the end of the run: an SLO miss. */
  finished: boolean;
  /** Output tokens generated (so far, if unfinished). */
  outputTokens: number;
  /** The session's statistics as the device reports them (actors/edge/device.ts sessionStats). */
  stats: SessionStats;
  /** Device energy spent on the session, J. */
  energyJ: number;
  /** Device time spent drafting (kept, rejected and discarded tokens), ms. */
  draftMs: number;
  /**
   * Where the session's time went, ms; the parts add up to its duration. drafting: on the
   * critical path (not overlapped by verification); queue: waiting at the server for a pass;
   * verify: in server passes (verification, prefill, decode steps); memoryWait: waiting for
   * KV-cache memory before its prefill; network: the rest (links, broker, device overheads).
   */
  timeMs?: SessionTimeParts;
}

/** One executed server batch (a verification/prefill batch, or a centralized decode step). */
export interface BatchRecord {
  workerId: string;
  kind: 'verify' | 'prefill' | 'step';
  size: number;
  startedAtMs: number;
  actualMs: number;
  /** Time the worker was busy with it (model time plus its overheads), ms; default actualMs. */
  busyMs?: number;
  /** The scheduler estimator's prediction, ms; null for decode steps (not scheduled). */
  predictedMs: number | null;
  /** Draft tokens the scheduler cut off by truncation in this batch. */
  truncatedTokens: number;
  /** KV-cache tokens reserved on the worker when it ended (servers with a memory limit). */
  kvReservedTokens?: number;
  /** Sessions waiting for KV-cache memory on the worker when it ended. */
  memoryWaiting?: number;
  /** Tokens it fed by kind (a pass mixing prompt chunks with verifications or a decode step); absent: all of `kind`. */
  tokens?: { verify: number; decode: number; prefill: number };
}

export type {
  AcceptanceSummary,
  BenchResults,
  KvMemorySummary,
  LoadPoint,
  PolicyResult,
  Ratio,
  ServerTimeParts,
  SessionTimeParts,
  Summary,
  WastedDraftSummary,
} from './schema.ts';

/** The capacity criterion of docs/design.md §6. */
export const ATTAINMENT_TARGET = 0.9;

/** Whether a record attained `slo` (default: the SLO the session was judged by, `stats.sloAttained`). */
export function attainedSlo(r: SessionRecord, slo?: Slo): boolean {
  if (!r.finished) return false;
  if (slo === undefined) return r.stats.sloAttained;
  return r.stats.ttftMs <= slo.ttftMs && r.stats.tpotMs <= slo.tpotMs;
}

/** Fraction of `records` that attained their SLO; 0 for no records. */
export function attainment(records: readonly SessionRecord[], slo?: Slo): number {
  if (records.length === 0) return 0;
  let ok = 0;
  for (const r of records) if (attainedSlo(r, slo)) ok++;
  return ok / records.length;
}

/**
 * Goodput: output tokens of SLO-attaining sessions per second of the measured window.
 * @param windowMs length of the window the records were taken from, ms (> 0)
 */
export function goodputTokS(records: readonly SessionRecord[], windowMs: number, slo?: Slo): number {
  if (!(windowMs > 0)) throw new RangeError(`windowMs must be > 0, got ${windowMs}`);
  let tokens = 0;
  for (const r of records) if (attainedSlo(r, slo)) tokens += r.outputTokens;
  return tokens / (windowMs / 1_000);
}

/** Output tokens of finished sessions per second of the window. */
export function throughputTokS(records: readonly SessionRecord[], windowMs: number): number {
  if (!(windowMs > 0)) throw new RangeError(`windowMs must be > 0, got ${windowMs}`);
  let tokens = 0;
  for (const r of records) if (r.finished) tokens += r.outputTokens;
  return tokens / (windowMs / 1_000);
}

/**
 * System capacity: the largest device count whose attainment is ≥ `target`; 0 when none is.
 * Points may come in any order; the definition takes the largest passing count even when a
 * smaller one failed (a noisy sweep is the caller's to refine).
 */
export function capacity(points: readonly { devices: number; attainment: number }[], target = ATTAINMENT_TARGET): number {
  let best = 0;
  for (const p of points) if (p.attainment >= target && p.devices > best) best = p.devices;
  return best;
}

/**
 * Percentile by linear interpolation between closest ranks (numpy's default): p in [0, 100].
 * Returns 0 for an empty sample. Does not modify `values`.
 */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return percentileSorted(sorted, p);
}

function percentileSorted(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const q = Math.min(100, Math.max(0, p)) / 100;
  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** count, mean, p50/p90/p99 and max of a sample (all 0 when empty). */
export function summarize(values: readonly number[]): Summary {
  if (values.length === 0) return { count: 0, mean: 0, p50: 0, p90: 0, p99: 0, max: 0 };
  const sorted = [...values].sort((a, b) => a - b);
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count: sorted.length,
    mean: sum / sorted.length,
    p50: percentileSorted(sorted, 50),
    p90: percentileSorted(sorted, 90),
    p99: percentileSorted(sorted, 99),
    max: sorted[sorted.length - 1],
  };
}

/** Device energy per generated token over finished sessions, J (0 when no tokens). */
export function energyPerTokenJ(records: readonly SessionRecord[]): number {
  let energy = 0;
  let tokens = 0;
  for (const r of records) {
    if (!r.finished) continue;
    energy += r.energyJ;
    tokens += r.outputTokens;
  }
  return tokens === 0 ? 0 : energy / tokens;
}

/** Acceptance over all verification rounds of `records`. */
export function acceptanceSummary(records: readonly SessionRecord[]): AcceptanceSummary {
  let rounds = 0;
  let drafted = 0;
  let accepted = 0;
  const judged: number[] = [];
  const acc: number[] = [];
  for (const r of records) {
    const s = r.stats;
    rounds += s.rounds;
    drafted += s.drafted;
    accepted += s.accepted;
    s.draftedByPosition.forEach((n, i) => (judged[i] = (judged[i] ?? 0) + n));
    s.acceptedByPosition.forEach((n, i) => (acc[i] = (acc[i] ?? 0) + n));
  }
  let judgedTotal = 0;
  for (const n of judged) judgedTotal += n ?? 0;
  return {
    rate: judgedTotal === 0 ? 0 : accepted / judgedTotal,
    acceptedPerRound: rounds === 0 ? 0 : accepted / rounds,
    draftedPerRound: rounds === 0 ? 0 : drafted / rounds,
    byPosition: Array.from(judged, (n, i) => ((n ?? 0) === 0 ? 0 : (acc[i] ?? 0) / n)),
  };
}

/** Wasted drafting time (docs/design.md §6): drafts rejected, drafted past a rejection, cut, or discarded. */
export function wastedDraftSummary(records: readonly SessionRecord[]): WastedDraftSummary {
  let wasted = 0;
  let draft = 0;
  let tokens = 0;
  for (const r of records) {
    wasted += r.stats.wastedDraftMs;
    draft += r.draftMs;
    tokens += r.outputTokens;
  }
  return { totalMs: wasted, fraction: draft === 0 ? 0 : wasted / draft, msPerOutputToken: tokens === 0 ? 0 : wasted / tokens };
}

/** Options of `loadPoint`. */
export interface LoadPointOptions {
  devices: number;
  /** Length of the measured window, ms. */
  windowMs: number;
  /** Re-judge every session by this SLO instead of its own `stats.sloAttained`. */
  slo?: Slo;
  /** Server batches executed in the window (sizes, estimator error). */
  batches?: readonly BatchRecord[];
  /** Workers serving the load (idle time is theirs): default 1. */
  workers?: number;
  /** KV-cache capacity per worker in tokens, when the server has a limit. */
  kvCapacityTokens?: number | null;
}

/** Server time by kind: busy time of each kind of pass, and the rest of the workers' window as idle. */
export function serverTimeParts(batches: readonly BatchRecord[], windowMs: number, workers: number): ServerTimeParts {
  const out = { verify: 0, decode: 0, prefill: 0, idle: 0 };
  for (const b of batches) {
    const ms = b.busyMs ?? b.actualMs;
    const t = b.tokens;
    const total = t ? t.verify + t.decode + t.prefill : 0;
    if (t && total > 0) {
      // A mixed pass is shared out by the tokens each kind fed.
      out.verify += (ms * t.verify) / total;
      out.decode += (ms * t.decode) / total;
      out.prefill += (ms * t.prefill) / total;
    } else if (b.kind === 'step') out.decode += ms;
    else if (b.kind === 'prefill') out.prefill += ms;
    else out.verify += ms;
  }
  out.idle = Math.max(0, windowMs * workers - out.verify - out.decode - out.prefill);
  return out;
}

/** Σ of each time part over sessions ÷ their output tokens, ms per token (undefined when no session reports parts). */
export function sessionMsPerToken(records: readonly SessionRecord[]): SessionTimeParts | undefined {
  const sum: SessionTimeParts = { drafting: 0, network: 0, queue: 0, verify: 0, memoryWait: 0 };
  let tokens = 0;
  for (const r of records) {
    if (!r.timeMs || r.outputTokens === 0) continue;
    for (const k of Object.keys(sum) as (keyof SessionTimeParts)[]) sum[k] += r.timeMs[k];
    tokens += r.outputTokens;
  }
  if (tokens === 0) return undefined;
  for (const k of Object.keys(sum) as (keyof SessionTimeParts)[]) sum[k] /= tokens;
  return sum;
}

/** KV memory over the passes of a load. */
export function kvMemorySummary(batches: readonly BatchRecord[], capacityTokens: number | null): KvMemorySummary {
  let n = 0;
  let util = 0;
  let peakUtil = 0;
  let waiting = 0;
  let peakWaiting = 0;
  for (const b of batches) {
    if (b.kvReservedTokens === undefined) continue;
    n++;
    const u = capacityTokens ? b.kvReservedTokens / capacityTokens : 0;
    util += u;
    peakUtil = Math.max(peakUtil, u);
    const w = b.memoryWaiting ?? 0;
    waiting += w;
    peakWaiting = Math.max(peakWaiting, w);
  }
  return { capacityTokens, meanUtilisation: n === 0 ? 0 : util / n, peakUtilisation: peakUtil, meanWaiting: n === 0 ? 0 : waiting / n, peakWaiting };
}

/** All metrics of one load from its session (and batch) records. */
export function loadPoint(records: readonly SessionRecord[], o: LoadPointOptions): LoadPoint {
  const finished = records.filter((r) => r.finished);
  const batches = o.batches ?? [];
  const scheduled = batches.filter((b) => b.predictedMs !== null && b.actualMs > 0);
  const byClass: Record<string, SessionRecord[]> = {};
  for (const r of records) (byClass[r.deviceClass] ??= []).push(r);
  let rounds = 0;
  let queueMs = 0;
  for (const r of finished) {
    rounds += r.stats.rounds + 1; // + the prefill
    queueMs += r.stats.queueMs;
  }
  let truncated = 0;
  let verifyMembers = 0;
  for (const b of batches) {
    truncated += b.truncatedTokens;
    if (b.kind === 'verify') verifyMembers += b.size;
  }
  return {
    devices: o.devices,
    sessions: records.length,
    attainment: attainment(records, o.slo),
    goodputTokS: goodputTokS(records, o.windowMs, o.slo),
    throughputTokS: throughputTokS(records, o.windowMs),
    ttftMs: summarize(finished.map((r) => r.stats.ttftMs)),
    tpotMs: summarize(finished.filter((r) => r.outputTokens > 1).map((r) => r.stats.tpotMs)),
    energyJPerToken: energyPerTokenJ(records),
    acceptance: acceptanceSummary(finished),
    wastedDraft: wastedDraftSummary(finished),
    batchSize: summarize(batches.map((b) => b.size)),
    estimatorApe: summarize(scheduled.map((b) => Math.abs((b.predictedMs as number) - b.actualMs) / b.actualMs)),
    queueMsPerRound: rounds === 0 ? 0 : queueMs / rounds,
    truncatedPerRound: verifyMembers === 0 ? 0 : truncated / verifyMembers,
    attainmentByClass: Object.fromEntries(Object.entries(byClass).map(([k, rs]) => [k, attainment(rs, o.slo)])),
    ...(o.batches ? { serverMs: serverTimeParts(batches, o.windowMs, o.workers ?? 1) } : {}),
    ...optional('sessionMsPerToken', sessionMsPerToken(finished)),
    ...(o.kvCapacityTokens !== undefined ? { kv: kvMemorySummary(batches, o.kvCapacityTokens) } : {}),
    ...optional('modes', modeSummary(finished)),
  };
}

/**
 * How finished sessions were served (undefined when none says: records from before devices
 * reported their mode): the share of sessions that ended decoded by the server, the share of
 * tokens the server decoded (a session switched between modes counts each token where it came
 * from), the share of sessions switched at least once, and the mean draft tokens per round.
 */
export function modeSummary(records: readonly SessionRecord[]): ModeSummary | undefined {
  const known = records.filter((r) => r.stats.mode !== undefined);
  if (known.length === 0) return undefined;
  let decodedSessions = 0;
  let switched = 0;
  let tokens = 0;
  let decodedTokens = 0;
  let drafts = 0;
  let rounds = 0;
  for (const r of known) {
    if (r.stats.mode === 'centralized') decodedSessions++;
    if ((r.stats.modeSwitches ?? 0) > 0) switched++;
    tokens += r.outputTokens;
    // A session always decoded carries no count when it reported none (records from before the counter).
    decodedTokens += r.stats.decodedTokens ?? (r.stats.mode === 'centralized' && r.stats.rounds === 0 ? r.outputTokens : 0);
    drafts += r.stats.drafted;
    rounds += r.stats.rounds;
  }
  return {
    decodedSessionShare: decodedSessions / known.length,
    decodedTokenShare: tokens === 0 ? 0 : Math.min(1, decodedTokens / tokens),
    switchedSessionShare: switched / known.length,
    meanDraftsPerRound: rounds === 0 ? 0 : drafts / rounds,
  };
}

function optional<K extends string, V>(key: K, v: V | undefined): { [P in K]?: V } {
  return (v === undefined ? {} : { [key]: v }) as { [P in K]?: V };
}

/** Capacity, best goodput and energy of one policy from its load points. */
export function policyResult(points: readonly LoadPoint[], target = ATTAINMENT_TARGET): PolicyResult {
  const sorted = [...points].sort((a, b) => a.devices - b.devices);
  const cap = capacity(sorted, target);
  let best: LoadPoint | null = null;
  for (const p of sorted) if (best === null || p.goodputTokS > best.goodputTokS) best = p;
  const atCap = sorted.find((p) => p.devices === cap) ?? sorted[0];
  return {
    capacity: cap,
    goodputTokS: best?.goodputTokS ?? 0,
    goodputAtDevices: best?.devices ?? 0,
    energyJPerToken: atCap?.energyJPerToken ?? 0,
    points: sorted,
  };
}

/** a / b, or null when b is 0 (a ratio to nothing is not a number to print). */
export function ratioOf(a: number, b: number): number | null {
  return b === 0 ? null : a / b;
}

/** WISP's capacity and best-goodput ratios to a baseline. */
export function ratioBetween(wisp: PolicyResult, baseline: PolicyResult): Ratio {
  return { capacity: ratioOf(wisp.capacity, baseline.capacity), goodput: ratioOf(wisp.goodputTokS, baseline.goodputTokS) };
}

/**
 * One load run several times as one point: the median run by attainment (then goodput; the lower
 * middle one when the count is even, so a tie leans to the worse run), with every run's range of
 * attainment and goodput. One run is returned as it is.
 * @throws RangeError when there is no run
 */
export function medianRun(runs: readonly LoadPoint[]): LoadPoint {
  if (runs.length === 0) throw new RangeError('medianRun: no runs');
  if (runs.length === 1) return runs[0];
  const sorted = [...runs].sort((a, b) => a.attainment - b.attainment || a.goodputTokS - b.goodputTokS);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  const range = (xs: number[]) => ({ min: Math.min(...xs), max: Math.max(...xs) });
  return { ...median, repeats: { runs: runs.length, attainment: range(runs.map((r) => r.attainment)), goodputTokS: range(runs.map((r) => r.goodputTokS)) } };
}
