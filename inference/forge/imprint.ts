/**
 * Imprints a text's bigram statistics into a decoder's embedding and LM head, so that
 * `lmHead(layerNorm(embed(t))) ≈ log P(next | t)` (up to a per-row constant, which softmax
 * ignores). The sparse bigram log-ratio matrix is factorised at rank r = d − 2 with a randomized
 * range finder; the two spare dimensions keep every embedding row zero-mean (one) and of equal
 * norm (the other), so the final LayerNorm passes the imprint through unchanged.
 */
import { Prng } from './prng.ts';

/** Embedding [V, d] and LM head [d, V], row-major. */
export interface Imprint {
  wte: Float32Array;
  lmHead: Float32Array;
}

export interface ImprintOptions {
  /** Token ids of the training text (documents separated by EOS). */
  sequence: number[];
  vocabSize: number;
  hiddenSize: number;
  /** Bigram smoothing: logit of a continuation seen c times is log(1 + c/alpha) above unseen ones. */
  alpha: number;
  /** Ids the tokenizer can produce (< vocabSize); others get no probability mass to speak of. */
  usableVocab: number;
  /** Power iterations of the range finder (more → closer to the best rank-r fit). */
  powerIterations: number;
  prng: Prng;
}

/** Sparse rows of the bigram log-ratio matrix: one row per distinct context, shared rows merged. */
interface SparseRows {
  /** rowOf[token] = index into cols/vals (every token maps to a row; unseen ones share the backoff row). */
  rowOf: Int32Array;
  cols: number[][];
  vals: number[][];
}

function bigramRows(o: ImprintOptions): SparseRows {
  const V = o.vocabSize;
  const next = new Map<number, Map<number, number>>();
  const unigram = new Map<number, number>();
  for (let i = 0; i + 1 < o.sequence.length; i++) {
    const a = o.sequence[i];
    const b = o.sequence[i + 1];
    let m = next.get(a);
    if (!m) next.set(a, (m = new Map()));
    m.set(b, (m.get(b) ?? 0) + 1);
    unigram.set(b, (unigram.get(b) ?? 0) + 1);
  }
  const cols: number[][] = [];
  const vals: number[][] = [];
  const rowOf = new Int32Array(V);
  const pushRow = (m: Map<number, number>, scale: number): number => {
    const entries = Array.from(m.entries()).sort((x, y) => x[0] - y[0]);
    cols.push(entries.map((e) => e[0]));
    vals.push(entries.map((e) => Math.log1p((e[1] * scale) / o.alpha)));
    return cols.length - 1;
  };
  // Backoff for contexts never seen: the unigram distribution, scaled to one observation's mass.
  const total = o.sequence.length;
  const backoff = pushRow(unigram, 1 / Math.max(1, total / 64));
  rowOf.fill(backoff);
  const seen = Array.from(next.keys()).sort((x, y) => x - y);
  for (const a of seen) rowOf[a] = pushRow(next.get(a)!, 1);
  return { rowOf, cols, vals };
}

/** Orthonormalises the columns of a row-major [n, k] matrix in place (modified Gram–Schmidt). */
function orthonormalizeColumns(m: Float64Array, n: number, k: number): void {
  for (let j = 0; j < k; j++) {
    for (let p = 0; p < j; p++) {
      let dot = 0;
      for (let i = 0; i < n; i++) dot += m[i * k + j] * m[i * k + p];
      for (let i = 0; i < n; i++) m[i * k + j] -= dot * m[i * k + p];
    }
    let norm = 0;
    for (let i = 0; i < n; i++) norm += m[i * k + j] * m[i * k + j];
    norm = Math.sqrt(norm);
    const inv = norm > 1e-12 ? 1 / norm : 0;
    for (let i = 0; i < n; i++) m[i * k + j] *= inv;
  }
}

/**
 * Builds the imprinted embedding and LM head.
 * @returns wte [V, d] with zero-mean rows of RMS 1, lmHead [d, V].
 */
