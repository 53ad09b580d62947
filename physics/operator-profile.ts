/**
 * The linear side of one forward pass, from Vidur's measured per-operator timings
 * (data/vidur/, provenance in data/vidur/README.md). Pure: takes the CSV text.
 *
 * Per pass of T tokens (the sum over its members — linear operators see one flat token matrix,
 * whatever the requests):
 *   linearMs(T) = layers × Σ_op median_op(T)  +  emb(T)
 * with the ops of one layer: input_layernorm, attn_pre_proj (QKV), attn_rope, attn_post_proj
 * (output projection), post_attention_layernorm, mlp_up_proj, mlp_act, mlp_down_proj, add.
 *
 * Matmul timings wobble with tile sizes (A100 34B: 54.7 ms at 96 tokens, 51.8 at 128), and a
 * pass with more tokens cannot honestly be modelled as cheaper, so the per-layer curve is made
 * monotone by isotonic regression (pool adjacent violators) before interpolating linearly
 * between measured token counts. Past the largest measured count the pass is compute-bound
 * and scales in proportion to T.
 */
import { WispError } from '../common/errors.ts';

export class OperatorProfileError extends WispError {
  constructor(message: string) {
    super('bad_operator_profile', message);
  }
}

/** The operators of one layer summed per pass (Vidur's mlp.csv column stems). */
export const LAYER_OPERATORS = [
  'input_layernorm',
  'attn_pre_proj',
  'attn_rope',
  'attn_post_proj',
  'post_attention_layernorm',
  'mlp_up_proj',
  'mlp_act',
  'mlp_down_proj',
  'add',
] as const;

/** A monotone curve of the linear operators' time against tokens in the pass. */
export interface LinearCurve {
  /** Measured token counts, ascending, distinct. */
  tokens: number[];
  /** Per-layer time at each count after isotonic smoothing, ms (non-decreasing). */
  layerMs: number[];
  /** Embedding lookup time at each count, ms (non-decreasing). */
  embMs: number[];
  /** The raw per-layer medians (before smoothing), ms, for reports and tests. */
  rawLayerMs: number[];
  /** Model shape columns of the file (n_embd etc.), for checking it against a preset. */
  shape: { heads: number; kvHeads: number; dModel: number; mlpHidden: number };
}

/**
 * Parses a Vidur mlp.csv and builds the curve from its rows at tensor-parallel degree `tp`
 * (repeated token counts are averaged).
 * @throws OperatorProfileError on a missing column, a bad number, or no rows at that degree
 */
export function parseVidurMlpCsv(text: string, source: string, tp = 1): LinearCurve {
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '');
  if (lines.length < 2) throw new OperatorProfileError(`${source}: no data rows`);
  const header = lines[0].split(',');
  const col = (name: string): number => {
    const i = header.indexOf(name);
    if (i < 0) throw new OperatorProfileError(`${source}: missing column ${name}`);
    return i;
  };
  const opCols = LAYER_OPERATORS.map((op) => col(`time_stats.${op}.median`));
  const embCol = col('time_stats.emb.median');
  const tokCol = col('num_tokens');
  const tpCol = col('num_tensor_parallel_workers');
  const shapeCols = { heads: col('n_head'), kvHeads: col('n_kv_head'), dModel: col('n_embd'), mlpHidden: col('n_expanded_embd') };
  const byTokens = new Map<number, { layer: number; emb: number; count: number }>();
  let shape: LinearCurve['shape'] | null = null;
  for (let i = 1; i < lines.length; i++) {
    const cells = lines[i].split(',');
    const num = (c: number, what: string): number => {
      const v = Number(cells[c]);
      if (!Number.isFinite(v) || v < 0) throw new OperatorProfileError(`${source}:${i + 1}: ${what} is not a number ≥ 0 ("${cells[c]}")`);
      return v;
    };
    if (num(tpCol, 'num_tensor_parallel_workers') !== tp) continue;
    const t = num(tokCol, 'num_tokens');
    if (!Number.isInteger(t) || t < 1) throw new OperatorProfileError(`${source}:${i + 1}: num_tokens must be an integer ≥ 1`);
    let layer = 0;
    opCols.forEach((c, j) => (layer += num(c, LAYER_OPERATORS[j])));
    const emb = num(embCol, 'emb');
    const prev = byTokens.get(t) ?? { layer: 0, emb: 0, count: 0 };
    byTokens.set(t, { layer: prev.layer + layer, emb: prev.emb + emb, count: prev.count + 1 });
    shape ??= { heads: num(shapeCols.heads, 'n_head'), kvHeads: num(shapeCols.kvHeads, 'n_kv_head'), dModel: num(shapeCols.dModel, 'n_embd'), mlpHidden: num(shapeCols.mlpHidden, 'n_expanded_embd') };
  }
  if (byTokens.size === 0 || shape === null) throw new OperatorProfileError(`${source}: no rows at tensor-parallel degree ${tp}`);
  const tokens = [...byTokens.keys()].sort((a, b) => a - b);
  const rawLayerMs = tokens.map((t) => byTokens.get(t)!.layer / byTokens.get(t)!.count);
  const rawEmb = tokens.map((t) => byTokens.get(t)!.emb / byTokens.get(t)!.count);
  return { tokens, layerMs: isotonic(rawLayerMs), embMs: isotonic(rawEmb), rawLayerMs, shape };
}

/** Least-squares non-decreasing fit of `ys` (pool adjacent violators, equal weights). */
export function isotonic(ys: readonly number[]): number[] {
  const blocks: { sum: number; n: number }[] = [];
  for (const y of ys) {
    blocks.push({ sum: y, n: 1 });
    while (blocks.length > 1) {
      const b = blocks[blocks.length - 1];
      const a = blocks[blocks.length - 2];
      if (a.sum / a.n <= b.sum / b.n) break;
      blocks.splice(blocks.length - 2, 2, { sum: a.sum + b.sum, n: a.n + b.n });
    }
  }
  const out: number[] = [];
  for (const b of blocks) for (let i = 0; i < b.n; i++) out.push(b.sum / b.n);
  return out;
}

/** Interpolates `values` (a non-decreasing curve at `tokens`) at T tokens; 0 for T ≤ 0. */
function interpolate(tokens: readonly number[], values: readonly number[], T: number): number {
  if (T <= 0) return 0;
  const n = tokens.length;
  if (T <= tokens[0]) return values[0];
  if (T >= tokens[n - 1]) return values[n - 1] * (T / tokens[n - 1]);
  let lo = 0;
  let hi = n - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (tokens[mid] <= T) lo = mid;
    else hi = mid;
  }
  const f = (T - tokens[lo]) / (tokens[hi] - tokens[lo]);
  return values[lo] + f * (values[hi] - values[lo]);
}

/** Time of the linear operators of one layer for a pass of T tokens, ms. */
export function layerLinearMs(c: LinearCurve, T: number): number {
  return interpolate(c.tokens, c.layerMs, T);
}

/** Embedding lookup time for a pass of T tokens, ms. */
export function embeddingMs(c: LinearCurve, T: number): number {
  return interpolate(c.tokens, c.embMs, T);
}
