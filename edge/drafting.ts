/**
 * The drafting rules of an edge device, shared by the live drafter (actors/edge/drafter.ts) and
 * the simulator (sim/engine.ts): which speculation controller a policy runs, when a drafted
 * token is kept and drafting goes on, and when pipelined drafting's look-ahead is reused.
 * Pure: the caller drafts the tokens (a real draft model, or the simulator's acceptance model).
 */
import type { SparseDist } from '../inference/types.ts';
import type { DraftOutput } from '../machines/edge-session.ts';
import { createControllerState, decideDraftStep, predictAcceptance, type ControllerState, type DraftStep } from '../policies/controller.ts';
import type { ControllerKnobs } from '../config/schema.ts';
import type { DraftTokenFeatures, PolicyName } from '../policies/types.ts';

/**
 * The speculation controller a policy's devices run: SLED's confidence threshold, else WISP's
 * learned predictor (a centralized device never drafts; its controller only gives K_max).
 */
export function controllerFor(policy: PolicyName, k: ControllerKnobs): ControllerState {
  return policy === 'sled'
    ? createControllerState({ kind: 'sled', kMax: k.kMax, confidenceThreshold: k.threshold })
    : createControllerState({ kind: 'wisp', kMax: k.kMax, minThreshold: k.minAcceptance });
}

/** The controller as drafting sees it. */
export interface DraftStopRule {
  /** Predicted probability that this token is accepted (given the earlier ones were). */
  predict(features: DraftTokenFeatures): number;
  /** What to do with the token just drafted, given the predictions of those kept before it. */
  decide(prediction: number, features: DraftTokenFeatures, keptPredictions: readonly number[]): DraftStep;
}

/**
 * The stop rule of a device: its controller (read at each token: it learns between rounds) and
 * the rate decision's inputs — the device's time per token and its current round overhead.
 */
export function stopRuleOf(controller: () => ControllerState, draftMsPerToken: number, roundOverheadMs: () => number): DraftStopRule {
  return {
    predict: (f) => predictAcceptance(controller(), f),
    decide: (prediction, f, keptPredictions) => decideDraftStep(controller(), { prediction, position: f.position, keptPredictions, draftMsPerToken, roundOverheadMs: roundOverheadMs() }),
  };
}

/** One drafted token as the rules see it. */
export interface DraftedToken {
  token: number;
  /** The draft's statistics of it (its position in the round is set when it is judged). */
  features: Omit<DraftTokenFeatures, 'position'>;
  /** Device time it took, ms. */
  ms: number;
  /** When sampling: the renormalised top-k it was drawn from. */
  dist?: SparseDist;
}

/** An empty draft, to fill with keepDraftedToken. */
export function emptyDraft(): DraftOutput {
  return { tokens: [], predictedAcceptance: [], features: [], draftMsPerToken: [] };
}

/**
 * Adds `t` at `position` of the round to `out` (and its distribution to `dists`) unless the
 * controller drops it — then its time counts as discarded. Returns whether drafting may go on:
 * false when the controller stops or the token is EOS.
 */
export function keepDraftedToken(out: DraftOutput, t: DraftedToken, position: number, rule: DraftStopRule, eosTokenId: number | null, dists?: SparseDist[]): boolean {
  const features: DraftTokenFeatures = { ...t.features, position };
  const prediction = rule.predict(features);
  const step = rule.decide(prediction, features, out.predictedAcceptance);
  if (step === 'dropAndStop') {
    // The controller expects a rejection: drop the token; its time is wasted.
    out.discardedDraftMs = (out.discardedDraftMs ?? 0) + t.ms;
    return false;
  }
  out.tokens.push(t.token);
  out.features.push(features);
  out.predictedAcceptance.push(prediction);
  out.draftMsPerToken.push(t.ms);
  if (dists && t.dist) dists.push(t.dist);
  return step === 'keep' && !(eosTokenId !== null && t.token === eosTokenId);
}

/** A finished look-ahead as the reuse rule sees it. */
export interface LookaheadTokens<T extends DraftedToken = DraftedToken> {
  /** Tokens drafted past the draft under verification. */
  count: number;
  /** Device time of all of them, ms. */
  totalMs: number;
  /** The target accepted the whole draft and its bonus token equals the first look-ahead token. */
  matches: boolean;
  /** The i-th look-ahead token (0 = the bonus guess); asked for only as far as it is reused. */
  tokenAt(i: number): T;
}

/**
 * Pipelined drafting's reuse rule: when the look-ahead matches, the tokens after the bonus
 * guess open the next round's draft (up to `maxDraft`), each judged by `keep` at its new
 * position; drafting goes on fresh only if all of them were kept. Every look-ahead token not
 * used (including one the controller dropped) is wasted time.
 */
export function reuseLookahead<T extends DraftedToken>(la: LookaheadTokens<T>, maxDraft: number, out: DraftOutput, keep: (t: T, position: number) => boolean): { carryOn: boolean; discardedMs: number } {
  let carryOn = maxDraft > 0;
  let usedMs = 0;
  if (la.matches) {
    usedMs += la.tokenAt(0).ms;
    const reusable = Math.min(la.count - 1, maxDraft);
    for (let i = 0; i < reusable && carryOn; i++) {
      const t = la.tokenAt(1 + i);
      const before = out.tokens.length;
      carryOn = keep(t, before);
      if (out.tokens.length > before) usedMs += t.ms;
    }
    if (out.tokens.length < reusable) carryOn = false;
  }
  return { carryOn, discardedMs: la.totalMs - usedMs };
}
