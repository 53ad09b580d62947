/**
 * The adaptive policy's choice of how a new session is served (docs/design.md §5b): decoded by
 * the server in continuous batching, or speculated on its device and verified in batches.
 *
 * Pure: a function of the session's device (drafting pace, round trip, draft agreement), its
 * TPOT SLO and the worker's state (estimator, sessions there). Each mode's time per output token
 * is predicted from the estimator for the worker's sessions all served that way:
 * - server decoding: the pass every decoding session's token comes out of — a decode row per
 *   session and the prompt chunks they bring;
 * - edge speculation: a round of k drafts, the round trip and the verify pass (and as long
 *   again waiting in the queue, a pass in flight), over the tokens a round commits, 1 + α + … +
 *   α^k for a per-token agreement α, at the best k ≤ kMax; a device that drafts ahead while its
 *   round is away (pipelined) saves the drafts its look-ahead made when the next round keeps them.
 * The server decodes the session when that meets the SLO: its token costs the server one row of
 * a memory-bound pass and the device nothing. Otherwise the device speculates when that is
 * predicted faster (pickServingMode). As
 * load grows the decode pass slows past the SLO and sessions go to the devices that draft fast
 * enough, where each verify pass commits several tokens per session for one read of its KV cache.
 * The scheduler revisits the choice at every round (pickServingMode's thresholds keep it from
 * flipping), each prediction scaled by what the worker measured of it (ModeCalibration).
 */
import { addShape, EMPTY_PASS, predictPassMs, type EstimatorState, type PassAggregate } from './estimator.ts';
import type { RequestedMode, ServingMode } from '../protocol/messages.ts';
import type { PolicyName } from './types.ts';

/** What the device says of itself in its SessionOpen (protocol `drafting`). */
export interface DraftingPace {
  /** Time to draft one token, ms. */
  msPerToken: number;
  /** Expected per-token agreement of its draft with the target, in [0, 1). */
  agreement: number;
  /** Most tokens it drafts per round. */
  kMax: number;
  /** It drafts the next round while a round is verified (pipelined drafting). */
  pipelined?: boolean;
}

/**
 * A round's time outside the server, ms: k drafts and the round trip — less, with pipelined
 * drafting, the drafts a look-ahead made while the round was away (rtt + two passes), which the
 * next round keeps when the whole draft and the target's own token were accepted (α^(k+1)).
 */
export function roundOutsideMs(d: DraftingPace, k: number, rttMs: number, passMs: number): number {
  const plain = k * d.msPerToken + rttMs;
  if (!d.pipelined) return plain;
  const a = Math.min(Math.max(d.agreement, 0), 0.999);
  return plain - a ** (k + 1) * Math.min(k * d.msPerToken, rttMs + 2 * passMs);
}

export interface ServingModeInput {
  drafting: DraftingPace;
  rttMs: number;
  tpotMs: number;
  estimator: EstimatorState;
  /** The worker's other sessions, however served (each mode is judged for all of them served that way). */
  otherSessions: number;
  /** A typical cached context of the worker's sessions (a prompt and half an answer), tokens. */
  contextTokens: number;
  /** This session's prompt and most new tokens. */
  promptTokens: number;
  maxNewTokens: number;
}

export interface ServingModeChoice {
  mode: ServingMode;
  /** Predicted time per output token when the server decodes it, ms. */
  decodeTpotMs: number;
  /** Predicted time per output token when its device speculates (at `k`), ms. */
  speculativeTpotMs: number;
  k: number;
}

/** Share of the TPOT SLO decoding must be predicted within for a speculating session to go back to the server. */
export const MODE_SLO_MARGIN = 0.9;

/** Where a session's own mode misses the SLO, how much faster the other must be predicted for it to switch. */
export const SWITCH_EDGE = 0.9;

/** Tokens a round of k drafts commits on average at per-token agreement α: 1 + α + … + α^k. */
export function expectedTokensPerRound(agreement: number, k: number): number {
  const a = Math.min(Math.max(agreement, 0), 0.999);
  return (1 - a ** (k + 1)) / (1 - a);
}

/** `a` with `count` more members of n tokens over L cached. */
function withMembers(a: PassAggregate, count: number, n: number, L: number): PassAggregate {
  let out = a;
  for (let i = 0; i < count; i++) out = addShape(out, { n, L });
  return out;
}

