/**
 * Per-forge calibration of β: finds the residual-branch scale of layers ≥ 1 at which the
 * target's greedy (argmax) agreement with its 1-layer draft, teacher-forced over the forge
 * corpus, is the requested `agreement`. One ORT session of a calibration graph that takes β as
 * an input evaluates every candidate (β = 0 is exactly the draft), so no re-forging is needed.
 */
import * as ort from 'onnxruntime-node';
import { buildDecoderOnnx } from './decoder-graph.ts';
import type { DecoderWeights } from './weights.ts';

export interface CalibrationResult {
  beta: number;
  /** Teacher-forced agreement measured at `beta` on the calibration positions. */
  agreement: number;
  evaluations: number;
  positions: number;
}

/** Stop when the measured agreement is this close to the goal. */
const TOLERANCE = 0.01;
const MAX_EVALUATIONS = 8;
const MAX_BETA = 4;

function argmaxRows(logits: Float32Array, rows: number, V: number): Int32Array {
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const off = r * V;
    let best = 0;
    let bestValue = logits[off];
    for (let i = 1; i < V; i++) {
      if (logits[off + i] > bestValue) {
        bestValue = logits[off + i];
        best = i;
      }
    }
    out[r] = best;
  }
  return out;
}

/**
 * Finds β for `goal` agreement. `weights` must have layers ≥ 1 at branch scale 1.
 * `sequences` are equal-length token sequences (teacher-forced positions).
 */
export async function calibrateBeta(
  weights: DecoderWeights,
  sequences: number[][],
  goal: number,
  initialBeta: number,
  layerNormEps: number,
): Promise<CalibrationResult> {
  const { numLayers: L, numKvHeads: Hkv, headDim: Dh, vocabSize: V } = weights.dims;
  const B = sequences.length;
  const S = sequences[0].length;
  const bytes = buildDecoderOnnx(weights, { numLayers: L, merged: false, name: 'wisp-calibration', layerNormEps, betaInput: true });
  // One thread: the argmax counts (and so β and the forged bytes) must not depend on the core count.
  const session = await ort.InferenceSession.create(bytes, {
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
  });
  try {
    const ids = new BigInt64Array(B * S);
    const pos = new BigInt64Array(B * S);
    for (let b = 0; b < B; b++) {
      for (let j = 0; j < S; j++) {
        ids[b * S + j] = BigInt(sequences[b][j]);
        pos[b * S + j] = BigInt(j);
      }
    }
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [B, S]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(B * S).fill(1n), [B, S]),
      position_ids: new ort.Tensor('int64', pos, [B, S]),
    };
    const empty = new Float32Array(0);
    for (let l = 0; l < L; l++) {
      feeds[`past_key_values.${l}.key`] = new ort.Tensor('float32', empty, [B, Hkv, 0, Dh]);
      feeds[`past_key_values.${l}.value`] = new ort.Tensor('float32', empty, [B, Hkv, 0, Dh]);
    }
    const rows = B * S;
    const argmaxAt = async (beta: number): Promise<Int32Array> => {
      feeds.wisp_beta = new ort.Tensor('float32', Float32Array.of(beta), [1]);
      const out = await session.run(feeds, ['logits']);
      return argmaxRows(out.logits.data as Float32Array, rows, V);
    };
    const draft = await argmaxAt(0);
    let evaluations = 1;
    const agreementAt = async (beta: number): Promise<number> => {
      const target = await argmaxAt(beta);
      evaluations++;
      let same = 0;
      for (let r = 0; r < rows; r++) if (target[r] === draft[r]) same++;
      return same / rows;
    };
    // f(β) = agreement(β) − goal falls with β; f(0) = 1 − goal > 0. Bracket, then Illinois regula falsi.
    let best = { beta: initialBeta, agreement: await agreementAt(initialBeta) };
    const consider = (beta: number, agreement: number): void => {
      if (Math.abs(agreement - goal) < Math.abs(best.agreement - goal)) best = { beta, agreement };
    };
    let lo = { beta: 0, f: 1 - goal };
    let hi = { beta: initialBeta, f: best.agreement - goal };
    if (hi.f > 0) {
      lo = hi;
      hi = { beta: Number.NaN, f: 0 };
      let beta = lo.beta;
      while (evaluations < MAX_EVALUATIONS && beta < MAX_BETA) {
        beta = Math.min(MAX_BETA, beta * 2);
        const a = await agreementAt(beta);
        consider(beta, a);
        if (a - goal <= 0) {
          hi = { beta, f: a - goal };
          break;
        }
        lo = { beta, f: a - goal };
      }
      if (Number.isNaN(hi.beta)) return { ...best, evaluations, positions: rows };
    }
    let side = 0;
    while (evaluations < MAX_EVALUATIONS && Math.abs(best.agreement - goal) > TOLERANCE) {
      const beta = hi.beta - (hi.f * (hi.beta - lo.beta)) / (hi.f - lo.f);
      const a = await agreementAt(beta);
      consider(beta, a);
      const f = a - goal;
      if (f > 0) {
        lo = { beta, f };
        if (side === 1) hi.f /= 2;
        side = 1;
      } else {
        hi = { beta, f };
        if (side === -1) lo.f /= 2;
        side = -1;
      }
    }
    return { ...best, evaluations, positions: rows };
  } finally {
    await session.release();
  }
}
