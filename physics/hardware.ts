/**
 * GPU and model presets of the serving-engine cost model (physics/pass-cost.ts).
 *
 * GPU figures are *effective* rates: datasheet peak × an efficiency a tuned kernel reaches.
 * - HBM bandwidth: ~80 % of peak is what a streaming kernel (a decode step reading the KV
 *   cache) sustains on these parts.
 * - Attention FLOP/s: FlashAttention-class kernels reach ~55–60 % of the dense bf16 tensor
 *   peak on Ampere and ~40 % on Hopper without Hopper-specific kernels (FlashAttention-2).
 * - Matmul FLOP/s (the LM head, which Vidur's operator files do not cover): ~70 % of peak on
 *   Ampere, ~60 % on Hopper.
 * Memory sizes are what `nvidia-smi` reports as total memory for each board.
 *
 * Model shapes are the Hugging Face configs of the models Vidur profiled (data/vidur/README.md);
 * `34b` is CodeLlama-34B and stands in for Qwen3-32B (the WISP paper's target): both are
 * 32–34B dense decoders with 8 KV heads of dimension 128.
 */

export interface GpuSpec {
  /** Preset name, e.g. 'a100-80gb'. */
  name: string;
  description: string;
  /** Total device memory, bytes. */
  memoryBytes: number;
  /** Effective HBM bandwidth, bytes/s. */
  bandwidthBytesPerS: number;
  /** Effective attention-kernel throughput, FLOP/s. */
  attentionFlopsPerS: number;
  /** Effective dense matmul throughput (LM head), FLOP/s. */
  matmulFlopsPerS: number;
  /** Prefix of this GPU's Vidur operator files (data/vidur/<prefix>-<model>-mlp.csv). */
  vidurPrefix: string;
}

export interface ModelShape {
  /** Preset name, e.g. '34b'. */
  name: string;
  description: string;
  layers: number;
  dModel: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  mlpHidden: number;
  vocabSize: number;
  /** Context window, tokens. */
  maxPositions: number;
  /** Bytes per weight and per KV-cache element (bf16). */
  bytesPerValue: number;
  /** Model part of the Vidur operator file name (data/vidur/<gpu>-<this>-mlp.csv). */
  vidurModel: string;
}

const MIB = 1024 * 1024;

export const GPUS: Readonly<Record<string, GpuSpec>> = {
  // RTX A6000-class 48 GB edge server (the SLED paper used an RTX 6000): 696 GB/s GDDR6,
  // 149.7 TFLOP/s dense bf16 tensor peak.
  'a40-48gb': {
    name: 'a40-48gb',
    description: 'NVIDIA A40 48 GB (an RTX A6000-class edge server)',
    memoryBytes: 46_068 * MIB,
    bandwidthBytesPerS: 0.8 * 696e9,
    attentionFlopsPerS: 0.55 * 149.7e12,
    matmulFlopsPerS: 0.7 * 149.7e12,
    vidurPrefix: 'a40',
  },
  // A100 SXM4 80 GB (the WISP paper's server): 2,039 GB/s HBM2e, 312 TFLOP/s dense bf16.
  'a100-80gb': {
    name: 'a100-80gb',
    description: 'NVIDIA A100 SXM 80 GB',
    memoryBytes: 81_920 * MIB,
    bandwidthBytesPerS: 0.8 * 2_039e9,
    attentionFlopsPerS: 0.6 * 312e12,
    matmulFlopsPerS: 0.7 * 312e12,
    vidurPrefix: 'a100',
  },
  // H100 SXM5 80 GB: 3,350 GB/s HBM3, 989 TFLOP/s dense bf16.
  'h100-80gb': {
    name: 'h100-80gb',
    description: 'NVIDIA H100 SXM 80 GB',
    memoryBytes: 81_559 * MIB,
    bandwidthBytesPerS: 0.8 * 3_350e9,
    attentionFlopsPerS: 0.4 * 989e12,
    matmulFlopsPerS: 0.6 * 989e12,
    vidurPrefix: 'h100',
  },
};

export const MODELS: Readonly<Record<string, ModelShape>> = {
  '34b': {
    name: '34b',
    description: '34B-class dense decoder (CodeLlama-34B shapes, standing in for Qwen3-32B)',
    layers: 48,
    dModel: 8192,
    heads: 64,
    kvHeads: 8,
    headDim: 128,
    mlpHidden: 22_016,
    vocabSize: 32_000,
    maxPositions: 16_384,
    bytesPerValue: 2,
    vidurModel: 'CodeLlama-34b-Instruct-hf',
  },
  '7b': {
    name: '7b',
    description: '7B-class dense decoder (Llama-2-7B shapes)',
    layers: 32,
    dModel: 4096,
    heads: 32,
    kvHeads: 32,
    headDim: 128,
    mlpHidden: 11_008,
    vocabSize: 32_000,
    maxPositions: 4_096,
    bytesPerValue: 2,
    vidurModel: 'Llama-2-7b-hf',
  },
};

/** Parameters of a gated-MLP (Llama-style) decoder with untied embeddings. */
export function parameterCount(m: ModelShape): number {
  const kvDim = m.kvHeads * m.headDim;
  const perLayer = m.dModel * (m.dModel + 2 * kvDim) + m.dModel * m.dModel + 3 * m.dModel * m.mlpHidden + 2 * m.dModel;
  return m.layers * perLayer + 2 * m.vocabSize * m.dModel + m.dModel;
}

export function weightBytes(m: ModelShape): number {
  return parameterCount(m) * m.bytesPerValue;
}

/** KV-cache bytes one token occupies in one layer (its key and value). */
export function kvBytesPerTokenPerLayer(m: ModelShape): number {
  return 2 * m.kvHeads * m.headDim * m.bytesPerValue;
}

/** KV-cache bytes one token occupies across all layers. */
export function kvBytesPerToken(m: ModelShape): number {
  return m.layers * kvBytesPerTokenPerLayer(m);
}
