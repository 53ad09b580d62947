/**
 * The serving-engine cost model: the time of one forward pass of a production engine (vLLM,
 * SGLang, TensorRT-LLM class — unpadded varlen batches, FlashAttention-class kernels, CUDA
 * graphs) from its members. Pure; shared by the simulator (sim/server-cost.ts), the cost-model
 * runner (inference/cost-model-runner.ts) and `wisp server-cost`.
 *
 * A pass of members i = 1..m, each feeding n_i new tokens over L_i cached ones, T = Σ n_i:
 * - linear  = the measured linear operators at T tokens (physics/operator-profile.ts);
 * - attention, per layer: max(memory, compute) + a kernel floor, where
 *     memory  = Σ (L_i + n_i) × KV bytes per token per layer ÷ effective bandwidth,
 *     compute = Σ FLOPs_i ÷ effective attention FLOP/s,
 *     FLOPs_i = 4·n_i·L_i·d  +  4·n_i²·d  (verify/decode: every new token sees all of them)
 *                          or  2·n_i²·d  (a prompt or prompt chunk: causal within itself);
 * - lmHead  = logits only where needed (every verified position, a prompt's last token):
 *             max(2·R·d·V ÷ matmul FLOP/s, the head's weights ÷ bandwidth), R = Σ logit rows;
 * - overhead = the engine's per-iteration work (scheduling, sampling), a parameter.
 * Decode is memory-bound: up to the knee of the linear curve (~64–128 tokens on an A100 for
 * a 34B model, more on an H100) another session's tokens cost almost nothing.
 */
import { WispError } from '../common/errors.ts';
import { kvBytesPerToken, kvBytesPerTokenPerLayer, weightBytes, type GpuSpec, type ModelShape } from './hardware.ts';
import { embeddingMs, layerLinearMs, type LinearCurve } from './operator-profile.ts';

export class PassCostError extends WispError {
  constructor(message: string) {
    super('bad_pass', message);
  }
}

/** One member of a forward pass. */
export interface PassMember {
  /** Tokens it feeds in this pass (≥ 1). */
  newTokens: number;
  /** Tokens already in its KV cache (≥ 0). */
  cachedTokens: number;
  /** Positions whose logits are computed (verify: every fed token; prompt: its last; a middle chunk: 0). */
  logitTokens: number;
  /** A prompt or prompt chunk (causal attention within its new tokens). */
  prefill: boolean;
}

/** Where a pass's time goes, ms. */
export interface PassCostParts {
  linear: number;
  attention: number;
  lmHead: number;
  overhead: number;
}

export interface PassCost {
  ms: number;
  parts: PassCostParts;
}

/** Knobs of the engine beyond the GPU and the model. */
export interface EngineOptions {
  /** Per-iteration engine overhead (scheduling, sampling), ms. Default 2. */
  overheadMs?: number;
  /** Attention kernel launch floor per layer, ms. Default 0.01. */
  attentionFloorMsPerLayer?: number;
  /** Share of device memory the engine may use (vLLM's gpu_memory_utilization). Default 0.9. */
  memoryUtilisation?: number;
  /** Memory kept for activations beyond the weights and the KV cache, bytes. Default 1 GiB. */
  activationReserveBytes?: number;
}

/** A serving engine: one GPU running one model. */
export interface EngineModel {
  /** `gpu/model`, e.g. 'a100-80gb/34b'. */
  id: string;
  gpu: GpuSpec;
  model: ModelShape;
  linear: LinearCurve;
  overheadMs: number;
  attentionFloorMsPerLayer: number;
  memoryUtilisation: number;
  activationReserveBytes: number;
}

export const ENGINE_DEFAULTS = {
  overheadMs: 2,
  attentionFloorMsPerLayer: 0.01,
  memoryUtilisation: 0.9,
  activationReserveBytes: 1024 ** 3,
} as const;

/** Bytes of memory left for the KV cache (may be ≤ 0 when the weights do not fit). */
export function kvBudgetBytes(gpu: GpuSpec, model: ModelShape, o: EngineOptions = {}): number {
  const util = o.memoryUtilisation ?? ENGINE_DEFAULTS.memoryUtilisation;
  const reserve = o.activationReserveBytes ?? ENGINE_DEFAULTS.activationReserveBytes;
  return gpu.memoryBytes * util - weightBytes(model) - reserve;
}

/** @throws PassCostError when the model's weights and one full-context KV cache do not fit the GPU */
export function checkFits(gpu: GpuSpec, model: ModelShape, o: EngineOptions = {}): void {
  const budget = kvBudgetBytes(gpu, model, o);
  // At least one full context must fit, or the pair cannot serve a single session.
  if (budget < model.maxPositions * kvBytesPerToken(model)) {
    const gb = (b: number): string => (b / 1e9).toFixed(1);
    throw new PassCostError(
      `model ${model.name} does not fit on ${gpu.name}: ${gb(weightBytes(model))} GB of bf16 weights and a ${model.maxPositions}-token KV cache need more than the ${gb(gpu.memoryBytes * (o.memoryUtilisation ?? ENGINE_DEFAULTS.memoryUtilisation))} GB the engine may use`,
    );
  }
}

