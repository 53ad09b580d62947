/**
 * The policies (docs/design.md §5): pure functions of (state, now), shared by the live actors and the
 * simulator. No clock reads, no I/O, no unseeded randomness.
 */
export * from './types.ts';
export * from './errors.ts';
export * from './deadline.ts';
export * from './estimator.ts';
export * from './controller.ts';
export * from './batch.ts';
export { selectBatchWisp } from './batch-wisp.ts';
export { selectBatchSled } from './batch-sled.ts';
export { selectBatchCentralized } from './batch-centralized.ts';
export type { BatchPolicyState } from './batch-common.ts';
export { parseProfileCsv, rowShapes, PROFILE_COLUMNS, type ProfileRow, type ProfileKind } from './profile-csv.ts';
export { splitProfile, type ProfileSplit } from './profile-split.ts';
export { evaluateEstimator, type EstimatorEvalResult, type EstimatorEvalOptions } from './estimator-eval.ts';
export type { FloorLinearModel } from './floor-linear.ts';
