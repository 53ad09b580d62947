/**
 * Seeded pseudo-random numbers for the forge: same seed → same stream on every machine
 * (integer arithmetic only; the Gaussian uses Math.log/cos/sqrt, which V8 computes the same way).
 */

/** A seeded generator: `next()` in [0, 1), `normal()` ~ N(0, 1). */
export class Prng {
  private state: number;
  private spare: number | null = null;
  private readonly seed: number;

  constructor(seed: number) {
    this.seed = seed >>> 0;
    // splitmix32 scrambles the seed so nearby seeds give unrelated streams.
    let z = (seed >>> 0) + 0x9e3779b9;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    this.state = (z ^ (z >>> 16)) >>> 0;
  }

  /** Uniform in [0, 1) (mulberry32). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Standard normal (Box–Muller, both values used). */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    const u = 1 - this.next(); // (0, 1]: log stays finite
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** A Float32Array of `n` values ~ N(0, std²). */
  normalArray(n: number, std: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal() * std;
    return out;
  }

  /**
   * A Float32Array of `n` values uniform in [−√3·std, √3·std] (standard deviation `std`):
   * several times cheaper than Gaussian draws, and random layers need no particular law.
   */
  uniformArray(n: number, std: number): Float32Array {
    const out = new Float32Array(n);
    const half = Math.sqrt(3) * std;
    for (let i = 0; i < n; i++) out[i] = (2 * this.next() - 1) * half;
    return out;
  }

  /** A child generator for one named part (depends on the seed and label only, not on draws made). */
  fork(label: string): Prng {
    let h = 0x811c9dc5;
    for (let i = 0; i < label.length; i++) h = Math.imul(h ^ label.charCodeAt(i), 0x01000193);
    return new Prng((this.seed ^ h ^ Math.imul(this.seed, 0x27d4eb2d)) >>> 0);
  }
}
