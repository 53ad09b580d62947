/**
 * The simulated server's true pass latency, times optional multiplicative log-normal noise.
 * Two sources:
 * - a serving engine (`engineServerCost`): the operator-level engine model of physics/ (measured
 *   linear operators, roofline attention, LM head, per-iteration overhead) — the built-in
 *   scenarios' server;
 * - a measured profile (`serverCostFromProfile`, data/verify-profile-h200.csv or any CSV in that
 *   format, e.g. one written by `wisp bench`): the padded-batch model fitted to it.
 * The scheduler's own estimator is separate: it starts from its built-in priors and learns
 * online from the pass times this model produces, as the live one does from the real server.
 */
import { WispError } from '../common/errors.ts';
import { kvCapacityTokens, passCost, type EngineModel } from '../physics/pass-cost.ts';
import { estimatorFromProfile, passMemberOf, predictBatchMs, type EstimatorState, type PassLayout } from '../policies/estimator.ts';
import type { ProfileRow } from '../policies/profile-csv.ts';
import type { BatchShape } from '../policies/types.ts';
import type { Rng } from './random.ts';

export class ServerProfileError extends WispError {
  constructor(message: string) {
    super('bad_server_profile', message);
  }
}

export interface ServerCostModel {
  /** What the server is, for reports: `gpu/model` of an engine, or the profile's model. */
  readonly name: string;
  readonly model: string;
  /** How the server lays a pass out (the scheduler picks its estimator family by it). */
  readonly layout: PassLayout;
  /** Tokens of KV cache the server holds for all its sessions; null = unlimited. */
  readonly kvCapacityTokens: number | null;
  /** In-sample mean absolute percentage error of the fit to the profile (0 for an engine). */
  readonly fitMape: number;
  /** Latency of one pass of these shapes, ms (noise drawn from `rng`). */
  batchMs(shapes: readonly BatchShape[], rng: Rng): number;
  /** The noise-free latency, ms. */
  meanBatchMs(shapes: readonly BatchShape[]): number;
}

/** Mean-one log-normal factor, so noise never biases the average cost. */
function noisy(ms: number, sigma: number, rng: Rng): number {
  return sigma === 0 ? ms : ms * Math.exp(sigma * rng.normal() - (sigma * sigma) / 2);
}

function checkNoise(sigma: number, scale: number): void {
  if (!(sigma >= 0)) throw new ServerProfileError(`server noise must be ≥ 0, got ${sigma}`);
  if (!(scale > 0)) throw new ServerProfileError(`server time scale must be > 0, got ${scale}`);
}

/**
 * The engine model as the simulated server.
 * @param noiseSigma s.d. of the log-normal factor (0 = deterministic)
 * @param kvLimit whether sessions' KV caches are limited to what fits in the GPU's memory
 */
export function engineServerCost(engine: EngineModel, noiseSigma = 0.05, kvLimit = true): ServerCostModel {
  checkNoise(noiseSigma, 1);
  const mean = (shapes: readonly BatchShape[]): number => passCost(engine, shapes.map(passMemberOf)).ms;
  return {
    name: engine.id,
    model: engine.id,
    layout: 'varlen',
    kvCapacityTokens: kvLimit ? kvCapacityTokens(engine) : null,
    fitMape: 0,
    meanBatchMs: mean,
    batchMs: (shapes, rng) => noisy(mean(shapes), noiseSigma, rng),
  };
}

/**
 * Fits the true cost model to `rows` of `model` (a padded server: the profile was measured on one).
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
  checkNoise(noiseSigma, scale);
  const fit: EstimatorState = estimatorFromProfile(mine);
  return {
    name: model,
    model,
    layout: 'padded',
    kvCapacityTokens: null,
    fitMape: fit.error.ewmaApe,
    meanBatchMs: (shapes) => scale * predictBatchMs(fit, shapes),
    batchMs: (shapes, rng) => noisy(scale * predictBatchMs(fit, shapes), noiseSigma, rng),
  };
}