/**
 * An engine from its parts.
 * @throws PassCostError when the model's weights (and a minimal cache) do not fit the GPU
 */
export function engineModel(gpu: GpuSpec, model: ModelShape, linear: LinearCurve, o: EngineOptions = {}): EngineModel {
  checkFits(gpu, model, o);
  return {
    id: `${gpu.name}/${model.name}`,
    gpu,
    model,
    linear,
    overheadMs: o.overheadMs ?? ENGINE_DEFAULTS.overheadMs,
    attentionFloorMsPerLayer: o.attentionFloorMsPerLayer ?? ENGINE_DEFAULTS.attentionFloorMsPerLayer,
    memoryUtilisation: o.memoryUtilisation ?? ENGINE_DEFAULTS.memoryUtilisation,
    activationReserveBytes: o.activationReserveBytes ?? ENGINE_DEFAULTS.activationReserveBytes,
  };
}

/** Tokens the KV cache holds when the rest of memory is given to it. */
export function kvCapacityTokens(e: EngineModel): number {
  return Math.floor(kvBudgetBytes(e.gpu, e.model, e) / kvBytesPerToken(e.model));
}

/** Running sums of a pass under construction (what passCost needs, without the member list). */
export interface PassTotals {
  members: number;
  tokens: number;
  /** Σ (L_i + n_i): KV positions attention reads. */
  kvTokens: number;
  /** Σ attention FLOPs per layer ÷ d_model. */
  attentionWork: number;
  logitTokens: number;
}

export const EMPTY_TOTALS: Readonly<PassTotals> = { members: 0, tokens: 0, kvTokens: 0, attentionWork: 0, logitTokens: 0 };

function check(m: PassMember): void {
  if (!(Number.isInteger(m.newTokens) && m.newTokens >= 1)) throw new PassCostError(`a pass member needs an integer newTokens ≥ 1, got ${m.newTokens}`);
  if (!(Number.isInteger(m.cachedTokens) && m.cachedTokens >= 0)) throw new PassCostError(`a pass member needs an integer cachedTokens ≥ 0, got ${m.cachedTokens}`);
  if (!(Number.isInteger(m.logitTokens) && m.logitTokens >= 0 && m.logitTokens <= m.newTokens)) {
    throw new PassCostError(`logitTokens must be an integer in [0, newTokens], got ${m.logitTokens} of ${m.newTokens}`);
  }
}

/** `t` with member `m` added (a new object). */
export function addToTotals(t: PassTotals, m: PassMember): PassTotals {
  check(m);
  const n = m.newTokens;
  const L = m.cachedTokens;
  return {
    members: t.members + 1,
    tokens: t.tokens + n,
    kvTokens: t.kvTokens + L + n,
    attentionWork: t.attentionWork + 4 * n * L + (m.prefill ? 2 : 4) * n * n,
    logitTokens: t.logitTokens + m.logitTokens,
  };
}

export function totalsOf(members: readonly PassMember[]): PassTotals {
  let t: PassTotals = EMPTY_TOTALS;
  for (const m of members) t = addToTotals(t, m);
  return t;
}

/** The modelled time of a pass with these totals, ms, with its breakdown (0 for an empty pass). */
export function passCostOfTotals(e: EngineModel, t: PassTotals): PassCost {
  if (t.members === 0) return { ms: 0, parts: { linear: 0, attention: 0, lmHead: 0, overhead: 0 } };
  const { model, gpu } = e;
  const linear = model.layers * layerLinearMs(e.linear, t.tokens) + embeddingMs(e.linear, t.tokens);
  const memoryS = (t.kvTokens * kvBytesPerTokenPerLayer(model)) / gpu.bandwidthBytesPerS;
  const computeS = (t.attentionWork * model.dModel) / gpu.attentionFlopsPerS;
  const attention = model.layers * (1_000 * Math.max(memoryS, computeS) + e.attentionFloorMsPerLayer);
  const headBytes = model.vocabSize * model.dModel * model.bytesPerValue;
  const lmHead = t.logitTokens === 0 ? 0 : 1_000 * Math.max((2 * t.logitTokens * model.dModel * model.vocabSize) / gpu.matmulFlopsPerS, headBytes / gpu.bandwidthBytesPerS);
  const overhead = e.overheadMs;
  return { ms: linear + attention + lmHead + overhead, parts: { linear, attention, lmHead, overhead } };
}

/** The modelled time of one forward pass, ms, with its breakdown. */
export function passCost(e: EngineModel, members: readonly PassMember[]): PassCost {
  return passCostOfTotals(e, totalsOf(members));
}

/** A decode/verify member: n new tokens over L cached, logits at every one. */
export function verifyMember(n: number, L: number): PassMember {
  return { newTokens: n, cachedTokens: L, logitTokens: n, prefill: false };
}

/** A prompt (or its last chunk) of n tokens over L cached: logits at its last token only. */
export function prefillMember(n: number, L = 0, last = true): PassMember {
  return { newTokens: n, cachedTokens: L, logitTokens: last ? 1 : 0, prefill: true };
}
