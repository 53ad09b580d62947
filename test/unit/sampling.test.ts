import { expect } from 'chai';
import fc from 'fast-check';
import {
  argmax,
  draftFeatures,
  draftTopK,
  logitsToProbs,
  sampleDraftToken,
  sampleIndex,
  sampleTargetToken,
} from '../../inference/sampling.ts';
import { createRng, rngFor } from '../../inference/rng.ts';

const close = (a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-12): void => {
  expect(a.length).to.equal(b.length);
  for (let i = 0; i < a.length; i++) expect(a[i]).to.be.closeTo(b[i], tol, `index ${i}`);
};

function softmax(x: number[], T = 1): number[] {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp((v - m) / T));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Reference top-p by sorting the whole vocabulary (prob desc, id asc). */
function topPReference(p: number[], topP: number): number[] {
  const order = p.map((_, i) => i).sort((a, b) => p[b] - p[a] || a - b);
  const keep = new Set<number>();
  let cum = 0;
  for (const i of order) {
    keep.add(i);
    cum += p[i];
    if (cum >= topP) break;
  }
  const mass = [...keep].reduce((s, i) => s + p[i], 0);
  return p.map((v, i) => (keep.has(i) ? v / mass : 0));
}

// Critical value of chi-square at α = 0.001 by degrees of freedom.
const CHI2_ALPHA001: Record<number, number> = { 1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322 };