export function imprintBigrams(o: ImprintOptions): Imprint {
  const V = o.vocabSize;
  const d = o.hiddenSize;
  const r = d - 2;
  const rows = bigramRows(o);
  const R = rows.cols.length;
  // Row-space sketch: Y = M Ω (R × r), Ω Gaussian over the V columns.
  const omega = new Float64Array(V * r);
  const rng = o.prng;
  for (let i = 0; i < omega.length; i++) omega[i] = rng.normal();
  const mulM = (x: Float64Array): Float64Array => {
    // (R × V sparse) · (V × r dense)
    const y = new Float64Array(R * r);
    for (let row = 0; row < R; row++) {
      const c = rows.cols[row];
      const v = rows.vals[row];
      for (let e = 0; e < c.length; e++) {
        const w = v[e];
        const src = c[e] * r;
        const dst = row * r;
        for (let j = 0; j < r; j++) y[dst + j] += w * x[src + j];
      }
    }
    return y;
  };
  const mulMt = (y: Float64Array): Float64Array => {
    // (V × R sparse transpose) · (R × r dense)
    const x = new Float64Array(V * r);
    for (let row = 0; row < R; row++) {
      const c = rows.cols[row];
      const v = rows.vals[row];
      for (let e = 0; e < c.length; e++) {
        const w = v[e];
        const dst = c[e] * r;
        const src = row * r;
        for (let j = 0; j < r; j++) x[dst + j] += w * y[src + j];
      }
    }
    return x;
  };
  let q = mulM(omega);
  orthonormalizeColumns(q, R, r);
  for (let it = 0; it < o.powerIterations; it++) {
    // M Mᵀ Q squares the condition number: Gram–Schmidt twice ("twice is enough") keeps Q orthonormal.
    q = mulM(mulMt(q));
    orthonormalizeColumns(q, R, r);
    orthonormalizeColumns(q, R, r);
  }
  // M ≈ Q (Qᵀ M): row factors A = Q (R × r), column factors Bf = Mᵀ Q (V × r).
  const bf = mulMt(q);

  // Every row gets norm √d (RMS 1): imprint part scaled by kappa, the rest on the slack direction.
  let maxNorm = 1e-12;
  const rowNorm = new Float64Array(R);
  for (let row = 0; row < R; row++) {
    let s = 0;
    for (let j = 0; j < r; j++) s += q[row * r + j] ** 2;
    rowNorm[row] = Math.sqrt(s);
    if (rowNorm[row] > maxNorm) maxNorm = rowNorm[row];
  }
  const kappa = (0.95 * Math.sqrt(d)) / maxNorm;
  const synth = zeroMeanBasis(d, rng);
  const coeffs = new Float64Array(d - 1); // [imprint 0..r-1, slack]
  const vec = new Float64Array(d);
  const rowVec = new Float64Array(R * d);
  for (let row = 0; row < R; row++) {
    for (let j = 0; j < r; j++) coeffs[j] = kappa * q[row * r + j];
    coeffs[r] = Math.sqrt(Math.max(0, d - (kappa * rowNorm[row]) ** 2));
    synth(coeffs, vec);
    rowVec.set(vec, row * d);
  }
  const wte = new Float32Array(V * d);
  for (let t = 0; t < V; t++) wte.set(rowVec.subarray(rows.rowOf[t] * d, (rows.rowOf[t] + 1) * d), t * d);

  // LM head [d, V]: column u = (1/kappa) Σ_j Bf[u, j] p_j. Ids the tokenizer cannot produce read
  // the slack direction negatively: every row's slack is ≥ √(d − 0.95²·d), so their logit is ≤ −30.
  const lmHead = new Float32Array(d * V);
  const minSlack = Math.sqrt(d - 0.95 * 0.95 * d);
  for (let u = 0; u < V; u++) {
    for (let j = 0; j < r; j++) coeffs[j] = bf[u * r + j] / kappa;
    coeffs[r] = u >= o.usableVocab ? -30 / minSlack : 0;
    synth(coeffs, vec);
    for (let k = 0; k < d; k++) lmHead[k * V + u] = vec[k];
  }
  return { wte, lmHead };
}

/**
 * An orthonormal basis b_0..b_{d−2} of the zero-mean vectors of R^d, as a synthesis function
 * `out = Σ_k coeffs[k]·b_k`. For d a power of two: the non-constant rows of the normalised
 * Walsh–Hadamard matrix in a seeded random order (O(d log d) per vector); otherwise a seeded
 * random basis by Gram–Schmidt (O(d²) per vector).
 */
function zeroMeanBasis(d: number, rng: Prng): (coeffs: Float64Array, out: Float64Array) => void {
  if ((d & (d - 1)) === 0) {
    const rowsOrder = Array.from({ length: d - 1 }, (_, i) => i + 1);
    for (let i = rowsOrder.length - 1; i > 0; i--) {
      const j = Math.floor(rng.next() * (i + 1));
      [rowsOrder[i], rowsOrder[j]] = [rowsOrder[j], rowsOrder[i]];
    }
    const scale = 1 / Math.sqrt(d);
    return (coeffs, out) => {
      out.fill(0);
      for (let k = 0; k < d - 1; k++) out[rowsOrder[k]] = coeffs[k];
      // In-place fast Walsh–Hadamard transform (H is symmetric, so this is Hᵀ·c).
      for (let h = 1; h < d; h *= 2) {
        for (let i = 0; i < d; i += 2 * h) {
          for (let j = i; j < i + h; j++) {
            const x = out[j];
            const y = out[j + h];
            out[j] = x + y;
            out[j + h] = x - y;
          }
        }
      }
      for (let k = 0; k < d; k++) out[k] *= scale;
    };
  }
  const basis = new Float64Array(d * d); // row 0: 1/√d, rows 1..d−1: the basis
  for (let k = 0; k < d; k++) basis[k] = 1 / Math.sqrt(d);
  for (let i = d; i < basis.length; i++) basis[i] = rng.normal();
  for (let a = 1; a < d; a++) {
    for (let b = 0; b < a; b++) {
      let dot = 0;
      for (let k = 0; k < d; k++) dot += basis[a * d + k] * basis[b * d + k];
      for (let k = 0; k < d; k++) basis[a * d + k] -= dot * basis[b * d + k];
    }
    let norm = 0;
    for (let k = 0; k < d; k++) norm += basis[a * d + k] ** 2;
    norm = Math.sqrt(norm);
    for (let k = 0; k < d; k++) basis[a * d + k] /= norm;
  }
  return (coeffs, out) => {
    out.fill(0);
    for (let c = 0; c < d - 1; c++) {
      const w = coeffs[c];
      if (w === 0) continue;
      const row = (c + 1) * d;
      for (let k = 0; k < d; k++) out[k] += w * basis[row + k];
    }
  };
}
