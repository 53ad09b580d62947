/**
 * Writes a GPT-style decoder as an ONNX graph in the Hugging Face Optimum layout:
 * inputs `input_ids`, `attention_mask`, `position_ids`, `past_key_values.{i}.key|value`
 * (+ `use_cache_branch` when merged); outputs `logits`, `present.{i}.key|value`.
 * Masking as an exported model does it: query j of the new section sees keys at index
 * ≤ past + j and none where attention_mask is 0 (−1e9, not −inf, so all-masked rows stay finite).
 */
import { DT, GraphBuilder } from './onnx-builder.ts';
import type { DecoderWeights } from './weights.ts';

export interface DecoderGraphOptions {
  /** How many of the weights' layers to include (a draft uses the first few). */
  numLayers: number;
  /** Add Optimum's `use_cache_branch` bool [1] input: false → past inputs are ignored. */
  merged: boolean;
  name: string;
  layerNormEps: number;
  /**
   * Calibration only: a float [1] input `wisp_beta` multiplies the residual branches of layers
   * ≥ 1 (whose weights are then unscaled), so one session evaluates any β (0 → the 1-layer draft).
   */
  betaInput?: boolean;
}

/** Serialises the decoder (first `numLayers` layers of `w`) to ONNX bytes. */
export function buildDecoderOnnx(w: DecoderWeights, o: DecoderGraphOptions): Uint8Array {
  const { vocabSize: V, hiddenSize: d, numHeads: H, numKvHeads: Hkv, headDim: Dh } = w.dims;
  const g = new GraphBuilder(o.name);
  const B = 'batch_size';
  const S = 'sequence_length';
  const P = 'past_sequence_length';
  const T = 'total_sequence_length';
  const inputIds = g.input('input_ids', DT.INT64, [B, S]);
  const attentionMask = g.input('attention_mask', DT.INT64, [B, T]);
  const positionIds = g.input('position_ids', DT.INT64, [B, S]);
  const pastNames: Array<[string, string]> = [];
  for (let i = 0; i < o.numLayers; i++) {
    pastNames.push([
      g.input(`past_key_values.${i}.key`, DT.FLOAT, [B, Hkv, P, Dh]),
      g.input(`past_key_values.${i}.value`, DT.FLOAT, [B, Hkv, P, Dh]),
    ]);
  }
  const useCache = o.merged ? g.input('use_cache_branch', DT.BOOL, [1]) : null;
  const betaIn = o.betaInput ? g.input('wisp_beta', DT.FLOAT, [1]) : null;
  const branch = (layer: number, out: string): string => (betaIn && layer > 0 ? g.op('Mul', [out, betaIn]) : out);
  g.output('logits', DT.FLOAT, [B, S, V]);
  for (let i = 0; i < o.numLayers; i++) {
    g.output(`present.${i}.key`, DT.FLOAT, [B, Hkv, T, Dh]);
    g.output(`present.${i}.value`, DT.FLOAT, [B, Hkv, T, Dh]);
  }

  // Shared mask: bias [B, 1, 1, S, T] = 0 where key k ≤ past + q and attention_mask[k] = 1, else −1e9.
  const one = g.int64Const([1], true);
  const zero = g.int64Const([0], true);
  const seqLen = g.op('Gather', [g.op('Shape', [inputIds]), one], { axis: 0 });
  const totalLen = g.op('Gather', [g.op('Shape', [attentionMask]), one], { axis: 0 });
  const pastLen = g.op('Sub', [totalLen, seqLen]);
  const keyPos = g.op('Range', [zero, totalLen, one]);
  const queryPos = g.op('Add', [g.op('Range', [zero, seqLen, one]), pastLen]);
  const causal = g.op('LessOrEqual', [keyPos, g.op('Unsqueeze', [queryPos, g.int64Const([1])])]);
  const padOk = g.op('Unsqueeze', [g.op('Cast', [attentionMask], { to: DT.BOOL }), g.int64Const([1, 2, 3])]);
  const allowed = g.op('And', [causal, padOk]);
  const maskBias = g.op('Where', [allowed, g.floatConst([0]), g.floatConst([-1e9])]);
  // Merged decoders: use_cache_branch = false slices every past to length 0.
  const pastEnd = useCache
    ? g.op('Where', [useCache, g.int64Const([Number.MAX_SAFE_INTEGER]), g.int64Const([0])])
    : null;

  const eps = { float: o.layerNormEps };
  let x = g.op('Add', [
    g.op('Gather', [g.floatInit('transformer.wte.weight', [V, d], w.wte), inputIds], { axis: 0 }),
    g.op('Gather', [g.floatInit('transformer.wpe.weight', [w.dims.maxPositions, d], w.wpe), positionIds], { axis: 0 }),
  ]);
  const group = H / Hkv;
  const qkvSplit = g.int64Const([H * Dh, Hkv * Dh, Hkv * Dh]);
  for (let i = 0; i < o.numLayers; i++) {
    const L = w.layers[i];
    const pre = `transformer.h.${i}`;
    const h = g.op('LayerNormalization', [x, g.floatInit(`${pre}.ln_1.weight`, [d], L.ln1Scale), g.floatInit(`${pre}.ln_1.bias`, [d], L.ln1Bias)], { axis: -1, epsilon: eps });
    const qkv = g.op('MatMul', [h, g.floatInit(`${pre}.attn.qkv.weight`, [d, (H + 2 * Hkv) * Dh], L.qkv)]);
    const [q, k, v] = g.node('Split', [qkv, qkvSplit], { axis: -1 }, 3);
    // q: [B,S,H·Dh] → [B,S,Hkv,g,Dh] → [B,Hkv,g,S,Dh] (query heads grouped under their kv head)
    const q5 = g.op('Transpose', [g.op('Reshape', [q, g.int64Const([0, 0, Hkv, group, Dh])])], { perm: [0, 2, 3, 1, 4] });
    const kNew = g.op('Transpose', [g.op('Reshape', [k, g.int64Const([0, 0, Hkv, Dh])])], { perm: [0, 2, 1, 3] });
    const vNew = g.op('Transpose', [g.op('Reshape', [v, g.int64Const([0, 0, Hkv, Dh])])], { perm: [0, 2, 1, 3] });
    let [pastK, pastV] = pastNames[i];
    if (pastEnd) {
      const starts = g.int64Const([0]);
      const axes = g.int64Const([2]);
      pastK = g.op('Slice', [pastK, starts, pastEnd, axes]);
      pastV = g.op('Slice', [pastV, starts, pastEnd, axes]);
    }
    const presentK = g.op('Concat', [pastK, kNew], { axis: 2 }, `present.${i}.key`);
    const presentV = g.op('Concat', [pastV, vNew], { axis: 2 }, `present.${i}.value`);
    // Unsqueeze before Transpose, so onnxruntime fuses the Transpose into the MatMul (transB).
    const kT = g.op('Transpose', [g.op('Unsqueeze', [presentK, g.int64Const([2])])], { perm: [0, 1, 2, 4, 3] });
    const scores = g.op('Add', [g.op('MatMul', [q5, kT]), maskBias]);
    const probs = g.op('Softmax', [scores], { axis: -1 });
    const ctx5 = g.op('MatMul', [probs, g.op('Unsqueeze', [presentV, g.int64Const([2])])]);
    const ctx = g.op('Reshape', [g.op('Transpose', [ctx5], { perm: [0, 3, 1, 2, 4] }), g.int64Const([0, 0, H * Dh])]);
    x = g.op('Add', [x, branch(i, g.op('MatMul', [ctx, g.floatInit(`${pre}.attn.c_proj.weight`, [H * Dh, d], L.attnOut)]))]);
    const h2 = g.op('LayerNormalization', [x, g.floatInit(`${pre}.ln_2.weight`, [d], L.ln2Scale), g.floatInit(`${pre}.ln_2.bias`, [d], L.ln2Bias)], { axis: -1, epsilon: eps });
    const up = g.op('MatMul', [h2, g.floatInit(`${pre}.mlp.c_fc.weight`, [d, w.dims.intermediateSize], L.mlpUp)]);
    // GELU, erf form (the Gelu op needs opset 20).
    const gelu = g.op('Mul', [g.op('Mul', [up, g.op('Add', [g.op('Erf', [g.op('Mul', [up, g.floatConst([Math.SQRT1_2])])]), g.floatConst([1])])]), g.floatConst([0.5])]);
    x = g.op('Add', [x, branch(i, g.op('MatMul', [gelu, g.floatInit(`${pre}.mlp.c_proj.weight`, [w.dims.intermediateSize, d], L.mlpDown)]))]);
  }
  const xf = g.op('LayerNormalization', [x, g.floatInit('transformer.ln_f.weight', [d], w.lnfScale), g.floatInit('transformer.ln_f.bias', [d], w.lnfBias)], { axis: -1, epsilon: eps });
  g.op('MatMul', [xf, g.floatInit('lm_head.weight', [d, V], w.lmHead)], {}, 'logits');
  return g.toBytes(`${o.name}: GPT-style decoder forged by wisp (layers=${o.numLayers}, d=${d}, heads=${H}/${Hkv})`);
}
