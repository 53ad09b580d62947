/**
 * Seeded pseudo-random numbers for sampling. xoshiro128** over 32-bit integer math (Math.imul),
 * so a seed gives the same stream on every platform and Node version.
 *
 * Random draws are keyed, not sequential: the uniform that decides the token at sequence
 * position `p` for purpose `stream` comes from `rngFor(seed, p, stream)`. A verification that is
 * retried or re-routed to another worker (after a crash) therefore makes the same decision, so
 * outputs stay identical under faults, and no generator state has to be persisted.
 */

/** A uniform random source. */
export interface Rng {
  /** Next uniform double in [0, 1) with 53 random bits. */
  nextDouble(): number;
  /** Next uniform unsigned 32-bit integer. */
  nextUint32(): number;
}

/**
 * Named purposes of a draw. Each decision at a position uses its own stream, so the draws of
 * different purposes are independent of each other.
 */
export const STREAM = {
  /** Draft model sampling its token at a position. */
  draft: 1,
  /** Target model sampling a token from p (plain decoding, first token, bonus token). */
  target: 2,
  /** Accept/reject test of a draft token in rejection sampling. */
  accept: 3,
  /** Sampling the correction from the residual norm(max(0, p − q)). */
  residual: 4,
} as const;
export type StreamName = keyof typeof STREAM;

const TWO_POW_32 = 4294967296;
const TWO_POW_53 = 9007199254740992;

/** xoshiro128** (Blackman & Vigna); 128-bit state, period 2^128 − 1. */
export class Xoshiro128 implements Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** Seeds the state from four words; an all-zero state (invalid for xoshiro) is replaced. */
  constructor(a: number, b: number, c: number, d: number) {
    this.s0 = a | 0;
    this.s1 = b | 0;
    this.s2 = c | 0;
    this.s3 = d | 0;
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 0x9e3779b9 | 0;
  }

  nextUint32(): number {
    const s1 = this.s1;
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9);
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result >>> 0;
  }

  nextDouble(): number {
    // 27 high bits + 26 high bits = 53 bits, the full precision of a double in [0, 1).
    const a = this.nextUint32() >>> 5;
    const b = this.nextUint32() >>> 6;
    return (a * 67108864 + b) / TWO_POW_53;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** murmur3's 32-bit finaliser: a bijective avalanche mix. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

/** FNV-1a over UTF-16 code units, for string stream names. */
function hashString(s: string): number {
  let h = 0x811c9dc5 | 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h | 0;
}

/** Splits a non-negative integer (up to 2^53) into two 32-bit words. */
function words(x: number): [number, number] {
  if (!Number.isSafeInteger(x) || x < 0) throw new RangeError(`rng key must be a non-negative safe integer, got ${x}`);
  return [x >>> 0, Math.floor(x / TWO_POW_32) >>> 0];
}

/** A generator seeded from one integer seed (any non-negative safe integer). */
export function createRng(seed: number): Rng {
  const [lo, hi] = words(seed);
  return fromKey(fmix32(lo ^ 0x6a09e667), fmix32(hi ^ 0xbb67ae85));
}

/**
 * The derived stream for the draw deciding sequence position `position` for purpose `stream`.
 * Depends only on its three arguments, so any process that repeats a decision repeats its draw.
 */
export function rngFor(seed: number, position: number, stream: StreamName | number | string): Rng {
  const [seedLo, seedHi] = words(seed);
  const [posLo, posHi] = words(position);
  const streamId = typeof stream === 'number' ? stream | 0 : stream in STREAM ? STREAM[stream as StreamName] : hashString(stream);
  // Chained mixing: each input word goes through a full avalanche before the next joins.
  let h = fmix32(seedLo ^ 0x3c6ef372);
  h = fmix32(h ^ seedHi ^ 0x5be0cd19);
  h = fmix32(h ^ posLo ^ 0x510e527f);
  h = fmix32(h ^ posHi ^ 0x9b05688c);
  const k1 = fmix32(h ^ streamId ^ 0x1f83d9ab);
  const k2 = fmix32(k1 ^ Math.imul(streamId, 0x27d4eb2f) ^ 0xa54ff53a);
  return fromKey(k1, k2);
}

/** The first uniform of `rngFor(seed, position, stream)`: one decision, one draw. */
export function uniformFor(seed: number, position: number, stream: StreamName | number | string): number {
  return rngFor(seed, position, stream).nextDouble();
}

/** Expands a 64-bit key into xoshiro state with splitmix32, then discards a few outputs. */
function fromKey(k1: number, k2: number): Rng {
  let state = k1 | 0;
  const sm = (): number => {
    state = (state + 0x9e3779b9) | 0;
    let z = state ^ k2;
    z ^= z >>> 16;
    z = Math.imul(z, 0x21f0aaad);
    z ^= z >>> 15;
    z = Math.imul(z, 0x735a2d97);
    z ^= z >>> 15;
    return z | 0;
  };
  const rng = new Xoshiro128(sm(), sm(), sm(), sm());
  // Warm-up: keyed seeds that differ in few bits should not start correlated.
  for (let i = 0; i < 4; i++) rng.nextUint32();
  return rng;
}
