/**
 * The scheduler's part of adaptive serving (docs/design.md §5b): the mode a session is admitted
 * in, and the revisits at its rounds — to the server at a speculating session's round, back to
 * its device as a batch for its worker is made — within each worker's switch allowance, with the
 * predictions of policies/serving-mode.ts kept per device pace and calibrated by what the worker
 * reports. Pure reducers on the scheduler's context, like the rest of machines/scheduler.ts.
 */
import type { ServingMode, VerifyRequest, WorkerStatus } from '../protocol/messages.ts';
import type { EstimatorState } from '../policies/index.ts';
import { calibrate, calibratedChoice, currentModeTpots, predictServingModes, UNCALIBRATED, type ModeCalibration, type ServingModeChoice } from '../policies/serving-mode.ts';
import type { PendingEntry, SchedulerContext, SessionEntry, WorkerEntry } from './scheduler.ts';

/** Each device pace's predictions on a worker while its sessions, decoding count and estimator stand. */
export interface ModePredictions {
  sessions: number;
  decoding: number;
  estimator: EstimatorState;
  /** A typical cached context of the worker's sessions (a prompt and half an answer), tokens. */
  contextTokens: number;
  byPace: Record<string, ServingModeChoice>;
  /** Each pace's modes predicted for the worker as it is (what measurements calibrate). */
  current: Record<string, { decodeTpotMs: number; speculativeTpotMs: number }>;
}

/**
 * Each mode's predicted time per output token for a session on worker `w`, uncalibrated
 * (policies/serving-mode.ts), kept per device pace while the worker's session count and
 * estimator stand: every round of every adaptive session asks. Null for a session whose device
 * gave no drafting pace.
 */
function modePrediction(ctx: SchedulerContext, w: WorkerEntry, s: SessionEntry): ServingModeChoice | null {
  if (!s.pace) return null;
  const cache = modeCache(ctx, w, s);
  return (cache.byPace[paceKey(s)] ??= predictServingModes({
    drafting: s.pace.drafting,
    rttMs: s.pace.rttMs,
    tpotMs: s.slo.tpotMs,
    estimator: w.estimator,
    // Every session placed on the worker (this one counted in w.sessions already), whatever its mode.
    otherSessions: Math.max(0, w.sessions - 1),
    contextTokens: cache.contextTokens,
    promptTokens: Math.max(1, s.promptLength),
    maxNewTokens: s.pace.maxNewTokens,
  }));
}

/** Both modes' prediction for `s` on `w` as the worker is now (policies/serving-mode.ts currentModeTpots). */
function currentPrediction(ctx: SchedulerContext, w: WorkerEntry, s: SessionEntry): { decodeTpotMs: number; speculativeTpotMs: number } | null {
  const all = modePrediction(ctx, w, s);
  if (!all || !s.pace) return null;
  const cache = modeCache(ctx, ctx.workers[w.workerId], s);
  return (cache.current[paceKey(s)] ??= currentModeTpots(w.estimator, Math.max(1, w.sessions), Math.min(w.decoding, w.sessions), cache.contextTokens, s.pace.drafting, s.pace.rttMs, all.k));
}

function paceKey(s: SessionEntry): string {
  const p = s.pace!;
  return `${p.drafting.msPerToken}|${p.drafting.agreement.toFixed(3)}|${p.drafting.kMax}|${p.rttMs}|${s.slo.tpotMs}|${p.maxNewTokens}`;
}

/** The worker's prediction cache, new when its session count, decoding count or estimator changed. */
function modeCache(ctx: SchedulerContext, w: WorkerEntry, s: SessionEntry): ModePredictions {
  const cache = w.modePredictions;
  if (cache && cache.sessions === w.sessions && cache.decoding === w.decoding && cache.estimator === w.estimator) return cache;
  // The rows of a pass are the worker's sessions: their typical context, not this one's.
  let promptSum = 0;
  let count = 0;
  for (const id in ctx.sessions) {
    const o = ctx.sessions[id];
    if (o.workerId === w.workerId) (promptSum += o.promptLength), count++;
  }
  const fresh: ModePredictions = {
    sessions: w.sessions,
    decoding: w.decoding,
    estimator: w.estimator,
    contextTokens: Math.round((count > 0 ? promptSum / count : s.promptLength) + (s.pace?.maxNewTokens ?? 0) / 2),
    byPace: {},
    current: {},
  };
  ctx.workers[w.workerId] = { ...ctx.workers[w.workerId], modePredictions: fresh };
  return fresh;
}

/** The mode the adaptive rule picks for `s` on `w` now (`current`: the mode it is in, when revisited), or null without a pace. */
export function pickMode(ctx: SchedulerContext, w: WorkerEntry, s: SessionEntry, nowMs: number, current?: ServingMode): ServingMode | null {
  const p = modePrediction(ctx, w, s);
  if (!p) return null;
  // Calibrated only where modes are revisited (the once-at-admission ablation is the first design, as it was).
  const cal = switchesModes(ctx) ? (ctx.workers[w.workerId]?.calibration ?? UNCALIBRATED) : UNCALIBRATED;
  return calibratedChoice(p, s.slo.tpotMs, cal, nowMs, current).mode;
}

