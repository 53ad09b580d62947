/**
 * The simulated server's true batch latency: a verification-time model fitted to a measured
 * profile (data/verify-profile-h200.csv, measured on an H200; or any CSV in that format) with
 * `estimatorFromProfile`, times optional multiplicative log-normal noise. The scheduler's own
 * estimator is separate: it starts from its built-in priors and learns online from the batch
 * times this model produces, as the live one does from the real server.
 */
import { estimatorFromProfile, predictBatchMs, type EstimatorState } from '../policies/estimator.ts';
import type { ProfileRow } from '../policies/profile-csv.ts';
import type { BatchShape } from '../policies/types.ts';
import type { Rng } from './random.ts';

export class ServerProfileError extends Error {
  readonly code = 'bad_server_profile';
}

export interface ServerCostModel {
  readonly model: string;
  /** In-sample mean absolute percentage error of the fit to the profile. */
  readonly fitMape: number;
  /** Latency of one padded batch of these shapes, ms (noise drawn from `rng`). */
  batchMs(shapes: readonly BatchShape[], rng: Rng): number;
  /** The noise-free latency, ms. */
  meanBatchMs(shapes: readonly BatchShape[]): number;
}

/**
 * Fits the true cost model to `rows` of `model`.
 * @param noiseSigma s.d. of the log-normal factor (0 = deterministic)
 * @param scale multiplies every batch time (1: the fit as is; a replayed live run's profile
 *   sets it so that the mean batch time equals the measured mean, sim/replay.ts)
 * @throws ServerProfileError when the profile has no rows of that model
 */
export function serverCostFromProfile(rows: readonly ProfileRow[], model: string, noiseSigma = 0.05, scale = 1): ServerCostModel {
  const mine = rows.filter((r) => r.model === model);
  if (mine.length === 0) {
    const known = [...new Set(rows.map((r) => r.model))].join(', ');
    throw new ServerProfileError(`the server profile has no rows of model "${model}" (it has: ${known})`);
  }
  if (!(noiseSigma >= 0)) throw new ServerProfileError(`server noise must be ≥ 0, got ${noiseSigma}`);
  if (!(scale > 0)) throw new ServerProfileError(`server time scale must be > 0, got ${scale}`);
  const fit: EstimatorState = estimatorFromProfile(mine);
  return {
    model,
    fitMape: fit.error.ewmaApe,
    meanBatchMs: (shapes) => scale * predictBatchMs(fit, shapes),
    batchMs: (shapes, rng) => {
      const ms = scale * predictBatchMs(fit, shapes);
      // Mean-one log-normal, so noise never biases the average cost.
      return noiseSigma === 0 ? ms : ms * Math.exp(noiseSigma * rng.normal() - (noiseSigma * noiseSigma) / 2);
    },
  };
}
