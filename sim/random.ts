/**
 * Seeded random streams for the simulator. Every device gets its own streams (workload,
 * tokens, network), derived from (seed, stream, device), so the k-th prompt of device d is the
 * same under every policy — the policies are compared on the same prompts — and a run is
 * deterministic for a seed.
 */
import { normalFrom, seededUniform } from '../policies/seeded-rng.ts';

/** Named streams, so adding one never shifts the draws of another. */
export const STREAMS = { workload: 1, tokens: 2, network: 3, server: 4 } as const;

/** A 32-bit seed from (seed, stream, index) by integer hashing (murmur3 finaliser). */
export function deriveSeed(seed: number, stream: number, index = 0): number {
  let h = (seed >>> 0) ^ Math.imul(stream + 0x9e3779b9, 0x85ebca6b) ^ Math.imul(index + 0x7f4a7c15, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A seeded stream of uniforms, normals and integers. */
export class Rng {
  readonly #next: () => number;

  constructor(seed: number) {
    this.#next = seededUniform(seed);
  }

  /** Uniform in [0, 1). */
  uniform(): number {
    return this.#next();
  }

  /** Standard normal. */
  normal(): number {
    return normalFrom(this.#next);
  }

  /** Uniform integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.#next() * (hi - lo + 1));
  }
}
