/**
 * Verification time estimator (DESIGN §5): predicts how long the target model takes to run a
 * batch, from its members' shapes, so the WISP scheduler can check deadlines before it adds
 * a request.
 *
 * Batches are padded to their longest member, so cost depends on (B, n_max, L_max), not on the
 * sums. Two sub-models, each `max(launch floor, θ·features)` (see floor-linear.ts):
 * - verify (members with L > 0): features 1, B, B·n_max, m·B·L_max, (1−m)·B·L_max,
 *   B·n_max·L_max, where m = [n_max ≥ 2]. The indicator is there because a one-token query
 *   takes a different, much cheaper attention path (H200 profile: Qwen3-32B, B = 64, L = 2048:
 *   143 ms at n = 1, 499 ms at n = 2).
 * - prefill (members with L = 0, a new session's prompt): features 1, B·n_max, B·n_max²; fit
 *   separately from prefill measurements (its floor and per-token cost differ).
 * A batch mixing both kinds is predicted as the sum of the two (the schedulers never build one).
 *
 * The state is plain JSON (kept in Redis per worker and model by the scheduler's adapter).
 * Defaults, before any observation: the fit to the H200 Qwen3-32B profile, with wide priors so
 * a different server (or the CPU ONNX models) takes over within some tens of batches.
 */
import { EstimatorInputError } from './errors.ts';
import {
  createFloorLinear,
  fitFloorLinear,
  observeFloorLinear,
  predictFloorLinear,
  type FloorLinearInit,
  type FloorLinearModel,
} from './floor-linear.ts';
import { rowShapes, type ProfileRow } from './profile-csv.ts';
import type { BatchShape } from './types.ts';

/** Running prediction error of the estimator. */
export interface EstimatorErrorStats {
  /** Exponentially weighted mean absolute percentage error (0.05 = 5 %); 0 before any data. */
  ewmaApe: number;
  /** Observations folded into ewmaApe. */
  count: number;
  /** Absolute percentage error of the latest observation, or null before any. */
  lastApe: number | null;
}

export interface EstimatorState {
  version: 1;
  verify: FloorLinearModel;
  prefill: FloorLinearModel;
  error: EstimatorErrorStats;
  /** Weight of the newest observation in ewmaApe. */
  errorAlpha: number;
}

/** What a caller may override in a fresh estimator (e.g. from config or a profile fit). */
export interface EstimatorDefaults {
  verify?: Partial<Omit<FloorLinearInit, 'scales'>>;
  prefill?: Partial<Omit<FloorLinearInit, 'scales'>>;
  errorAlpha?: number;
}

/** Padded-batch summary the features are computed from. */
export interface BatchAggregate {
  B: number;
  nMax: number;
  LMax: number;
  /** Σ n, for the schedulers' token cap. */
  sumN: number;
}

/** Feature scales (typical large-batch magnitudes) so the scaled features are O(1). */
const VERIFY_SCALES = [1, 64, 576, 131072, 131072, 1179648];
const PREFILL_SCALES = [1, 32768, 67108864];

/**
 * Built-in priors: estimatorFromProfile on all Qwen3-32B rows of data/verify-profile-h200.csv
 * (measured on an H200), rounded; coefficients are per scaled feature, ms.
 */
const VERIFY_PRIOR = { theta: [31.92, -4.35, 71.76, 481.64, 103.1, 15.55], floorMs: 53.62 };
const PREFILL_PRIOR = { theta: [5.11, 4040.1, 119.65], floorMs: 93.58 };

/** Verify-model features of a padded batch of B requests. */
export function verifyFeatures(a: BatchAggregate): number[] {
  const multi = a.nMax >= 2 ? 1 : 0;
  const BL = a.B * a.LMax;
  return [1, a.B, a.B * a.nMax, multi * BL, (1 - multi) * BL, a.B * a.nMax * a.LMax];
}

/** Prefill-model features: B prompts padded to nMax tokens. */
export function prefillFeatures(a: BatchAggregate): number[] {
  const tokens = a.B * a.nMax;
  return [1, tokens, tokens * a.nMax];
}

/** A fresh estimator: the built-in priors, or `defaults` where given. */
export function createEstimatorState(defaults: EstimatorDefaults = {}): EstimatorState {
  return {
    version: 1,
    verify: createFloorLinear({ scales: VERIFY_SCALES, ...VERIFY_PRIOR, ...defaults.verify }),
    prefill: createFloorLinear({ scales: PREFILL_SCALES, ...PREFILL_PRIOR, ...defaults.prefill }),
    error: { ewmaApe: 0, count: 0, lastApe: null },
    errorAlpha: defaults.errorAlpha ?? 0.05,
  };
}

