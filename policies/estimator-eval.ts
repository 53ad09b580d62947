/**
 * Offline check of the estimator: fit on one profile's verification rows, measure the error on
 * another's. Used by `wisp estimator eval` and its test.
 */
import { estimatorFromProfile, predictBatchMs } from './estimator.ts';
import { rowShapes, type ProfileKind, type ProfileRow } from './profile-csv.ts';
import { EstimatorInputError } from './errors.ts';

export interface EstimatorEvalResult {
  /** Mean absolute percentage error over the test rows (0.05 = 5 %). */
  mape: number;
  /** 90th percentile (nearest rank) of the absolute percentage error. */
  p90Ape: number;
  /** Test rows scored. */
  n: number;
}

export interface EstimatorEvalOptions {
  model: string;
  /** Test rows of this kind are scored; default 'mixed'. */
  testKind?: Exclude<ProfileKind, 'prefill'> | 'prefill';
}

/**
 * Fits on `train`'s verification rows (grid and mixed) of `model` — prefill rows are not
 * verification and are skipped — and scores `test`'s rows of `testKind` of the same model.
 * @throws EstimatorInputError when either side has no rows for the model
 */
export function evaluateEstimator(train: readonly ProfileRow[], test: readonly ProfileRow[], opts: EstimatorEvalOptions): EstimatorEvalResult {
  const kind = opts.testKind ?? 'mixed';
  const fitRows = train.filter((r) => r.model === opts.model && (kind === 'prefill' ? r.kind === 'prefill' : r.kind !== 'prefill'));
  const testRows = test.filter((r) => r.model === opts.model && r.kind === kind);
  if (fitRows.length === 0) throw new EstimatorInputError(`no training rows for model "${opts.model}"`);
  if (testRows.length === 0) throw new EstimatorInputError(`no test rows of kind "${kind}" for model "${opts.model}"`);
  const est = estimatorFromProfile(fitRows);
  const apes = testRows.map((r) => Math.abs(predictBatchMs(est, rowShapes(r)) - r.msMedian) / r.msMedian).sort((a, b) => a - b);
  return {
    mape: apes.reduce((a, b) => a + b, 0) / apes.length,
    p90Ape: apes[Math.ceil(0.9 * apes.length) - 1],
    n: apes.length,
  };
}
