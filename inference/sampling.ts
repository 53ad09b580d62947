/**
 * Logits → token decisions, shared by the draft (edge device) and the target (verifier), so
 * temperature and top-p are applied identically on both sides. Probabilities are computed in
 * double precision; ties always go to the lowest token id, so greedy choices are deterministic.
 */
import type { SamplingParams, SparseDist } from './types.ts';
import { uniformFor, type Rng } from './rng.ts';

/** What the probability transform needs from SamplingParams (the seed is not used here). */
export type Shaping = Pick<SamplingParams, 'temperature' | 'topP'>;

/** Statistics of one draft step, inputs of the speculation controller (computed at temperature 1). */
export interface DraftFeatures {
  /** Probability of the most likely token. */
  top1Prob: number;
  /** Shannon entropy of the distribution, in nats. */
  entropy: number;
  /** top-1 probability minus top-2 probability. */
  margin: number;
  /** Largest logit minus the mean logit. */
  logitSpread: number;
}

/** A drafted token with the exact distribution it was sampled from. */
export interface DraftSample {
  token: number;
  /** The renormalised top-k the token was drawn from (one-hot under greedy). */
  dist: SparseDist;
  features: DraftFeatures;
}

/** Default size of the draft's sparse top-k (the wire allows up to 64). */
export const DEFAULT_DRAFT_TOP_K = 32;

/** Throws a RangeError naming the bad field when sampling settings are out of range. */
export function checkShaping(s: Shaping): void {
  if (!Number.isFinite(s.temperature) || s.temperature < 0) {
    throw new RangeError(`sampling temperature must be a finite number >= 0, got ${s.temperature}`);
  }
  if (!Number.isFinite(s.topP) || s.topP <= 0 || s.topP > 1) {
    throw new RangeError(`sampling topP must be in (0, 1], got ${s.topP}`);
  }
}

/** True when settings mean greedy decoding (temperature 0). */
export function isGreedy(s: Shaping): boolean {
  return s.temperature === 0;
}

/** Index of the largest value in `row` (ties → lowest index). */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  let bestVal = row[0];
  for (let i = 1; i < row.length; i++) {
    const v = row[i];
    if (v > bestVal) {
      bestVal = v;
      best = i;
    }
  }
  return best;
}

// Scratch buffers reused across calls (JS is single-threaded; nothing returned aliases them).
let scratchProbs = new Float64Array(0);

function scratchFor(n: number): Float64Array {
  if (scratchProbs.length < n) scratchProbs = new Float64Array(n);
  return scratchProbs.length === n ? scratchProbs : scratchProbs.subarray(0, n);
}

/**
 * Softmax of `row / temperature`, then top-p (keep the smallest set of most likely tokens whose
 * mass reaches topP; ties by lowest id), renormalised. Temperature 0 gives a one-hot at argmax.
 * Writes into `out` when given (length ≥ row.length), else into a new array.
 */
export function logitsToProbs(row: ArrayLike<number>, s: Shaping, out?: Float64Array): Float64Array {
  checkShaping(s);
  const V = row.length;
  const p = out ? (out.length === V ? out : out.subarray(0, V)) : new Float64Array(V);
  if (s.temperature === 0) {
    p.fill(0);
    p[argmax(row)] = 1;
    return p;
  }
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (row[i] > max) max = row[i];
  const T = s.temperature;
  let sum = 0;
  for (let i = 0; i < V; i++) {
    const e = Math.exp((row[i] - max) / T);
    p[i] = e;
    sum += e;
  }
  const inv = 1 / sum;
  for (let i = 0; i < V; i++) p[i] *= inv;
  if (s.topP < 1) applyTopP(p, s.topP);
  return p;
}

// For non-negative doubles the high 32-bit word, read as unsigned, orders like the value; its top
// 16 bits (sign, exponent, 4 mantissa bits) make a monotone bucket key of relative width 1/16.
const HIGH_WORD = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 1 : 0;
const KEY_BUCKETS = 1 << 15;
const bucketMass = new Float64Array(KEY_BUCKETS);

/**
 * Keeps the nucleus of `p` in place and renormalises: the most likely tokens, in order of
 * (probability desc, id asc), up to and including the one where their mass reaches topP.
 * No full sort: a mass histogram over monotone float-bit buckets finds the bucket holding the
 * cutoff, and only that bucket's tokens are sorted. Four linear passes, expected O(V).
 */
function applyTopP(p: Float64Array, topP: number): void {
  const V = p.length;
  const words = new Uint32Array(p.buffer, p.byteOffset, 2 * V);
  let minKey = KEY_BUCKETS;
  let maxKey = -1;
  for (let i = 0; i < V; i++) {
    const key = words[2 * i + HIGH_WORD] >>> 16;
    bucketMass[key] += p[i];
    if (key < minKey) minKey = key;
    if (key > maxKey) maxKey = key;
  }
  let cum = 0;
  let cutKey = maxKey;
  for (; cutKey >= minKey; cutKey--) {
    if (cum + bucketMass[cutKey] >= topP) break;
    cum += bucketMass[cutKey];
  }
  bucketMass.fill(0, minKey, maxKey + 1); // leave the histogram clean for the next call
  if (cutKey < minKey) return; // rounding left the whole mass just under topP: keep everything
  const inBucket: number[] = [];
  for (let i = 0; i < V; i++) if (words[2 * i + HIGH_WORD] >>> 16 === cutKey) inBucket.push(i);
  inBucket.sort((a, b) => p[b] - p[a] || a - b);
  let keep = 0;
  while (keep < inBucket.length && cum < topP) cum += p[inBucket[keep++]];
  for (let j = keep; j < inBucket.length; j++) p[inBucket[j]] = 0;
  let mass = 0;
  for (let i = 0; i < V; i++) {
    if (words[2 * i + HIGH_WORD] >>> 16 < cutKey) p[i] = 0;
    else mass += p[i];
  }
  const inv = 1 / mass;
  for (let i = 0; i < V; i++) p[i] *= inv;
}

