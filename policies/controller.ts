/**
 * Speculation controller (device side, docs/design.md §5): decides after each drafted token whether to
 * keep it and whether to draft another. Tokens drafted past the first one the target rejects
 * are wasted device time, so drafting should stop just before the likely first rejection —
 * and earlier on a slow device, where each token costs more of the round.
 *
 * Two controllers behind one interface:
 * - `wisp` (learned): a logistic regression on the draft's own statistics of the token
 *   (top-1 probability, top-1 − top-2 margin, entropy, logit spread, position) estimates
 *   P(accepted | the earlier drafts were accepted). It starts from hand-set weights that rise
 *   with confidence and learns online (SGD on log-loss, fixed rate) from every verify result.
 *   Whether to draft on is a rate decision (`decideDraftStep`): another token must add more
 *   expected committed tokens per ms of device time than the round delivers on average.
 * - `sled` (baseline): stop when the token's top-1 probability is below a confidence threshold,
 *   or at K_max. No learning; its acceptance estimate is the top-1 probability itself.
 *
 * Pure functions of plain-data state: the device actor and the simulator share them.
 */
import { PolicyConfigError } from './errors.ts';
import type { DraftTokenFeatures } from './types.ts';

/** Feature order of the logistic model: bias, top1Prob, margin, entropy/4, logitSpread/20, position/8. */
export const CONTROLLER_FEATURES = ['bias', 'top1Prob', 'margin', 'entropy', 'logitSpread', 'position'] as const;

/** Default weights: monotone in confidence — ≈ 0.93 at top-1 0.95, ≈ 0.43 at 0.5, ≈ 0.10 at 0.2. */
export const DEFAULT_CONTROLLER_WEIGHTS: readonly number[] = [-2.0, 4.0, 1.0, -1.0, 0.0, -0.2];

export interface WispControllerState {
  kind: 'wisp';
  /** Logistic weights, in CONTROLLER_FEATURES order (on the scaled features). */
  weights: number[];
  learningRate: number;
  /** L2 pull toward zero per update (not on the bias). */
  l2: number;
  /** A drafted token predicted below this is dropped (it would only lengthen verification). */
  minThreshold: number;
  /** Most drafts per round. */
  kMax: number;
  /** Labelled tokens learnt from so far. */
  updates: number;
}

export interface SledControllerState {
  kind: 'sled';
  /** Stop when the token's top-1 probability is below this. */
  confidenceThreshold: number;
  kMax: number;
}

export type ControllerState = WispControllerState | SledControllerState;

export type ControllerOptions =
  | ({ kind: 'wisp' } & Partial<Omit<WispControllerState, 'kind' | 'updates'>>)
  | ({ kind: 'sled' } & Partial<Omit<SledControllerState, 'kind'>>);

/**
 * A fresh controller. WISP defaults: weights DEFAULT_CONTROLLER_WEIGHTS, learningRate 0.05,
 * l2 0, minThreshold 0.2, kMax 8. SLED defaults:
 * confidenceThreshold 0.5, kMax 8.
 * @throws PolicyConfigError on out-of-range options
 */
export function createControllerState(opts: ControllerOptions = { kind: 'wisp' }): ControllerState {
  const kMax = opts.kMax ?? 8;
  if (!Number.isInteger(kMax) || kMax < 0) throw new PolicyConfigError(`kMax must be an integer ≥ 0, got ${kMax}`);
  if (opts.kind === 'sled') {
    const confidenceThreshold = opts.confidenceThreshold ?? 0.5;
    checkProbability('confidenceThreshold', confidenceThreshold);
    return { kind: 'sled', confidenceThreshold, kMax };
  }
  const weights = opts.weights ? [...opts.weights] : [...DEFAULT_CONTROLLER_WEIGHTS];
  if (weights.length !== CONTROLLER_FEATURES.length || weights.some((w) => !Number.isFinite(w))) {
    throw new PolicyConfigError(`weights must be ${CONTROLLER_FEATURES.length} finite numbers (${CONTROLLER_FEATURES.join(', ')})`);
  }
  const state: WispControllerState = {
    kind: 'wisp',
    weights,
    learningRate: opts.learningRate ?? 0.05,
    l2: opts.l2 ?? 0,
    minThreshold: opts.minThreshold ?? 0.2,
    kMax,
    updates: 0,
  };
  checkProbability('minThreshold', state.minThreshold);
  if (!(state.learningRate >= 0)) throw new PolicyConfigError(`learningRate must be ≥ 0, got ${state.learningRate}`);
  if (!(state.l2 >= 0)) throw new PolicyConfigError(`l2 must be ≥ 0, got ${state.l2}`);
  return state;
}

