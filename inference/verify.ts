/**
 * Lossless verification of a draft (docs/design.md §4). The target has run one forward pass over
 * `[last committed token, d1..dn]`, giving n+1 logits rows: row i is the target's distribution
 * for the position of d_{i+1} (row n: the position after dn).
 *
 * - Greedy: accept the longest prefix with argmax p = d_i; the token is the target's argmax at
 *   the first mismatch (correction) or after dn (bonus). Output equals plain greedy decoding.
 * - Sampling (speculative sampling, Leviathan et al. / Chen et al.): accept d_i with probability
 *   min(1, p(d_i)/q(d_i)); on rejection draw from norm(max(0, p − q)); when all are accepted draw
 *   the bonus from p. Committed tokens then follow exactly the target's (shaped) distribution.
 *
 * Positions are absolute sequence indices (prompt tokens count): d_{i+1} sits at
 * `position0 + i`, where position0 = the committed length before the round. Every uniform is
 * keyed by (seed, position, purpose) so a retried verification decides the same way.
 */
import type { SamplingParams, SparseDist, VerifyOutcome } from './types.ts';
import { InferenceError } from './errors.ts';
import { uniformFor } from './rng.ts';
import { checkShaping, isGreedy, logitsToProbs, sampleIndex, sampleTargetToken } from './sampling.ts';

/** Wire error codes (protocol/messages.ts ERROR_CODES) a verification input can fail with. */
export type VerifyErrorCode = 'malformed' | 'token_out_of_vocab';

/** A verification request that cannot be verified as sent; `code` is its wire error code. */
export class VerifyInputError extends InferenceError {
  declare readonly code: VerifyErrorCode;
  constructor(code: VerifyErrorCode, message: string) {
    super(code, message);
  }
}

/** Largest |Σq − 1| accepted in a draft distribution (the draft renormalises in doubles). */
const DIST_SUM_TOLERANCE = 1e-6;

function checkShapes(draftTokens: readonly number[], targetLogits: Float32Array, vocabSize: number): void {
  if (!Number.isInteger(vocabSize) || vocabSize < 1) throw new RangeError(`vocabSize must be a positive integer, got ${vocabSize}`);
  const need = (draftTokens.length + 1) * vocabSize;
  if (targetLogits.length < need) {
    throw new RangeError(
      `target logits hold ${targetLogits.length} values, need ${need} (${draftTokens.length + 1} rows × vocab ${vocabSize})`,
    );
  }
  for (let i = 0; i < draftTokens.length; i++) {
    const d = draftTokens[i];
    if (!Number.isInteger(d) || d < 0 || d >= vocabSize) {
      throw new VerifyInputError('token_out_of_vocab', `draft token ${i} is ${d}, outside the vocabulary [0, ${vocabSize})`);
    }
  }
}

/** Argmax of row `r` of a row-major matrix (ties → lowest id), without copying the row. */
function argmaxRow(m: Float32Array, r: number, cols: number): number {
  const off = r * cols;
  let best = 0;
  let bestVal = m[off];
  for (let j = 1; j < cols; j++) {
    const v = m[off + j];
    if (v > bestVal) {
      bestVal = v;
      best = j;
    }
  }
  return best;
}

/**
 * Greedy verification: longest prefix where the target's argmax equals the draft token, then
 * the target's argmax at the first mismatch, or after the last draft token (bonus).
 * Allocates nothing per token.
 */
export function verifyGreedy(draftTokens: readonly number[], targetLogits: Float32Array, vocabSize: number): VerifyOutcome {
  checkShapes(draftTokens, targetLogits, vocabSize);
  const n = draftTokens.length;
  for (let i = 0; i < n; i++) {
    const t = argmaxRow(targetLogits, i, vocabSize);
    if (t !== draftTokens[i]) return { accepted: i, token: t };
  }
  return { accepted: n, token: argmaxRow(targetLogits, n, vocabSize) };
}

// Scratch buffers, reused across calls: p (then the residual) and a dense view of q.
let pBuf = new Float64Array(0);
let qBuf = new Float64Array(0);
let seen = new Uint8Array(0);

function ensureScratch(V: number): void {
  if (pBuf.length < V) pBuf = new Float64Array(V);
  if (qBuf.length < V) qBuf = new Float64Array(V);
  if (seen.length < V) seen = new Uint8Array(V);
}