/** Whether the scheduler revisits adaptive sessions' modes at their rounds. */
export function switchesModes(ctx: SchedulerContext): boolean {
  return ctx.settings.policy === 'adaptive' && ctx.settings.modeSwitching === true;
}

/**
 * Adaptive, at a round of a speculating session: folds the time its last round took per token
 * it committed into the worker's calibration of speculation, then revisits its mode. True when
 * the server decodes it after this round (the session entry says so from now on).
 */
export function reviseSpeculating(ctx: SchedulerContext, s: SessionEntry, m: VerifyRequest, atMs: number): boolean {
  const w = ctx.workers[s.workerId];
  if (!w || !s.pace) return false;
  // A round from a session the scheduler had switched to decoding: the switch did not happen
  // there (its round was answered from the worker's record), so it speculates still.
  let entry: SessionEntry = s.mode === 'centralized' ? { ...s, mode: 'speculative' } : s;
  const p = currentPrediction(ctx, w, entry);
  if (p && entry.lastRound && m.committedLength > entry.lastRound.committed) {
    const observed = (atMs - entry.lastRound.atMs) / (m.committedLength - entry.lastRound.committed);
    const cur = ctx.workers[w.workerId];
    ctx.workers[w.workerId] = { ...cur, calibration: calibrate(cur.calibration ?? UNCALIBRATED, 'speculative', observed, p.speculativeTpotMs, atMs) };
  }
  entry = { ...entry, lastRound: { atMs, committed: m.committedLength } };
  // A round that may finish the session is not worth a switch.
  const left = entry.pace!.maxNewTokens - (m.committedLength - entry.promptLength);
  const decode = left > m.draftTokens.length + 1 && switchAllowance(ctx.workers[w.workerId]) >= 1 && pickMode(ctx, ctx.workers[w.workerId], entry, atMs, 'speculative') === 'centralized';
  if (decode) {
    entry = { ...entry, mode: 'centralized', lastRound: undefined };
    spendSwitch(ctx, w.workerId);
  }
  ctx.sessions[s.sessionId] = entry;
  return decode;
}

/**
 * Adaptive, as a batch for worker `w` is made: the sessions it decodes that go back to their
 * devices (the batch names them; each gets one more token from the server), as many as the
 * worker's switch allowance lets. Sessions with work pending (a round just switched, a prompt)
 * are left as they are.
 */
export function handBack(ctx: SchedulerContext, w: WorkerEntry, entries: readonly PendingEntry[], nowMs: number): string[] {
  if (w.decoding === 0) return [];
  const busy = new Set(entries.map((e) => e.request.sessionId));
  const out: string[] = [];
  for (const id in ctx.sessions) {
    if (switchAllowance(ctx.workers[w.workerId]) < 1) break;
    const s = ctx.sessions[id];
    if (s.workerId !== w.workerId || s.mode !== 'centralized' || !s.pace || s.firstTokenAtMs === null || busy.has(id)) continue;
    if (pickMode(ctx, ctx.workers[w.workerId], s, nowMs, 'centralized') !== 'speculative') continue;
    ctx.sessions[id] = { ...s, mode: 'speculative', lastRound: undefined };
    spendSwitch(ctx, w.workerId);
    out.push(id);
  }
  return out;
}

/**
 * Mode switches a worker's sessions may make between two of its status reports (one per pass).
 * A switch changes the passes every other session on the worker sees, and the measurements the
 * next choice rests on: near the crossover, all of a worker's sessions moving on one slow pass
 * would land together in a state whose own measurements then hold them there.
 */
export const SWITCHES_PER_PASS = 4;

function switchAllowance(w: WorkerEntry): number {
  return w.switchAllowance ?? SWITCHES_PER_PASS;
}

function spendSwitch(ctx: SchedulerContext, workerId: string): void {
  const w = ctx.workers[workerId];
  ctx.workers[workerId] = { ...w, switchAllowance: switchAllowance(w) - 1 };
}

/** A session the worker decodes whose device gave a drafting pace (any one: decoding's prediction does not depend on it), or null. */
function decodedPaced(ctx: SchedulerContext, workerId: string): SessionEntry | null {
  for (const id in ctx.sessions) {
    const s = ctx.sessions[id];
    if (s.workerId === workerId && s.mode === 'centralized' && s.pace) return s;
  }
  return null;
}

/**
 * The worker's calibration after status `m` (policies/serving-mode.ts ModeCalibration): how long
 * a decoded session's tokens took there, against the pass predicted for the worker as it is.
 */
export function calibratedFromStatus(ctx: SchedulerContext, prev: WorkerEntry, m: WorkerStatus, atMs: number): ModeCalibration | undefined {
  const calibration = prev.calibration;
  if (!m.lastBatch || m.decodeTpotMs === undefined || (m.decoding ?? 0) === 0) return calibration;
  const paced = decodedPaced(ctx, m.workerId);
  const predicted = paced ? currentPrediction(ctx, prev, paced)?.decodeTpotMs : undefined;
  return predicted === undefined ? calibration : calibrate(ctx.workers[m.workerId]?.calibration ?? calibration ?? UNCALIBRATED, 'decode', m.decodeTpotMs, predicted, atMs);
}