describe('sampling', () => {
  it('argmax breaks ties to the lowest id', () => {
    expect(argmax([1, 3, 3, 2])).to.equal(1);
    expect(argmax(new Float32Array([-5, -5, -5]))).to.equal(0);
    expect(argmax([0, 0, 1])).to.equal(2);
  });

  it('temperature 1 is softmax, temperature T is softmax(x/T), temperature 0 is one-hot argmax', () => {
    const x = [0.5, 2, -1, 2, 0];
    close(logitsToProbs(x, { temperature: 1, topP: 1 }), softmax(x));
    close(logitsToProbs(x, { temperature: 0.5, topP: 1 }), softmax(x.map((v) => v * 2)));
    close(logitsToProbs(x, { temperature: 2, topP: 1 }), softmax(x.map((v) => v / 2)));
    close(logitsToProbs(x, { temperature: 0, topP: 0.3 }), [0, 1, 0, 0, 0]);
  });

  it('top-p keeps the smallest most-likely set reaching topP, ties to the lowest id, renormalised', () => {
    const logits = [0.5, 0.3, 0.15, 0.05].map(Math.log);
    close(logitsToProbs(logits, { temperature: 1, topP: 0.7 }), [0.5 / 0.8, 0.3 / 0.8, 0, 0]);
    close(logitsToProbs(logits, { temperature: 1, topP: 0.85 }), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]);
    close(logitsToProbs(logits, { temperature: 1, topP: 0.4 }), [1, 0, 0, 0]);
    // Equal probabilities at the boundary: the lower id wins.
    const tie = [0.4, 0.3, 0.3].map(Math.log);
    close(logitsToProbs(tie, { temperature: 1, topP: 0.6 }), [0.4 / 0.7, 0.3 / 0.7, 0]);
  });

  it('top-p (histogram cutoff) equals the full-sort reference on random logits with ties', () => {
    fc.assert(
      fc.property(
        // Quarter-steps: exact ties or clear gaps, so last-bit rounding cannot reorder near-ties.
        fc.array(fc.integer({ min: -32, max: 32 }).map((v) => v / 4), { minLength: 1, maxLength: 300 }),
        fc.double({ min: 0.01, max: 0.999, noNaN: true }),
        fc.double({ min: 0.1, max: 3, noNaN: true }),
        (x, topP, temperature) => {
          const got = logitsToProbs(x, { temperature, topP });
          const ref = topPReference(softmax(x, temperature), topP);
          close(got, ref, 1e-9);
        },
      ),
      { numRuns: 300, seed: 1 },
    );
  });

  it('top-p equals the full-sort reference on large vocabularies (continuous logits, one bucket crowded)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 31 - 1 }),
        fc.integer({ min: 500, max: 3000 }),
        fc.double({ min: 0.05, max: 0.995, noNaN: true }),
        (seed, V, topP) => {
          const r = createRng(seed);
          // Half spread out, half crowded within 1% of one value (one histogram bucket).
          const x = Array.from({ length: V }, (_, i) => (i % 2 ? 2 + r.nextDouble() * 0.01 : (r.nextDouble() - 0.5) * 12));
          const p = Array.from(logitsToProbs(x, { temperature: 1, topP: 1 }));
          close(logitsToProbs(x, { temperature: 1, topP }), topPReference(p, topP), 1e-12);
        },
      ),
      { numRuns: 25, seed: 3 },
    );
  });

  it('refuses out-of-range temperature and top-p', () => {
    expect(() => logitsToProbs([1, 2], { temperature: -1, topP: 1 })).to.throw(RangeError, /temperature/);
    expect(() => logitsToProbs([1, 2], { temperature: 1, topP: 0 })).to.throw(RangeError, /topP/);
    expect(() => logitsToProbs([1, 2], { temperature: Number.NaN, topP: 1 })).to.throw(RangeError);
  });

  it('sampleIndex inverts the cumulative distribution and never returns a zero-weight index', () => {
    const w = [0, 1, 0, 1, 0];
    expect(sampleIndex(w, 0)).to.equal(1);
    expect(sampleIndex(w, 0.49)).to.equal(1);
    expect(sampleIndex(w, 0.5)).to.equal(3);
    expect(sampleIndex(w, 0.999999999)).to.equal(3);
    expect(sampleIndex([2, 6], 0.25)).to.equal(1); // unnormalised weights
    expect(() => sampleIndex([0, 0], 0.5)).to.throw(RangeError, /all-zero/);
  });

  it('draftTopK keeps the k most likely (ties to the lowest id), drops zeros, renormalises', () => {
    const d = draftTopK([0.1, 0.4, 0.1, 0.3, 0.1], 3);
    expect(d.ids).to.deep.equal([1, 3, 0]);
    close(d.probs, [0.4 / 0.8, 0.3 / 0.8, 0.1 / 0.8]);
    const z = draftTopK([0, 0.5, 0, 0.5], 4);
    expect(z.ids).to.deep.equal([1, 3]);
    close(z.probs, [0.5, 0.5]);
    fc.assert(
      fc.property(fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 200 }), fc.integer({ min: 1, max: 64 }), (p, k) => {
        const got = draftTopK(p, k);
        const order = p.map((_, i) => i).sort((a, b) => p[b] - p[a] || a - b);
        const want = order.slice(0, k).filter((i, j) => j === 0 || p[i] > 0);
        expect(got.ids).to.deep.equal(want);
        expect(got.probs.reduce((a, b) => a + b, 0)).to.be.closeTo(1, 1e-12);
      }),
      { numRuns: 300, seed: 2 },
    );
  });

  it('draftFeatures: flat logits → top1 1/V, entropy ln V, margin 0, spread 0; a peaked row matches by hand', () => {
    const flat = draftFeatures(new Float32Array(8).fill(1.5));
    expect(flat.top1Prob).to.be.closeTo(1 / 8, 1e-12);
    expect(flat.entropy).to.be.closeTo(Math.log(8), 1e-12);
    expect(flat.margin).to.be.closeTo(0, 1e-12);
    expect(flat.logitSpread).to.be.closeTo(0, 1e-6);
    const x = [3, 1, 0, 0];
    const p = softmax(x);
    const f = draftFeatures(x);
    expect(f.top1Prob).to.be.closeTo(p[0], 1e-12);
    expect(f.margin).to.be.closeTo(p[0] - p[1], 1e-12);
    expect(f.entropy).to.be.closeTo(-p.reduce((s, v) => s + v * Math.log(v), 0), 1e-12);
    expect(f.logitSpread).to.be.closeTo(3 - 1, 1e-12);
  });

  it('sampleDraftToken: greedy is argmax with a one-hot dist; sampling draws from the returned top-k', () => {
    const x = new Float32Array([0.2, 1.9, 0.4, 1.0, -2, 0.7, 1.2, 0.1]);
    const g = sampleDraftToken(x, { temperature: 0, topP: 1 }, 4, createRng(1));
    expect(g.token).to.equal(1);
    expect(g.dist).to.deep.equal({ ids: [1], probs: [1] });
    expect(g.features.top1Prob).to.be.greaterThan(0);

    // Frequencies of the drafted tokens follow the returned (renormalised, shaped) top-k exactly.
    const sampling = { temperature: 0.8, topP: 0.95 };
    const k = 5;
    const N = 20_000;
    const counts = new Map<number, number>();
    let dist = { ids: [] as number[], probs: [] as number[] };
    for (let seed = 0; seed < N; seed++) {
      const s = sampleDraftToken(x, sampling, k, rngFor(seed, 10, 'draft'));
      dist = s.dist;
      expect(dist.ids).to.include(s.token);
      counts.set(s.token, (counts.get(s.token) ?? 0) + 1);
    }
    const want = draftTopK(logitsToProbs(x, sampling), k);
    expect(dist).to.deep.equal(want);
    let chi2 = 0;
    want.ids.forEach((id, j) => {
      const e = want.probs[j] * N;
      chi2 += ((counts.get(id) ?? 0) - e) ** 2 / e;
    });
    expect(chi2).to.be.below(CHI2_ALPHA001[want.ids.length - 1]);
  });

  it('sampleTargetToken: argmax under greedy; under sampling a keyed, reproducible draw from the shaped p', () => {
    const x = [0.1, 0.2, 3, 0.3];
    expect(sampleTargetToken(x, { temperature: 0, topP: 1, seed: 5 }, 3)).to.equal(2);
    const s = { temperature: 1.3, topP: 0.9, seed: 11 };
    expect(sampleTargetToken(x, s, 40)).to.equal(sampleTargetToken(x, s, 40));
    const p = logitsToProbs(x, s);
    const N = 20_000;
    const counts = [0, 0, 0, 0];
    for (let pos = 0; pos < N; pos++) counts[sampleTargetToken(x, s, pos)]++;
    let chi2 = 0;
    let df = -1;
    for (let i = 0; i < 4; i++) {
      if (p[i] === 0) {
        expect(counts[i]).to.equal(0); // cut by top-p
        continue;
      }
      chi2 += (counts[i] - p[i] * N) ** 2 / (p[i] * N);
      df++;
    }
    expect(chi2).to.be.below(CHI2_ALPHA001[df]);
  });
});