/**
 * The pass the worker settles into, ms, with its `sessions` all served one way:
 * - decoded (`round` null): a decode row per session in every pass;
 * - speculated: a session's round is `round.outsideMs` away (drafting, the round trip) and about
 *   two passes at the server (waiting for one, then in it), R = outside + 2P, and it sends one
 *   verification per round, so a pass holds the sessions × P / R that arrived during the pass
 *   before (a few fixed-point steps: the pass and its members depend on each other).
 * Prompts are left out: with chunked prefill their chunks fill what the pass token budget leaves
 * beside these rows, and the budget keeps a pass within the TPOT SLO (policies/pass-budget.ts),
 * so prompts cost TTFT rather than lengthen the pass. (Pricing the worker's measured prompt rate
 * into every pass instead over-predicted decoding at high load — 120 ms against a measured
 * 95 ms on A100/34b at 96 devices — and sent sessions to speculation where decoding would have
 * served them.)
 */
export function steadyPassMs(estimator: EstimatorState, sessions: number, L: number, round: { verifyTokens: number; outsideMs: number } | null, decodeRows = 0): number {
  if (!round) return predictPassMs(estimator, withMembers(EMPTY_PASS, sessions + decodeRows, 1, L));
  // `decodeRows` more sessions decoded by the server: a row each in every pass beside the verifications.
  const base = withMembers(EMPTY_PASS, decodeRows, 1, L);
  let passMs = predictPassMs(estimator, withMembers(base, Math.min(sessions, 1), round.verifyTokens, L));
  for (let i = 0; i < 6; i++) {
    const members = Math.min(sessions, Math.max(1, Math.round((sessions * passMs) / (round.outsideMs + 2 * passMs))));
    passMs = predictPassMs(estimator, withMembers(base, members, round.verifyTokens, L));
  }
  return passMs;
}

/**
 * Both modes' predicted time per output token on the worker as it is — `decoded` of its
 * `sessions` decoded by the server, the rest speculating at k drafts a round — which is what the
 * times measured there are compared with (ModeCalibration): a decoded session gets a token per
 * pass, a speculating one a round's tokens per round.
 */
export function currentModeTpots(estimator: EstimatorState, sessions: number, decoded: number, L: number, pace: DraftingPace, rttMs: number, k: number): { decodeTpotMs: number; speculativeTpotMs: number } {
  const speculating = Math.max(0, sessions - decoded);
  let outsideMs = roundOutsideMs(pace, k, rttMs, 0);
  let passMs = speculating > 0 ? steadyPassMs(estimator, speculating, L, { verifyTokens: k + 1, outsideMs }, decoded) : steadyPassMs(estimator, decoded, L, null);
  outsideMs = roundOutsideMs(pace, k, rttMs, passMs);
  if (speculating > 0) passMs = steadyPassMs(estimator, speculating, L, { verifyTokens: k + 1, outsideMs }, decoded);
  return { decodeTpotMs: passMs, speculativeTpotMs: (outsideMs + 2 * passMs) / expectedTokensPerRound(pace.agreement, k) };
}

/**
 * How far each mode's prediction is off on a worker, as measured there: observed ÷ predicted
 * time per output token for the worker as it is (currentModeTpots), an EWMA per mode (1 = the
 * estimator is right). Decoding's is measured from the time between a decoded session's tokens
 * (WorkerStatus.decodeTpotMs), which the prediction leaves prompts out of; speculation's from the
 * time between a speculating session's rounds over the tokens each committed, which it prices
 * at two steady passes a round, with no pipelined drafting.
 */
export interface ModeCalibration {
  decode: number;
  speculative: number;
  /** When each was last observed (scheduler clock), ms; a ratio not observed since fades back to 1 (CALIBRATION_FADE_MS). */
  decodeAtMs?: number;
  speculativeAtMs?: number;
}

export const UNCALIBRATED: ModeCalibration = { decode: 1, speculative: 1 };

/**
 * Time constant over which a ratio no session measures any more fades back to 1, ms: one learnt
 * in a burst (the first rounds of a run wait behind its first prompts) must not keep a mode out
 * of use for good, as no session in that mode would ever correct it.
 */
export const CALIBRATION_FADE_MS = 5_000;

