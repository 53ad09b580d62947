/**
 * Verification time estimator (docs/design.md §5): predicts how long the target
 * model takes to run a pass, from its members' shapes, so the WISP scheduler can check
 * deadlines before it adds a request. Two families, by how the server lays a pass out
 * (`PassLayout`, which each worker reports):
 *
 * **padded** (Hugging Face-style servers and this project's ONNX verifier: members padded to
 * the longest), cost depends on (B, n_max, L_max), not on the sums. Two sub-models, each
 * `max(launch floor, θ·features)` (see floor-linear.ts):
 * - verify (members with L > 0): features 1, B, B·n_max, m·B·L_max, (1−m)·B·L_max,
 *   B·n_max·L_max, where m = [n_max ≥ 2]. The indicator is there because a one-token query
 *   takes a different, much cheaper attention path (H200 profile: Qwen3-32B, B = 64, L = 2048:
 *   143 ms at n = 1, 499 ms at n = 2).
 * - prefill (members with L = 0, a new session's prompt): features 1, B·n_max, B·n_max²; fit
 *   separately from prefill measurements (its floor and per-token cost differ).
 * A batch mixing both kinds is predicted as the sum of the two.
 *
 * **varlen** (serving engines: unpadded token-flat passes, physics/pass-cost.ts), one model
 * over the pass's totals: 1, T, (T − k)₊ for knees k = 64, 128, 256, 512 (the linear operators
 * are flat up to a knee, then compute-bound: a piecewise-linear curve in T), Σ(L + n) (KV read
 * by attention), the attention work Σ FLOPs ÷ d_model, and the logit rows. Mixed passes
 * (prefill and verify members together) are predicted and learnt like any other.
 *
 * The state is plain JSON (kept in Redis per worker and model by the scheduler's adapter).
 * Defaults, before any observation: padded — the fit to the H200 Qwen3-32B profile; varlen —
 * the fit to the engine model of an A100-80GB running the 34B-class model. Priors are wide, so a
 * different server takes over within some tens of passes.
 */
import { addToTotals, EMPTY_TOTALS, type PassMember, type PassTotals } from '../physics/pass-cost.ts';
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

/** How a server lays out a pass: padded to its longest member, or token-flat (varlen). */
export type PassLayout = 'padded' | 'varlen';
export const PASS_LAYOUTS: readonly PassLayout[] = ['padded', 'varlen'];

/** Running prediction error of the estimator. */
export interface EstimatorErrorStats {
  /** Exponentially weighted mean absolute percentage error (0.05 = 5 %); 0 before any data. */
  ewmaApe: number;
  /** Observations folded into ewmaApe. */
  count: number;
  /** Absolute percentage error of the latest observation, or null before any. */
  lastApe: number | null;
}

interface EstimatorBase {
  version: 1;
  error: EstimatorErrorStats;
  /** Weight of the newest observation in ewmaApe. */
  errorAlpha: number;
}

/** The padded family (absent `layout` means padded: states persisted before varlen existed). */
export interface PaddedEstimatorState extends EstimatorBase {
  layout?: 'padded';
  verify: FloorLinearModel;
  prefill: FloorLinearModel;
}

/** The varlen family: one model of the whole pass. */
export interface VarlenEstimatorState extends EstimatorBase {
  layout: 'varlen';
  pass: FloorLinearModel;
}

export type EstimatorState = PaddedEstimatorState | VarlenEstimatorState;

/** What a caller may override in a fresh padded estimator (e.g. from config or a profile fit). */
export interface EstimatorDefaults {
  verify?: Partial<Omit<FloorLinearInit, 'scales'>>;
  prefill?: Partial<Omit<FloorLinearInit, 'scales'>>;
  errorAlpha?: number;
}

/** What a caller may override in a fresh varlen estimator. */
export interface VarlenEstimatorDefaults {
  pass?: Partial<Omit<FloorLinearInit, 'scales'>>;
  errorAlpha?: number;
}

/** Padded-group summary the padded features are computed from. */
export interface BatchAggregate {
  B: number;
  nMax: number;
  LMax: number;
  /** Σ n, for the schedulers' token cap. */
  sumN: number;
}

