/**
 * The per-pass token budget of chunked prefill (docs/design.md §5): how many tokens — verified,
 * decoded and prompt-chunk tokens together — one forward pass may feed. One rule for every
 * policy, from the TPOT SLO and the server's cost as the scheduler's estimator knows it, the way
 * Sarathi-Serve picks a budget by SLO:
 *
 *   budget = the largest T whose pass (T one-token members over a typical context) the
 *            estimator predicts within half the TPOT SLO — the other half is the round's
 *            drafting, network and queueing — but never below the knee of the pass-time curve
 *            (the largest T costing at most 10 % more than a one-token pass): below it a pass
 *            costs the same anyway, so a smaller budget would only slow prompts down.
 *
 * Clamped to [MIN_PASS_TOKENS, MAX_PASS_TOKENS]. A fixed budget (config
 * `scheduler.passTokenBudget` > 0) replaces the rule.
 */
import { predictPassMs, uniformPassAggregate, type EstimatorState } from './estimator.ts';

export const MIN_PASS_TOKENS = 16;
export const MAX_PASS_TOKENS = 8_192;
/** Context of the members the rule prices a pass with, tokens. */
const TYPICAL_CONTEXT = 256;
/** A pass within this factor of a one-token pass is still in the memory-bound region. */
const KNEE_FACTOR = 1.1;
/** Share of the TPOT SLO a pass may take. */
const SLO_SHARE = 0.5;

function passMs(estimator: EstimatorState, tokens: number): number {
  return predictPassMs(estimator, uniformPassAggregate(tokens, 1, TYPICAL_CONTEXT));
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

/**
 * The budget the rule gives this server and SLO, tokens (a multiple of 16).
 * @param fixed a configured budget (> 0) that replaces the rule
 */
export function passTokenBudget(estimator: EstimatorState, tpotMs: number, fixed = 0): number {
  if (fixed > 0) return Math.max(1, Math.floor(fixed));
  const one = passMs(estimator, 1);
  const step = 16;
  const steps = MAX_PASS_TOKENS / step;
  const knee = largest(1, steps, (k) => passMs(estimator, k * step) <= KNEE_FACTOR * one);
  const slo = largest(1, steps, (k) => passMs(estimator, k * step) <= SLO_SHARE * tpotMs);
  return Math.min(MAX_PASS_TOKENS, Math.max(MIN_PASS_TOKENS, step * Math.max(knee, slo)));
}