/** Summary of a homogeneous group of shapes; throws on a shape that cannot be a batch member. */
export function aggregateShapes(shapes: readonly BatchShape[]): BatchAggregate {
  let nMax = 0;
  let LMax = 0;
  let sumN = 0;
  for (const s of shapes) {
    if (!(Number.isInteger(s.n) && s.n >= 1) || !(Number.isInteger(s.L) && s.L >= 0)) {
      throw new EstimatorInputError(`batch shape needs integer n ≥ 1 and L ≥ 0, got n=${s.n}, L=${s.L}`);
    }
    if (s.n > nMax) nMax = s.n;
    if (s.L > LMax) LMax = s.L;
    sumN += s.n;
  }
  return { B: shapes.length, nMax, LMax, sumN };
}

/** Predicted latency of a homogeneous batch from its aggregate, ms (0 for an empty batch). */
export function predictAggregateMs(state: EstimatorState, kind: 'verify' | 'prefill', a: BatchAggregate): number {
  if (a.B === 0) return 0;
  return kind === 'prefill' ? predictFloorLinear(state.prefill, prefillFeatures(a)) : predictFloorLinear(state.verify, verifyFeatures(a));
}

/**
 * Predicted latency of running `shapes` as one padded batch, ms. Members with L = 0 are
 * prefills (a verify always has the prompt in cache); a mixed batch is predicted as the sum.
 */
export function predictBatchMs(state: EstimatorState, shapes: readonly BatchShape[]): number {
  const { verify, prefill } = splitShapes(shapes);
  return predictAggregateMs(state, 'verify', aggregateShapes(verify)) + predictAggregateMs(state, 'prefill', aggregateShapes(prefill));
}

/**
 * Folds one executed batch into the estimator (pure: returns a new state). Updates the running
 * error first (with the prediction made before learning), then the sub-model of the batch's
 * kind; a mixed batch only updates the error (its cost cannot be split between the two).
 */
export function observeBatch(state: EstimatorState, shapes: readonly BatchShape[], actualMs: number): EstimatorState {
  if (shapes.length === 0 || !(actualMs > 0) || !Number.isFinite(actualMs)) return state;
  const predicted = predictBatchMs(state, shapes);
  const ape = Math.abs(predicted - actualMs) / actualMs;
  const e = state.error;
  const error: EstimatorErrorStats = {
    ewmaApe: e.count === 0 ? ape : e.ewmaApe + state.errorAlpha * (ape - e.ewmaApe),
    count: e.count + 1,
    lastApe: ape,
  };
  const { verify, prefill } = splitShapes(shapes);
  if (verify.length > 0 && prefill.length > 0) return { ...state, error };
  if (prefill.length > 0) return { ...state, error, prefill: observeFloorLinear(state.prefill, prefillFeatures(aggregateShapes(prefill)), actualMs) };
  return { ...state, error, verify: observeFloorLinear(state.verify, verifyFeatures(aggregateShapes(verify)), actualMs) };
}

/** The estimator's running error. */
export function estimatorError(state: EstimatorState): EstimatorErrorStats {
  return { ...state.error };
}

/** Convenience: predicted latency of a prefill batch of prompts of these lengths, ms. */
export function predictPrefillMs(state: EstimatorState, promptLengths: readonly number[]): number {
  return predictBatchMs(
    state,
    promptLengths.map((n) => ({ n, L: 0 })),
  );
}

/**
 * Fits an estimator to measured profile rows (batch fit; see fitFloorLinear). Verification rows
 * (grid, mixed) fit the verify model and prefill rows the prefill model; a model with no rows
 * keeps its prior. `ms_median` is the target. The running error starts at the in-sample MAPE.
 */
export function estimatorFromProfile(rows: readonly ProfileRow[], defaults: EstimatorDefaults = {}): EstimatorState {
  const base = createEstimatorState(defaults);
  const verifyRows = rows.filter((r) => r.kind !== 'prefill');
  const prefillRows = rows.filter((r) => r.kind === 'prefill');
  const feats = (r: ProfileRow): number[] =>
    r.kind === 'prefill' ? prefillFeatures(aggregateShapes(rowShapes(r))) : verifyFeatures(aggregateShapes(rowShapes(r)));
  const verify = fitFloorLinear(base.verify, verifyRows.map(feats), verifyRows.map((r) => r.msMedian));
  const prefill = fitFloorLinear(base.prefill, prefillRows.map(feats), prefillRows.map((r) => r.msMedian));
  const fitted: EstimatorState = { ...base, verify, prefill };
  const apes = rows.map((r) => Math.abs(predictBatchMs(fitted, rowShapes(r)) - r.msMedian) / r.msMedian);
  const mean = apes.length === 0 ? 0 : apes.reduce((a, b) => a + b, 0) / apes.length;
  return { ...fitted, error: { ewmaApe: mean, count: apes.length, lastApe: null } };
}

function splitShapes(shapes: readonly BatchShape[]): { verify: BatchShape[]; prefill: BatchShape[] } {
  const verify: BatchShape[] = [];
  const prefill: BatchShape[] = [];
  for (const s of shapes) (s.L === 0 ? prefill : verify).push(s);
  return { verify, prefill };
}