/**
 * Summary of a pass under construction, for either family: the padded summaries of its verify
 * and prefill members, and the varlen totals of all of them.
 */
export interface PassAggregate {
  /** Members with L > 0 (verifications, decode steps). */
  verify: BatchAggregate;
  /** Members with L = 0 (prompts). */
  prefill: BatchAggregate;
  totals: PassTotals;
}

const EMPTY_GROUP: BatchAggregate = { B: 0, nMax: 0, LMax: 0, sumN: 0 };
export const EMPTY_PASS: Readonly<PassAggregate> = { verify: EMPTY_GROUP, prefill: EMPTY_GROUP, totals: EMPTY_TOTALS };

/** Feature scales (typical large-batch magnitudes) so the scaled features are O(1). */
const VERIFY_SCALES = [1, 64, 576, 131072, 131072, 1179648];
const PREFILL_SCALES = [1, 32768, 67108864];
const VARLEN_SCALES = [1, 256, 256, 256, 256, 256, 65536, 4194304, 256];
/** Knees of the varlen model's piecewise-linear token curve. */
const VARLEN_KNEES = [64, 128, 256, 512];

/**
 * Built-in padded priors: estimatorFromProfile on all Qwen3-32B rows of
 * data/verify-profile-h200.csv (measured on an H200), rounded; coefficients are per scaled
 * feature, ms.
 */
const VERIFY_PRIOR = { theta: [31.92, -4.35, 71.76, 481.64, 103.1, 15.55], floorMs: 53.62 };
const PREFILL_PRIOR = { theta: [5.11, 4040.1, 119.65], floorMs: 93.58 };
/**
 * Built-in varlen prior: the fit of this model to the engine model of an A100-80GB running the
 * 34B-class model (scripts/fit-varlen-prior.ts prints it; test/unit/estimator-varlen.test.ts
 * checks a fresh estimator against that engine on passes it was not fit on).
 */
const VARLEN_PRIOR = { theta: [47.446, 7.8401, 50.864, 9.4969, 16.264, -9.7452, 7.6938, 4.0416, 0.84407], floorMs: 47.332 };

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

/** Varlen-model features of a pass's totals. */
export function varlenFeatures(t: PassTotals): number[] {
  const T = t.tokens;
  return [1, T, ...VARLEN_KNEES.map((k) => Math.max(0, T - k)), t.kvTokens, t.attentionWork, t.logitTokens];
}

/** A fresh padded estimator: the built-in priors, or `defaults` where given. */
export function createEstimatorState(defaults: EstimatorDefaults = {}): PaddedEstimatorState {
  return {
    version: 1,
    verify: createFloorLinear({ scales: VERIFY_SCALES, ...VERIFY_PRIOR, ...defaults.verify }),
    prefill: createFloorLinear({ scales: PREFILL_SCALES, ...PREFILL_PRIOR, ...defaults.prefill }),
    error: { ewmaApe: 0, count: 0, lastApe: null },
    errorAlpha: defaults.errorAlpha ?? 0.05,
  };
}

/** A fresh varlen estimator: the built-in prior, or `defaults` where given. */
export function createVarlenEstimatorState(defaults: VarlenEstimatorDefaults = {}): VarlenEstimatorState {
  return {
    version: 1,
    layout: 'varlen',
    pass: createFloorLinear({ scales: VARLEN_SCALES, ...VARLEN_PRIOR, ...defaults.pass }),
    error: { ewmaApe: 0, count: 0, lastApe: null },
    errorAlpha: defaults.errorAlpha ?? 0.05,
  };
}

/** A fresh estimator of the family a server with this layout needs. */
export function estimatorForLayout(layout: PassLayout): EstimatorState {
  return layout === 'varlen' ? createVarlenEstimatorState() : createEstimatorState();
}

/** The family of a state. */
export function layoutOf(state: EstimatorState): PassLayout {
  return state.layout ?? 'padded';
}

