/**
 * The per-pass token budget of chunked prefill (docs/design.md §5): how many tokens — verified,
 * decoded and prompt-chunk tokens together — one forward pass may feed. One rule for every
 * policy, from the TPOT SLO and the server's cost, the way Sarathi-Serve picks a budget by SLO:
 *
 *   budget = the largest T whose pass (T one-token members over a typical context) costs at
 *            most the TPOT SLO — a session that gets a token per pass then meets its SLO (a
 *            mean) even when every pass is full — but never below the knee of the pass-time
 *            curve (the largest T costing at most 10 % more than a one-token pass): below it a
 *            pass costs the same anyway, so a smaller budget would only slow prompts down.
 *
 * It is a safe default, not the best budget of every setting: only some passes carry prompt
 * chunks, so a larger budget can serve more devices at a lenient SLO (`wisp sim
 * --pass-token-budget N` compares).
 *
 * The server's cost is the pass-time curve a worker reports (`passCurveMs`: a serving engine
 * knows its own), else the scheduler's estimator. The estimator alone is a poor judge here: it
 * learns only the pass sizes it sees, so a budget taken from it shrinks the passes, and its
 * picture of larger ones drifts — a loop that ends at the smallest budget.
 *
 * Prompts must still make their TTFT deadlines. A budget that suits the TPOT SLO can be too small
 * to feed the prompts that arrive (a 7B model on an A40 at 60 ms: 96 tokens, most of them taken by
 * the pass's decodes or verifications, so prompts queue without bound and every session misses its
 * TTFT). So, given the load — the pass's other tokens and the waiting prompts with their
 * deadlines — the budget is the smallest one at or above the rule's that lets every prompt still
 * able to make its deadline finish by it, earliest deadline first, each pass feeding
 * (budget − other tokens) prompt tokens. When no budget does (none up to the pass that would
 * outlast the earliest deadline), the rule's budget stands: growing the passes would slow every
 * session for prompts that miss anyway.
 *
 * Clamped to [MIN_PASS_TOKENS, MAX_PASS_TOKENS]. A fixed budget (config
 * `scheduler.passTokenBudget` > 0) replaces the rule.
 */
import { predictPassMs, uniformPassAggregate, type EstimatorState } from './estimator.ts';
import type { BatchShape } from './types.ts';

export const MIN_PASS_TOKENS = 16;
export const MAX_PASS_TOKENS = 8_192;
/** Context of the members the rule prices a pass with, tokens. */
export const CURVE_CONTEXT = 256;
/** Token counts of a reported pass-time curve: 16, 32, …, 8,192. */
export const CURVE_TOKENS: readonly number[] = Array.from({ length: 10 }, (_, i) => 16 * 2 ** i);
/** A pass within this factor of a one-token pass is still in the memory-bound region. */
const KNEE_FACTOR = 1.1;
/** Share of the TPOT SLO a pass may take: all of it — a session that gets one token per pass, every pass full, still meets its mean. */
const SLO_SHARE = 1;

/** The members of a curve point: `tokens` one-token members over CURVE_CONTEXT cached. */
export function curveShapes(tokens: number): BatchShape[] {
  return Array.from({ length: tokens }, () => ({ n: 1, L: CURVE_CONTEXT }));
}

/** A server's pass-time curve at CURVE_TOKENS, from any pass-time function (workers report it). */
export function passCurveMs(passMs: (shapes: BatchShape[]) => number): number[] {
  return CURVE_TOKENS.map((t) => passMs(curveShapes(t)));
}

/** Pass time at T tokens on a reported curve: linear between its points, proportional past its end. */
function onCurve(curveMs: readonly number[], T: number): number {
  const xs = CURVE_TOKENS;
  if (T <= xs[0]) return curveMs[0];
  for (let i = 1; i < xs.length; i++) {
    if (T <= xs[i]) return curveMs[i - 1] + ((T - xs[i - 1]) / (xs[i] - xs[i - 1])) * (curveMs[i] - curveMs[i - 1]);
  }
  return curveMs[xs.length - 1] * (T / xs[xs.length - 1]);
}

/** The largest T in [lo, hi] with ok(T) (ok monotone: true up to some T), or lo − 1 when none. */
function largest(lo: number, hi: number, ok: (t: number) => boolean): number {
  if (!ok(lo)) return lo - 1;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (ok(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** What the pass will carry besides prompt chunks, and the prompts waiting for it. */
export interface BudgetLoad {
  /** Tokens of the pass that are not prompt chunks: decode steps sharing it, verifications waiting. */
  otherTokens: number;
  /** Prompts waiting: tokens each has left, and its TTFT deadline (scheduler clock, ms). */
  prompts: readonly { tokensLeft: number; deadlineMs: number }[];
  nowMs: number;
}

/**
 * The budget the rule gives this server, SLO and load, tokens (a multiple of 16).
 * @param server the worker's reported curve (CURVE_TOKENS points), or the estimator to ask
 * @param fixed a configured budget (> 0) that replaces the rule
 * @param load the pass's other tokens and the waiting prompts (absent: the SLO rule alone)
 */
export function passTokenBudget(server: readonly number[] | EstimatorState, tpotMs: number, fixed = 0, load?: BudgetLoad): number {
  if (fixed > 0) return Math.max(1, Math.floor(fixed));
  const passMs = Array.isArray(server)
    ? (T: number) => onCurve(server as readonly number[], T)
    : (T: number) => predictPassMs(server as EstimatorState, uniformPassAggregate(T, 1, CURVE_CONTEXT));
  const one = passMs(MIN_PASS_TOKENS);
  const step = 16;
  const steps = MAX_PASS_TOKENS / step;
  const knee = largest(1, steps, (k) => passMs(k * step) <= KNEE_FACTOR * one);
  const slo = largest(1, steps, (k) => passMs(k * step) <= SLO_SHARE * tpotMs);
  const base = Math.min(steps, Math.max(1, knee, slo));
  if (!load || load.prompts.length === 0) return base * step;
  // A prompt already out of time — even one pass with all of it would end past its deadline —
  // cannot be helped by a larger pass: it does not set the budget.
  const viable = load.prompts
    .filter((p) => p.deadlineMs - load.nowMs >= passMs(Math.min(MAX_PASS_TOKENS, load.otherTokens + p.tokensLeft)))
    .sort((a, b) => a.deadlineMs - b.deadlineMs);
  const keeps = (k: number) => promptsKeepDeadlines(k * step, passMs, load.otherTokens, viable, load.nowMs);
  if (viable.length === 0) return base * step;
  // The smallest budget above the rule's that keeps them, up to the pass that would outlast the
  // earliest deadline (no larger one can keep that prompt).
  const soonestMs = viable[0].deadlineMs - load.nowMs;
  for (let k = base; k <= steps && passMs(k * step) <= soonestMs; k++) if (keeps(k)) return k * step;
  return base * step;
}

/**
 * Whether passes of `budget` tokens, back to back, each feeding what `otherTokens` leave of it,
 * finish every prompt (sorted by deadline) by its deadline, earliest deadline first.
 */
function promptsKeepDeadlines(budget: number, passMs: (T: number) => number, otherTokens: number, prompts: readonly { tokensLeft: number; deadlineMs: number }[], nowMs: number): boolean {
  const perPass = budget - otherTokens;
  if (perPass < MIN_PASS_TOKENS) return false;
  const t = passMs(budget);
  let due = 0;
  for (const p of prompts) {
    due += p.tokensLeft;
    if (due > perPass * Math.floor((p.deadlineMs - nowMs) / t)) return false;
  }
  return true;
}