/**
 * Index drawn from (unnormalised, non-negative) weights with uniform `u` in [0, 1): the first
 * index whose cumulative weight exceeds u·total; never returns a zero-weight index.
 */
export function sampleIndex(weights: ArrayLike<number>, u: number): number {
  let total = 0;
  for (let i = 0; i < weights.length; i++) total += weights[i];
  const target = u * total;
  let cum = 0;
  let lastPositive = -1;
  for (let i = 0; i < weights.length; i++) {
    const w = weights[i];
    if (w <= 0) continue;
    cum += w;
    lastPositive = i;
    if (cum > target) return i;
  }
  if (lastPositive < 0) throw new RangeError('cannot sample from an all-zero distribution');
  return lastPositive; // rounding left u·total at or above the final sum
}

/**
 * The draft's sparse distribution: the k most likely tokens of `probs` (ties → lowest id;
 * zero-probability tokens dropped, at least one kept), renormalised, in descending probability.
 */
export function draftTopK(probs: ArrayLike<number>, k: number): SparseDist {
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`draft top-k must be an integer >= 1, got ${k}`);
  const V = probs.length;
  const ids: number[] = [];
  const vals: number[] = [];
  // Insertion into a sorted buffer of at most k: O(V) in practice, since most values fall below the floor.
  for (let i = 0; i < V; i++) {
    const v = probs[i];
    if (ids.length === k && v <= vals[k - 1]) continue;
    let j = ids.length === k ? k - 1 : ids.length;
    if (ids.length < k) {
      ids.push(i);
      vals.push(v);
    }
    // Strictly greater moves ahead, so an equal value stays behind the lower id already there.
    while (j > 0 && vals[j - 1] < v) {
      ids[j] = ids[j - 1];
      vals[j] = vals[j - 1];
      j--;
    }
    ids[j] = i;
    vals[j] = v;
  }
  let n = ids.length;
  while (n > 1 && vals[n - 1] <= 0) n--;
  let sum = 0;
  for (let j = 0; j < n; j++) sum += vals[j];
  if (!(sum > 0)) return { ids: [ids[0]], probs: [1] };
  return { ids: ids.slice(0, n), probs: vals.slice(0, n).map((v) => v / sum) };
}

/**
 * Speculation-controller features of one draft logits row, on the raw temperature-1
 * distribution (independent of the user's sampling settings).
 */
export function draftFeatures(row: ArrayLike<number>): DraftFeatures {
  const V = row.length;
  let max = -Infinity;
  let total = 0;
  for (let i = 0; i < V; i++) {
    const x = row[i];
    if (x > max) max = x;
    total += x;
  }
  // One pass: Z = Σ e_i, A = Σ e_i (x_i − max), top-2 of e_i; entropy = ln Z − A / Z.
  let z = 0;
  let a = 0;
  let e1 = 0;
  let e2 = 0;
  for (let i = 0; i < V; i++) {
    const d = row[i] - max;
    const e = Math.exp(d);
    z += e;
    a += e * d;
    if (e > e1) {
      e2 = e1;
      e1 = e;
    } else if (e > e2) {
      e2 = e;
    }
  }
  const top1Prob = e1 / z;
  return {
    top1Prob,
    entropy: Math.max(0, Math.log(z) - a / z),
    margin: top1Prob - e2 / z,
    logitSpread: max - total / V,
  };
}

/**
 * Draws the draft's token. Under sampling the token comes from the renormalised top-k of the
 * shaped distribution, and that top-k is returned as `dist`, so the q used by verification is
 * exactly the distribution sampled from. Under greedy: argmax with a one-hot `dist`.
 */
export function sampleDraftToken(row: ArrayLike<number>, sampling: Shaping, k: number, rng: Rng): DraftSample {
  const features = draftFeatures(row);
  if (isGreedy(sampling)) {
    checkShaping(sampling);
    const token = argmax(row);
    return { token, dist: { ids: [token], probs: [1] }, features };
  }
  const probs = logitsToProbs(row, sampling, scratchFor(row.length));
  const dist = draftTopK(probs, k);
  const token = dist.ids[sampleIndex(dist.probs, rng.nextDouble())];
  return { token, dist, features };
}

/**
 * The target's own token at sequence position `position` from its logits row: argmax under
 * greedy, else a draw from the shaped distribution with the keyed uniform (seed, position,
 * 'target'). Used for plain decoding, the first token of a session and the bonus token alike.
 */
export function sampleTargetToken(row: ArrayLike<number>, sampling: SamplingParams, position: number): number {
  if (isGreedy(sampling)) {
    checkShaping(sampling);
    return argmax(row);
  }
  const probs = logitsToProbs(row, sampling, scratchFor(row.length));
  return sampleIndex(probs, uniformFor(sampling.seed, position, 'target'));
}
