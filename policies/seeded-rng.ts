/**
 * A small seeded PRNG (mulberry32) for the policies' own needs — deterministic data splits and
 * test fixtures. Policies never draw randomness without a caller-given seed.
 */

/** Returns a generator of uniforms in [0, 1) determined by `seed` (any 32-bit integer). */
export function seededUniform(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seeded Fisher–Yates permutation of 0..n−1. */
export function seededPermutation(n: number, seed: number): number[] {
  const next = seededUniform(seed);
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

/** A standard normal draw from two uniforms (Box–Muller). */
export function normalFrom(next: () => number): number {
  const u = Math.max(next(), 1e-12);
  const v = next();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}