/** Checks one draft distribution and returns q(token); throws VerifyInputError when malformed. */
function checkDist(dist: SparseDist | undefined, token: number, i: number, vocabSize: number): number {
  if (!dist || !Array.isArray(dist.ids) || !Array.isArray(dist.probs) || dist.ids.length === 0 || dist.ids.length !== dist.probs.length) {
    throw new VerifyInputError('malformed', `draft distribution ${i} is missing or its ids and probs differ in length`);
  }
  let sum = 0;
  let qToken = -1;
  try {
    for (let k = 0; k < dist.ids.length; k++) {
      const id = dist.ids[k];
      const q = dist.probs[k];
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw new VerifyInputError('token_out_of_vocab', `draft distribution ${i} names token ${id}, outside the vocabulary [0, ${vocabSize})`);
      }
      if (!Number.isFinite(q) || q < 0 || q > 1) throw new VerifyInputError('malformed', `draft distribution ${i} has probability ${q} for token ${id}`);
      if (seen[id]) throw new VerifyInputError('malformed', `draft distribution ${i} lists token ${id} twice`);
      seen[id] = 1;
      sum += q;
      if (id === token) qToken = q;
    }
  } finally {
    for (let k = 0; k < dist.ids.length; k++) {
      const id = dist.ids[k];
      if (Number.isInteger(id) && id >= 0 && id < vocabSize) seen[id] = 0;
    }
  }
  if (Math.abs(sum - 1) > DIST_SUM_TOLERANCE) throw new VerifyInputError('malformed', `draft distribution ${i} sums to ${sum}, not 1`);
  if (qToken <= 0) {
    throw new VerifyInputError('malformed', `draft token ${i} (${token}) has no probability in its own draft distribution`);
  }
  return qToken;
}

/**
 * Speculative-sampling verification. `draftDists[i]` must be the sparse distribution d_{i+1}
 * was sampled from (a token outside it is a malformed request). `position0` is the absolute
 * position of d_1 (the committed length before this round). Throws VerifyInputError on a
 * malformed request, before deciding anything.
 */
export function verifySampled(
  draftTokens: readonly number[],
  draftDists: readonly SparseDist[],
  targetLogits: Float32Array,
  vocabSize: number,
  sampling: SamplingParams,
  position0: number,
): VerifyOutcome {
  checkShaping(sampling);
  checkShapes(draftTokens, targetLogits, vocabSize);
  const n = draftTokens.length;
  if (draftDists.length < n) {
    throw new VerifyInputError('malformed', `${n} draft tokens but ${draftDists.length} draft distributions`);
  }
  ensureScratch(vocabSize);
  // Validate every distribution first: a malformed request fails whatever the random draws.
  const qTokens = new Float64Array(n);
  for (let i = 0; i < n; i++) qTokens[i] = checkDist(draftDists[i], draftTokens[i], i, vocabSize);

  const p = pBuf.length === vocabSize ? pBuf : pBuf.subarray(0, vocabSize);
  for (let i = 0; i < n; i++) {
    const position = position0 + i;
    const row = targetLogits.subarray(i * vocabSize, (i + 1) * vocabSize);
    logitsToProbs(row, sampling, p);
    const d = draftTokens[i];
    const ratio = p[d] / qTokens[i];
    if (ratio >= 1 || uniformFor(sampling.seed, position, 'accept') < ratio) continue;
    return { accepted: i, token: sampleResidual(p, draftDists[i], row, sampling, position) };
  }
  const last = targetLogits.subarray(n * vocabSize, (n + 1) * vocabSize);
  return { accepted: n, token: sampleTargetToken(last, sampling, position0 + n) };
}

/** Draws from norm(max(0, p − q)), turning `p` into the residual in place. */
function sampleResidual(p: Float64Array, dist: SparseDist, row: Float32Array, sampling: SamplingParams, position: number): number {
  const V = p.length;
  const q = qBuf;
  for (let k = 0; k < dist.ids.length; k++) q[dist.ids[k]] = dist.probs[k];
  let mass = 0;
  for (let j = 0; j < V; j++) {
    const r = p[j] - q[j];
    const w = r > 0 ? r : 0;
    p[j] = w;
    mass += w;
  }
  for (let k = 0; k < dist.ids.length; k++) q[dist.ids[k]] = 0;
  // A rejection implies p ≠ q, so mass > 0 in exact arithmetic; guard against total cancellation.
  if (!(mass > 0)) logitsToProbs(row, sampling, p);
  return sampleIndex(p, uniformFor(sampling.seed, position, 'residual'));
}

/**
 * Verifies a draft by the session's sampling settings: greedy at temperature 0 (draftDists
 * unused), rejection sampling otherwise (draftDists required).
 */
export function verifyDraft(
  draftTokens: readonly number[],
  draftDists: readonly SparseDist[] | undefined,
  targetLogits: Float32Array,
  vocabSize: number,
  sampling: SamplingParams,
  position0: number,
): VerifyOutcome {
  if (isGreedy(sampling)) return verifyGreedy(draftTokens, targetLogits, vocabSize);
  if (!draftDists) throw new VerifyInputError('malformed', 'sampling (temperature > 0) needs the draft distributions, none were sent');
  return verifySampled(draftTokens, draftDists, targetLogits, vocabSize, sampling, position0);
}