/** The ratio of `mode` as of `nowMs`: the last one, faded toward 1 by the time since it was observed. */
export function calibrationAt(cal: ModeCalibration, mode: 'decode' | 'speculative', nowMs: number): number {
  const at = mode === 'decode' ? cal.decodeAtMs : cal.speculativeAtMs;
  const r = cal[mode];
  if (at === undefined || nowMs <= at) return r;
  return 1 + (r - 1) * Math.exp(-(nowMs - at) / CALIBRATION_FADE_MS);
}

/** Weight of one observation in a calibration's EWMA, and the range a ratio is kept in. */
export const CALIBRATION_WEIGHT = 0.1;
const CALIBRATION_RANGE: [number, number] = [0.5, 4];

/** `cal` with one more observation of `mode` at `nowMs`: observed and predicted time per output token, ms. */
export function calibrate(cal: ModeCalibration, mode: 'decode' | 'speculative', observedMs: number, predictedMs: number, nowMs: number): ModeCalibration {
  if (!(observedMs > 0) || !(predictedMs > 0) || !Number.isFinite(observedMs) || !Number.isFinite(predictedMs)) return cal;
  const ratio = Math.min(CALIBRATION_RANGE[1], Math.max(CALIBRATION_RANGE[0], observedMs / predictedMs));
  const value = (1 - CALIBRATION_WEIGHT) * calibrationAt(cal, mode, nowMs) + CALIBRATION_WEIGHT * ratio;
  return mode === 'decode' ? { ...cal, decode: value, decodeAtMs: nowMs } : { ...cal, speculative: value, speculativeAtMs: nowMs };
}

/**
 * The mode for a session from each mode's predicted time per output token (calibrated where
 * measured), its SLO and — when it is being revisited — the mode it is in now:
 * - a new or decoded session is decoded while decoding is predicted within the SLO; past it (a
 *   decoded session misses its SLO for sure) it speculates when that is predicted clearly
 *   (SWITCH_EDGE) faster — what speculation then achieves is measured and corrects the next
 *   choice (ModeCalibration);
 * - a speculating session goes to the server when decoding is predicted within MODE_SLO_MARGIN
 *   of the SLO (a row of a memory-bound pass costs the server less than a verification), or
 *   when its speculation is predicted past the SLO and decoding clearly faster.
 * Between the thresholds nothing moves, so sessions do not flip at every round while the load
 * sits near the crossover.
 */
export function pickServingMode(decodeTpotMs: number, speculativeTpotMs: number, tpotMs: number, current?: ServingMode): ServingMode {
  if (current === 'speculative') {
    const back = decodeTpotMs <= MODE_SLO_MARGIN * tpotMs || (speculativeTpotMs > tpotMs && decodeTpotMs <= SWITCH_EDGE * speculativeTpotMs);
    return back ? 'centralized' : 'speculative';
  }
  return decodeTpotMs <= tpotMs || speculativeTpotMs > SWITCH_EDGE * decodeTpotMs ? 'centralized' : 'speculative';
}

/** A prediction (predictServingModes) scaled by the worker's calibration as of `nowMs`, and the mode pickServingMode picks on it. */
export function calibratedChoice(p: ServingModeChoice, tpotMs: number, calibration: ModeCalibration, nowMs: number, current?: ServingMode): ServingModeChoice {
  const decodeTpotMs = p.decodeTpotMs * calibrationAt(calibration, 'decode', nowMs);
  const speculativeTpotMs = p.speculativeTpotMs * calibrationAt(calibration, 'speculative', nowMs);
  return { mode: pickServingMode(decodeTpotMs, speculativeTpotMs, tpotMs, current), decodeTpotMs, speculativeTpotMs, k: p.k };
}

/** @throws RangeError on a pace, agreement, SLO or count out of range */
export function chooseServingMode(x: ServingModeInput, calibration: ModeCalibration = UNCALIBRATED, current?: ServingMode, nowMs = 0): ServingModeChoice {
  return calibratedChoice(predictServingModes(x), x.tpotMs, calibration, nowMs, current);
}

/**
 * Each mode's predicted time per output token for the session, uncalibrated (`mode` is the
 * admission rule's pick on these). Every call runs the estimator a few dozen times: callers on a
 * hot path keep the answer while the worker's session count stands (the scheduler does).
 * @throws RangeError on a pace, agreement, SLO or count out of range
 */
