/**
 * Forge presets and the starting guess of the agreement → β map. β scales the residual branches
 * of every layer after the first, so it sets how far the target drifts from its 1-layer draft.
 */
import type { DecoderDims } from './weights.ts';

export type ForgePreset = 'tiny' | 'small';

/** Dimensions of each preset (`tiny` for unit tests, `small` for benchmarks). */
export const PRESET_DIMS: Record<ForgePreset, DecoderDims> = {
  tiny: { vocabSize: 1024, numLayers: 4, hiddenSize: 128, numHeads: 4, numKvHeads: 4, headDim: 32, intermediateSize: 512, maxPositions: 512 },
  small: { vocabSize: 2048, numLayers: 6, hiddenSize: 256, numHeads: 8, numKvHeads: 8, headDim: 32, intermediateSize: 1024, maxPositions: 1024 },
};

/** Default greedy draft/target agreement of a forged pair. */
export const DEFAULT_AGREEMENT = 0.8;
export const MIN_AGREEMENT = 0.5;
export const MAX_AGREEMENT = 0.95;

/**
 * Starting guesses for the forge's β calibration (calibrate.ts): mean calibrated β over seeds
 * 1–3 of both presets, agreement descending; interpolated linearly in log β. Per seed the
 * calibrated β differs by up to ±40%, which is why every forge calibrates its own.
 */
export const AGREEMENT_CURVE: ReadonlyArray<readonly [number, number]> = [
  [0.95, 0.018],
  [0.9, 0.053],
  [0.8, 0.16],
  [0.7, 0.3],
  [0.6, 0.45],
  [0.5, 0.65],
];

/** Initial β guess for an agreement in [MIN_AGREEMENT, MAX_AGREEMENT] (higher agreement → smaller β). */
export function betaForAgreement(agreement: number): number {
  const pts = AGREEMENT_CURVE;
  if (agreement >= pts[0][0]) return pts[0][1];
  for (let i = 1; i < pts.length; i++) {
    const [a1, b1] = pts[i];
    if (agreement >= a1) {
      const [a0, b0] = pts[i - 1];
      const t = (agreement - a0) / (a1 - a0);
      return Math.exp(Math.log(b0) + t * (Math.log(b1) - Math.log(b0)));
    }
  }
  return pts[pts.length - 1][1];
}