function checkShape(s: BatchShape): void {
  if (!(Number.isInteger(s.n) && s.n >= 1) || !(Number.isInteger(s.L) && s.L >= 0)) {
    throw new EstimatorInputError(`batch shape needs integer n ≥ 1 and L ≥ 0, got n=${s.n}, L=${s.L}`);
  }
}

/**
 * The engine's view of a shape: a prompt or prompt chunk (L = 0, or flagged `prefill`) attends
 * causally within itself and needs logits at its end only (counted once; a middle chunk's one row
 * is noise); anything else is a verification or decode step, with logits at every fed token.
 */
export function passMemberOf(s: BatchShape): PassMember {
  return s.L === 0 || s.prefill ? { newTokens: s.n, cachedTokens: s.L, logitTokens: 1, prefill: true } : { newTokens: s.n, cachedTokens: s.L, logitTokens: s.n, prefill: false };
}

function addToGroup(g: BatchAggregate, s: BatchShape): BatchAggregate {
  return { B: g.B + 1, nMax: Math.max(g.nMax, s.n), LMax: Math.max(g.LMax, s.L), sumN: g.sumN + s.n };
}

/**
 * `a` with one more member (a new object). In the padded summaries a prompt chunk over a cache
 * (L > 0) counts with the verifications: a padded server runs it as a multi-token query over a
 * cache, as it runs a verification.
 * @throws EstimatorInputError on a shape that cannot be a member
 */
export function addShape(a: PassAggregate, s: BatchShape): PassAggregate {
  checkShape(s);
  const totals = addToTotals(a.totals, passMemberOf(s));
  return s.L === 0 ? { verify: a.verify, prefill: addToGroup(a.prefill, s), totals } : { verify: addToGroup(a.verify, s), prefill: a.prefill, totals };
}

/** The aggregate of a list of shapes. */
export function passAggregate(shapes: readonly BatchShape[]): PassAggregate {
  let a: PassAggregate = EMPTY_PASS;
  for (const s of shapes) a = addShape(a, s);
  return a;
}

/** The aggregate of `count` equal verification members, each feeding n tokens over L cached (built directly, O(1)). */
export function uniformPassAggregate(count: number, n: number, L: number): PassAggregate {
  if (count === 0) return EMPTY_PASS;
  const member = passMemberOf({ n, L });
  const one = addToTotals(EMPTY_TOTALS, member);
  const totals: PassTotals = { members: count, tokens: count * one.tokens, kvTokens: count * one.kvTokens, attentionWork: count * one.attentionWork, logitTokens: count * one.logitTokens };
  const group: BatchAggregate = { B: count, nMax: n, LMax: L, sumN: count * n };
  return L === 0 ? { verify: EMPTY_GROUP, prefill: group, totals } : { verify: group, prefill: EMPTY_GROUP, totals };
}

/** Summary of a homogeneous group of shapes; throws on a shape that cannot be a batch member. */
export function aggregateShapes(shapes: readonly BatchShape[]): BatchAggregate {
  let g = EMPTY_GROUP;
  for (const s of shapes) {
    checkShape(s);
    g = addToGroup(g, s);
  }
  return g;
}

/** Predicted latency of a homogeneous padded group from its aggregate, ms (0 for an empty group). */
export function predictAggregateMs(state: PaddedEstimatorState, kind: 'verify' | 'prefill', a: BatchAggregate): number {
  if (a.B === 0) return 0;
  return kind === 'prefill' ? predictFloorLinear(state.prefill, prefillFeatures(a)) : predictFloorLinear(state.verify, verifyFeatures(a));
}

/** Predicted latency of a pass from its aggregate, ms (0 for an empty pass). */
export function predictPassMs(state: EstimatorState, a: PassAggregate): number {
  if (a.totals.members === 0) return 0;
  if (state.layout === 'varlen') return predictFloorLinear(state.pass, varlenFeatures(a.totals));
  return predictAggregateMs(state, 'verify', a.verify) + predictAggregateMs(state, 'prefill', a.prefill);
}

/**
 * Predicted latency of running `shapes` as one pass, ms. Members with L = 0 are prefills (a
 * verify always has the prompt in cache).
 */
export function predictBatchMs(state: EstimatorState, shapes: readonly BatchShape[]): number {
  return predictPassMs(state, passAggregate(shapes));
}