export function predictServingModes(x: ServingModeInput): ServingModeChoice {
  const d = x.drafting;
  if (!(d.msPerToken >= 0) || !(d.agreement >= 0 && d.agreement < 1) || !(d.kMax >= 1)) throw new RangeError(`drafting pace out of range: ${JSON.stringify(d)}`);
  if (!(x.tpotMs > 0) || !(x.rttMs >= 0) || !(x.otherSessions >= 0) || !(x.promptTokens >= 1) || !(x.maxNewTokens >= 1)) throw new RangeError('tpotMs, rttMs, session counts, prompt rate or lengths out of range');
  const L = Math.max(1, Math.round(x.contextTokens));
  // Each mode is judged as if every session on the worker were served that way: the sessions
  // after this one follow the same rule, so within a session's lifetime that is where the worker
  // goes. Judged against the split as it stands, each newcomer would join the slow decode pass
  // of the many before it, even where all of them speculating would serve everyone in time.
  const all = x.otherSessions + 1;
  const decodeTpotMs = steadyPassMs(x.estimator, all, L, null);
  let speculativeTpotMs = Infinity;
  let bestK = 1;
  for (let k = 1; k <= d.kMax; k++) {
    const tokensPerRound = expectedTokensPerRound(d.agreement, k);
    // The look-ahead's saving depends on the pass, the pass on the rounds' pace: one more step.
    let passMs = steadyPassMs(x.estimator, all, L, { verifyTokens: k + 1, outsideMs: roundOutsideMs(d, k, x.rttMs, 0) });
    const outsideMs = roundOutsideMs(d, k, x.rttMs, passMs);
    passMs = steadyPassMs(x.estimator, all, L, { verifyTokens: k + 1, outsideMs });
    const tpot = (outsideMs + 2 * passMs) / tokensPerRound;
    if (tpot < speculativeTpotMs) {
      speculativeTpotMs = tpot;
      bestK = k;
    }
  }
  return { mode: pickServingMode(decodeTpotMs, speculativeTpotMs, x.tpotMs), decodeTpotMs, speculativeTpotMs, k: bestK };
}

/** What a device has seen of its draft's agreement: tokens accepted, and rounds ended by a rejection. */
export interface AgreementCounts {
  accepted: number;
  rejected: number;
}

/** The agreement a device assumes before it has verified anything, and how many tokens that prior weighs. */
export const PRIOR_AGREEMENT = 0.7;
export const PRIOR_AGREEMENT_TOKENS = 8;

export const NO_AGREEMENT_SEEN: AgreementCounts = { accepted: 0, rejected: 0 };

/** One verified round folded in: `accepted` of `verified` drafts, a rejection when fewer than all were accepted. */
export function countAgreement(c: AgreementCounts, accepted: number, verified: number): AgreementCounts {
  const a = Math.max(0, Math.min(accepted, verified));
  return { accepted: c.accepted + a, rejected: c.rejected + (a < verified ? 1 : 0) };
}

/**
 * The per-token agreement α of a geometric acceptance model (each draft accepted with α given
 * the ones before were): accepted / (accepted + rejections), pulled toward the prior while few
 * tokens were seen: the pair's agreement measured offline where the caller knows it (the
 * simulator's device classes), else PRIOR_AGREEMENT. A device the server decodes for learns
 * nothing, so the prior matters. Capped below 1 (DraftingPaceSchema).
 */
export function agreementOf(c: AgreementCounts, prior = PRIOR_AGREEMENT): number {
  const a = (c.accepted + prior * PRIOR_AGREEMENT_TOKENS) / (c.accepted + c.rejected + PRIOR_AGREEMENT_TOKENS);
  return Math.min(0.999, Math.max(0, a));
}

/** How a policy's devices ask to be served: the server decodes (centralized), the scheduler picks (adaptive), or they speculate. */
export function requestedModeOf(policy: PolicyName): RequestedMode {
  return policy === 'centralized' ? 'centralized' : policy === 'adaptive' ? 'adaptive' : 'speculative';
}

/** Whether a policy runs WISP's extras (pipelined drafting, truncation): WISP, and adaptive, which batches as WISP does. */
export function hasWispExtras(policy: PolicyName): boolean {
  return policy === 'wisp' || policy === 'adaptive';
}