/** The scaled feature vector the logistic model reads (bias first). */
export function controllerFeatureVector(f: DraftTokenFeatures): number[] {
  return [1, f.top1Prob, f.margin, f.entropy / 4, f.logitSpread / 20, f.position / 8].map((v) => (Number.isFinite(v) ? v : 0));
}

/** Predicted probability that this drafted token is accepted, given the earlier ones were. */
export function predictAcceptance(state: ControllerState, f: DraftTokenFeatures): number {
  if (state.kind === 'sled') return Math.min(1, Math.max(0, f.top1Prob));
  return sigmoid(dot(state.weights, controllerFeatureVector(f)));
}

/**
 * Learns from one verified round (pure: returns a new state). Draft i (0-based) is labelled
 * accepted when i < accepted, rejected when i = accepted; later drafts and drafts beyond
 * `verified` (the scheduler truncated them) were never judged and teach nothing.
 * @param features the round's drafted tokens' features, in order
 * @param accepted how many drafts the target accepted
 * @param verified how many drafts the target judged (default: all)
 */
export function learnFromRound(state: ControllerState, features: readonly DraftTokenFeatures[], accepted: number, verified = features.length): ControllerState {
  if (state.kind === 'sled') return state;
  const judged = Math.min(verified, features.length);
  let w = state.weights;
  let updates = state.updates;
  for (let i = 0; i < judged && i <= accepted; i++) {
    const label = i < accepted ? 1 : 0;
    const x = controllerFeatureVector(features[i]);
    const p = sigmoid(dot(w, x));
    // Log-loss gradient step; L2 shrinks the non-bias weights.
    w = w.map((wj, j) => wj + state.learningRate * ((label - p) * x[j] - (j === 0 ? 0 : state.l2 * wj)));
    updates++;
  }
  return { ...state, weights: w, updates };
}

function checkProbability(name: string, v: number): void {
  if (!(v >= 0 && v <= 1)) throw new PolicyConfigError(`${name} must be in [0, 1], got ${v}`);
}

function dot(a: readonly number[], b: readonly number[]): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function sigmoid(z: number): number {
  return z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z));
}

/** What the drafter knows when it must decide about the token it just drafted. */
export interface DraftStepQuery {
  /** Predicted acceptance of the token just drafted (given the earlier ones were accepted). */
  prediction: number;
  /** Its 0-based position in the round. */
  position: number;
  /** Predictions of the tokens already kept this round, in order. */
  keptPredictions: readonly number[];
  /** The device's time per drafted token, ms. */
  draftMsPerToken: number;
  /** Expected time from sending the round to its result (network, queueing, verification), ms. */
  roundOverheadMs: number;
}

/** keep: keep the token and draft on; keepAndStop: keep it and send; dropAndStop: drop it and send. */
export type DraftStep = 'keep' | 'keepAndStop' | 'dropAndStop';

/**
 * The drafting decision after each drafted token (pure).
 *
 * - The first token of a round is always kept: the round happens anyway, and its verdict is
 *   the label that keeps the controller learning.
 * - SLED: keep and go on while the token's top-1 probability reaches the confidence threshold;
 *   otherwise drop it and send.
 * - WISP: drop a token predicted below `minThreshold` (it would only make verification longer).
 *   Otherwise keep it, and draft another only if that pays: with P_i the probability that the
 *   first i drafts are all accepted, a round of k drafts commits E_k = 1 + Σ_{i≤k} P_i tokens in
 *   T_k = k·d + O ms (d per drafted token, O the round's overhead). Drafting one more adds about
 *   P_k·a_k (the next token predicted like this one) for d more ms, so go on while
 *   P_k·a_k / d ≥ E_k / T_k. A slow device stops earlier, a busy server (large O) makes longer
 *   drafts worth it, and a confident run of tokens drafts on — this replaces a fixed threshold.
 * - K_max is the caller's bound (it never drafts past it).
 */
export function decideDraftStep(state: ControllerState, q: DraftStepQuery): DraftStep {
  const atLimit = q.position + 1 >= state.kMax;
  if (state.kind === 'sled') {
    if (q.position > 0 && !(q.prediction >= state.confidenceThreshold)) return 'dropAndStop';
    return atLimit || !(q.prediction >= state.confidenceThreshold) ? 'keepAndStop' : 'keep';
  }
  if (q.position > 0 && !(q.prediction >= state.minThreshold)) return 'dropAndStop';
  if (atLimit) return 'keepAndStop';
  let p = 1;
  let expected = 1;
  for (const a of [...q.keptPredictions, q.prediction]) {
    p *= clamp01(a);
    expected += p;
  }
  const d = Math.max(1e-6, q.draftMsPerToken);
  const roundMs = (q.keptPredictions.length + 1) * d + Math.max(0, q.roundOverheadMs);
  return p * clamp01(q.prediction) * roundMs >= expected * d ? 'keep' : 'keepAndStop';
}

function clamp01(x: number): number {
  return Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0;
}