/**
 * Folds one executed pass into the estimator (pure: returns a new state). Updates the running
 * error first (with the prediction made before learning), then the model: varlen — its one
 * model; padded — the sub-model of the batch's kind (a mixed padded batch only updates the
 * error: its cost cannot be split between the two).
 */
export function observeBatch<S extends EstimatorState>(state: S, shapes: readonly BatchShape[], actualMs: number): S {
  if (shapes.length === 0 || !(actualMs > 0) || !Number.isFinite(actualMs)) return state;
  const agg = passAggregate(shapes);
  const predicted = predictPassMs(state, agg);
  const ape = Math.abs(predicted - actualMs) / actualMs;
  const e = state.error;
  const error: EstimatorErrorStats = {
    ewmaApe: e.count === 0 ? ape : e.ewmaApe + state.errorAlpha * (ape - e.ewmaApe),
    count: e.count + 1,
    lastApe: ape,
  };
  if (state.layout === 'varlen') return { ...state, error, pass: observeFloorLinear(state.pass, varlenFeatures(agg.totals), actualMs) };
  const padded = state as PaddedEstimatorState;
  if (agg.verify.B > 0 && agg.prefill.B > 0) return { ...state, error };
  if (agg.prefill.B > 0) return { ...state, error, prefill: observeFloorLinear(padded.prefill, prefillFeatures(agg.prefill), actualMs) };
  return { ...state, error, verify: observeFloorLinear(padded.verify, verifyFeatures(agg.verify), actualMs) };
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
 * Fits a padded estimator to measured profile rows (batch fit; see fitFloorLinear).
 * Verification rows (grid, mixed) fit the verify model and prefill rows the prefill model; a
 * model with no rows keeps its prior. `ms_median` is the target. The running error starts at
 * the in-sample MAPE.
 */
export function estimatorFromProfile(rows: readonly ProfileRow[], defaults: EstimatorDefaults = {}): PaddedEstimatorState {
  const base = createEstimatorState(defaults);
  const verifyRows = rows.filter((r) => r.kind !== 'prefill');
  const prefillRows = rows.filter((r) => r.kind === 'prefill');
  const feats = (r: ProfileRow): number[] =>
    r.kind === 'prefill' ? prefillFeatures(aggregateShapes(rowShapes(r))) : verifyFeatures(aggregateShapes(rowShapes(r)));
  const verify = fitFloorLinear(base.verify, verifyRows.map(feats), verifyRows.map((r) => r.msMedian));
  const prefill = fitFloorLinear(base.prefill, prefillRows.map(feats), prefillRows.map((r) => r.msMedian));
  const fitted: PaddedEstimatorState = { ...base, verify, prefill };
  const apes = rows.map((r) => Math.abs(predictBatchMs(fitted, rowShapes(r)) - r.msMedian) / r.msMedian);
  const mean = apes.length === 0 ? 0 : apes.reduce((a, b) => a + b, 0) / apes.length;
  return { ...fitted, error: { ewmaApe: mean, count: apes.length, lastApe: null } };
}

/**
 * Fits a varlen estimator to observed passes (shapes and latency), e.g. passes timed by the
 * engine model. The running error starts at the in-sample MAPE.
 */
export function varlenEstimatorFromPasses(passes: readonly { shapes: readonly BatchShape[]; ms: number }[], defaults: VarlenEstimatorDefaults = {}): VarlenEstimatorState {
  const base = createVarlenEstimatorState(defaults);
  const xs = passes.map((p) => varlenFeatures(passAggregate(p.shapes).totals));
  const pass = fitFloorLinear(base.pass, xs, passes.map((p) => p.ms));
  const fitted: VarlenEstimatorState = { ...base, pass };
  const apes = passes.map((p) => Math.abs(predictBatchMs(fitted, p.shapes) - p.ms) / p.ms);
  const mean = apes.length === 0 ? 0 : apes.reduce((a, b) => a + b, 0) / apes.length;
  return { ...fitted, error: { ewmaApe: mean, count: apes.length, lastApe: null } };
}
