/**
 * Speculation controller (device side, DESIGN §5): decides after each drafted token whether to
 * keep drafting. Tokens drafted past the first one the target rejects are wasted device time,
 * so drafting should stop just before the likely first rejection.
 *
 * Two controllers behind one interface:
 * - `wisp` (learned): a logistic regression on the draft's own statistics of the token
 *   (top-1 probability, top-1 − top-2 margin, entropy, logit spread, position) estimates
 *   P(accepted | the earlier drafts were accepted). It starts from hand-set weights that rise
 *   with confidence and learns online (SGD on log-loss, fixed rate) from every verify result.
 *   Stop when the estimate for the next token falls below a threshold, or at K_max. The
 *   threshold falls as the expected queueing delay grows:
 *       threshold(q) = max(minThreshold, threshold · queueRefMs / (queueRefMs + q))
 *   — while the server is busy the request would wait anyway, so a longer draft costs little
 *   latency and a lower bar buys expected tokens.
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
  /** Stop below this predicted acceptance when the server is idle. */
  threshold: number;
  /** The queue-adjusted threshold never goes below this. */
  minThreshold: number;
  /** Expected queueing delay at which the threshold halves, ms. */
  queueRefMs: number;
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

export interface StopQuery {
  /** Predicted acceptance of the token just drafted (predictAcceptance of its features). */
  nextPrediction: number;
  /** Its 0-based position in the round = drafts already kept. */
  position: number;
  /** Expected wait of the request in the server's queue, ms (0 when unknown). */
  expectedQueueMs?: number;
}

/**
 * A fresh controller. WISP defaults: weights DEFAULT_CONTROLLER_WEIGHTS, learningRate 0.05,
 * l2 0, threshold 0.5, minThreshold 0.2, queueRefMs 100, kMax 8. SLED defaults:
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
    threshold: opts.threshold ?? 0.5,
    minThreshold: opts.minThreshold ?? 0.2,
    queueRefMs: opts.queueRefMs ?? 100,
    kMax,
    updates: 0,
  };
  checkProbability('threshold', state.threshold);
  checkProbability('minThreshold', state.minThreshold);
  if (!(state.learningRate >= 0)) throw new PolicyConfigError(`learningRate must be ≥ 0, got ${state.learningRate}`);
  if (!(state.l2 >= 0)) throw new PolicyConfigError(`l2 must be ≥ 0, got ${state.l2}`);
  if (!(state.queueRefMs > 0)) throw new PolicyConfigError(`queueRefMs must be > 0, got ${state.queueRefMs}`);
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

/** The stop bar for the WISP (learned) controller at an expected queueing delay (see file comment). */
export function effectiveThreshold(state: WispControllerState, expectedQueueMs = 0): number {
  const q = Math.max(0, Number.isFinite(expectedQueueMs) ? expectedQueueMs : 0);
  return Math.max(state.minThreshold, (state.threshold * state.queueRefMs) / (state.queueRefMs + q));
}

/**
 * Whether to stop drafting instead of keeping the token at `position`: true at K_max
 * (`position ≥ kMax`) or when `nextPrediction` is below the bar — the queue-adjusted
 * threshold (WISP) or the confidence threshold on top-1 probability (SLED).
 */
export function shouldStopDrafting(state: ControllerState, q: StopQuery): boolean {
  if (q.position >= state.kMax) return true;
  const bar = state.kind === 'sled' ? state.confidenceThreshold : effectiveThreshold(state, q.expectedQueueMs ?? 0);
  return !(q.nextPrediction >= bar);
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
