/**
 * The forged decoder's weights: an imprinted embedding/LM head (imprint.ts) plus random
 * pre-LayerNorm transformer layers whose residual branches are scaled down, so the layers
 * perturb the imprinted bigram model rather than replace it.
 */
import { Prng } from './prng.ts';

/** Dimensions of a forged decoder. */
export interface DecoderDims {
  vocabSize: number;
  numLayers: number;
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositions: number;
}

/** One transformer layer's weights (row-major, [in, out] for MatMul). */
export interface LayerWeights {
  ln1Scale: Float32Array;
  ln1Bias: Float32Array;
  /** Fused Q|K|V projection [d, (H + 2·Hkv)·Dh]; the Q part is pre-scaled by 1/√Dh. */
  qkv: Float32Array;
  /** Attention output [H·Dh, d], scaled by the layer's branch scale. */
  attnOut: Float32Array;
  ln2Scale: Float32Array;
  ln2Bias: Float32Array;
  mlpUp: Float32Array;
  /** MLP down [ff, d], scaled by the layer's branch scale. */
  mlpDown: Float32Array;
}

export interface DecoderWeights {
  dims: DecoderDims;
  wte: Float32Array;
  wpe: Float32Array;
  layers: LayerWeights[];
  lnfScale: Float32Array;
  lnfBias: Float32Array;
  lmHead: Float32Array;
}

/**
 * A random layer with residual branch scale `branchScale` (applied to its two output
 * projections). Give each layer its own PRNG stream so layer i does not depend on later layers.
 */
export function randomLayer(dims: DecoderDims, prng: Prng, branchScale: number): LayerWeights {
  const d = dims.hiddenSize;
  const H = dims.numHeads;
  const Hkv = dims.numKvHeads;
  const Dh = dims.headDim;
  const ff = dims.intermediateSize;
  const qkvCols = (H + 2 * Hkv) * Dh;
  const qkv = prng.uniformArray(d * qkvCols, 1 / Math.sqrt(d));
  const qScale = 1 / Math.sqrt(Dh);
  for (let i = 0; i < d; i++) for (let j = 0; j < H * Dh; j++) qkv[i * qkvCols + j] *= qScale;
  const attnOut = prng.uniformArray(H * Dh * d, branchScale / Math.sqrt(H * Dh));
  const mlpUp = prng.uniformArray(d * ff, 1 / Math.sqrt(d));
  const mlpDown = prng.uniformArray(ff * d, branchScale / Math.sqrt(ff));
  return {
    ln1Scale: new Float32Array(d).fill(1),
    ln1Bias: new Float32Array(d),
    qkv,
    attnOut,
    ln2Scale: new Float32Array(d).fill(1),
    ln2Bias: new Float32Array(d),
    mlpUp,
    mlpDown,
  };
}

/** Multiplies a layer's two output projections by `factor` in place (rescales its residual branch). */
export function scaleBranch(layer: LayerWeights, factor: number): void {
  for (let i = 0; i < layer.attnOut.length; i++) layer.attnOut[i] *= factor;
  for (let i = 0; i < layer.mlpDown.length; i++) layer.mlpDown[i] *= factor;
}
