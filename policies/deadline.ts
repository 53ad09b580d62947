/**
 * Deadlines and expected value of pending server work (docs/design.md §5). All times are on the
 * scheduler's clock, in ms.
 *
 * A session meets its TPOT SLO τ when its tokens arrive no slower, on average, than one per τ
 * after the first. So the round that follows c committed generated tokens must deliver by
 * t₀ + τ·(c + 1), less the time the result takes to reach the device. A session that ran ahead
 * (several tokens accepted per round) has slack; one that fell behind has a deadline in the
 * past — it is still served, just not in preference to work that can still make it.
 */

/**
 * Deadline of a session's pending verification round: `t0 + τ·(c + 1) − returnLatency`.
 * @param firstTokenMs t₀, when the session's first target token was produced
 * @param tpotMs τ, the session's time-per-output-token SLO
 * @param committedTokens c, tokens committed after the first one (the scheduler passes committed
 *   length − prompt length − 1: the first token is t₀'s own)
 * @param returnLatencyMs time for the result to reach the device
 */
export function roundDeadlineMs(firstTokenMs: number, tpotMs: number, committedTokens: number, returnLatencyMs: number): number {
  return firstTokenMs + tpotMs * (committedTokens + 1) - returnLatencyMs;
}

/**
 * Deadline of a new session's prefill (its first token): `arrival + ttftMs − returnLatency`.
 * @param arrivalMs when the scheduler received the session's open
 */
export function prefillDeadlineMs(arrivalMs: number, ttftMs: number, returnLatencyMs: number): number {
  return arrivalMs + ttftMs - returnLatencyMs;
}

/**
 * Expected tokens a verification round commits: the target's own token (correction or bonus)
 * always, plus draft i when it and every draft before it are accepted:
 * `1 + Σ_i Π_{j≤i} a_j`, with a_j the predicted probability that draft j is accepted given
 * the ones before it were.
 * @param predictedAcceptance a_1..a_n, each clamped to [0, 1]
 */
export function expectedCommitted(predictedAcceptance: readonly number[]): number {
  let total = 1;
  let prefix = 1;
  for (const a of predictedAcceptance) {
    prefix *= Math.min(1, Math.max(0, Number.isFinite(a) ? a : 0));
    total += prefix;
  }
  return total;
}
