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
 *   α^k for a per-token agreement α, at the best k ≤ kMax.
 * The server decodes the session when that meets the SLO: its token costs the server one row of
 * a memory-bound pass and the device nothing. Otherwise the device speculates when that meets
 * the SLO with a margin, or when neither does but speculation is predicted clearly faster. As load grows the decode pass
 * slows past the SLO and new sessions go to the devices that draft fast enough, where each
 * verify pass commits several tokens per session for one read of its KV cache.
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

/** Share of the TPOT SLO predicted speculation must stay within to be chosen (room for its optimism and for the load to grow). */
export const MODE_SLO_MARGIN = 0.9;

/**
 * When neither mode is predicted within the margin, speculation must be predicted this much
 * faster to be chosen: its prediction is the optimistic one (a round's wait at the server is
 * taken as two steady passes; lone decode steps and bursts lengthen it), decoding's the one
 * that tracks the measured TPOT of decoded sessions.
 */
export const SPECULATION_EDGE = 0.8;

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
export function steadyPassMs(estimator: EstimatorState, sessions: number, L: number, round: { verifyTokens: number; outsideMs: number } | null): number {
  if (!round) return predictPassMs(estimator, withMembers(EMPTY_PASS, sessions, 1, L));
  let passMs = predictPassMs(estimator, withMembers(EMPTY_PASS, Math.min(sessions, 1), round.verifyTokens, L));
  for (let i = 0; i < 6; i++) {
    const members = Math.min(sessions, Math.max(1, Math.round((sessions * passMs) / (round.outsideMs + 2 * passMs))));
    passMs = predictPassMs(estimator, withMembers(EMPTY_PASS, members, round.verifyTokens, L));
  }
  return passMs;
}

/** @throws RangeError on a pace, agreement, SLO or count out of range */
export function chooseServingMode(x: ServingModeInput): ServingModeChoice {
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
    const outsideMs = k * d.msPerToken + x.rttMs;
    const tokensPerRound = expectedTokensPerRound(d.agreement, k);
    const passMs = steadyPassMs(x.estimator, all, L, { verifyTokens: k + 1, outsideMs });
    const tpot = (outsideMs + 2 * passMs) / tokensPerRound;
    if (tpot < speculativeTpotMs) {
      speculativeTpotMs = tpot;
      bestK = k;
    }
  }
  const limit = MODE_SLO_MARGIN * x.tpotMs;
  // Decoding's prediction tracks the measured TPOT of decoded sessions: it is held to the SLO
  // itself. Speculation's is the optimistic one: it is held to the margin.
  const mode: ServingMode = decodeTpotMs <= x.tpotMs ? 'centralized' : speculativeTpotMs <= limit || speculativeTpotMs <= SPECULATION_EDGE * decodeTpotMs ? 'speculative' : 'centralized';
  return { mode, decodeTpotMs, speculativeTpotMs, k: bestK };
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
