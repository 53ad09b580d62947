import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import {
  createEstimatorState,
  estimatorError,
  estimatorFromProfile,
  observeBatch,
  predictBatchMs,
  predictPrefillMs,
  verifyFeatures,
  aggregateShapes,
  type EstimatorState,
} from '../../policies/estimator.ts';
import { EstimatorInputError } from '../../policies/errors.ts';
import { rawCoefficients } from '../../policies/floor-linear.ts';
import { parseProfileCsv, rowShapes } from '../../policies/profile-csv.ts';
import { normalFrom, seededUniform } from '../../policies/seeded-rng.ts';
import type { BatchShape } from '../../policies/types.ts';

const PROFILE = parseProfileCsv(readFileSync(new URL('../../data/verify-profile-h200.csv', import.meta.url), 'utf8'), 'verify-profile-h200.csv');

/** Known model on raw features [1, B, B·n_max, m·B·L_max, (1−m)·B·L_max, B·n_max·L_max]. */
const TRUE_COEF = [12, 0.4, 0.15, 0.003, 0.0008, 0.00002];
const TRUE_FLOOR = 25;

function trueMs(shapes: BatchShape[]): number {
  const x = verifyFeatures(aggregateShapes(shapes));
  return Math.max(TRUE_FLOOR, x.reduce((s, v, j) => s + v * TRUE_COEF[j], 0));
}

function randomBatch(next: () => number): BatchShape[] {
  const B = 1 + Math.floor(next() * 48);
  const single = next() < 0.2; // some plain-decoding batches (n = 1) so both attention paths are seen
  return Array.from({ length: B }, () => ({ n: single ? 1 : 1 + Math.floor(next() * 9), L: 16 + Math.floor(next() * 3000) }));
}

function mape(state: EstimatorState, rows: typeof PROFILE): number {
  const apes = rows.map((r) => Math.abs(predictBatchMs(state, rowShapes(r)) - r.msMedian) / r.msMedian);
  return apes.reduce((a, b) => a + b, 0) / apes.length;
}

describe('policies/estimator', () => {
  it('recovers known coefficients and floor from synthetic batches (seeded noise)', () => {
    const next = seededUniform(7);
    // Start far from the truth (the H200 Qwen3-32B priors); a long memory (λ = 0.999) so the
    // estimate averages over many batches. 0.2 % multiplicative noise.
    let s = createEstimatorState({ verify: { forgetting: 0.999 } });
    for (let i = 0; i < 3000; i++) {
      const shapes = randomBatch(next);
      s = observeBatch(s, shapes, trueMs(shapes) * (1 + 0.002 * normalFrom(next)));
    }
    const got = rawCoefficients(s.verify);
    got.forEach((c, j) => expect(Math.abs(c - TRUE_COEF[j]) / TRUE_COEF[j], `coefficient ${j}: ${c} vs ${TRUE_COEF[j]}`).to.be.lessThan(0.1));
    expect(s.verify.floorMs).to.be.closeTo(TRUE_FLOOR, 0.5);
    expect(estimatorError(s).ewmaApe).to.be.lessThan(0.01);
  });

  it('raises a floor that starts too low instead of folding the overhead into the slopes', () => {
    const next = seededUniform(5);
    let s = createEstimatorState({ verify: { theta: [5, 0, 0, 0, 0, 0], floorMs: 5 } });
    for (let i = 0; i < 1500; i++) {
      const shapes = randomBatch(next);
      s = observeBatch(s, shapes, trueMs(shapes) * (1 + 0.002 * normalFrom(next)));
    }
    expect(s.verify.floorMs).to.be.closeTo(TRUE_FLOOR, 1);
    expect(rawCoefficients(s.verify)[0]).to.be.closeTo(TRUE_COEF[0], 2);
  });

  it('tracks a change of server speed with its forgetting factor', () => {
    const next = seededUniform(11);
    let s = createEstimatorState();
    for (let i = 0; i < 600; i++) {
      const shapes = randomBatch(next);
      s = observeBatch(s, shapes, trueMs(shapes));
    }
    // The server becomes 1.5× slower (say, a co-tenant): the running error jumps, then recovers.
    const slowed = (shapes: BatchShape[]) => 1.5 * trueMs(shapes);
    for (let i = 0; i < 600; i++) {
      const shapes = randomBatch(next);
      s = observeBatch(s, shapes, slowed(shapes));
    }
    const probe = Array.from({ length: 50 }, () => randomBatch(next));
    const err = probe.map((b) => Math.abs(predictBatchMs(s, b) - slowed(b)) / slowed(b));
    expect(Math.max(...err)).to.be.lessThan(0.05);
  });

  it('tracks its running error: first APE, then an exponential average, with a count', () => {
    let s = createEstimatorState();
    const shapes = [{ n: 5, L: 1000 }, { n: 3, L: 200 }];
    const predicted = predictBatchMs(s, shapes);
    s = observeBatch(s, shapes, predicted * 2);
    expect(estimatorError(s)).to.deep.equal({ ewmaApe: 0.5, count: 1, lastApe: 0.5 });
    const p2 = predictBatchMs(s, shapes);
    s = observeBatch(s, shapes, p2); // a perfect prediction: APE 0
    const e = estimatorError(s);
    expect(e.count).to.equal(2);
    expect(e.lastApe).to.equal(0);
    expect(e.ewmaApe).to.be.closeTo(0.5 * (1 - s.errorAlpha), 1e-12);
  });

  it('is reasonable before any data: built-in priors fit the H200 Qwen3-32B profile', () => {
    const s = createEstimatorState();
    expect(estimatorError(s)).to.deep.equal({ ewmaApe: 0, count: 0, lastApe: null });
    const rows = PROFILE.filter((r) => r.model === 'qwen3-32b');
    expect(mape(s, rows.filter((r) => r.kind === 'mixed'))).to.be.lessThan(0.1);
    expect(mape(s, rows.filter((r) => r.kind === 'prefill'))).to.be.lessThan(0.1);
  });

  it('separates plain decoding (n = 1) from multi-token verification, as the H200 measured', () => {
    const s = createEstimatorState();
    const decode = predictBatchMs(s, Array.from({ length: 64 }, () => ({ n: 1, L: 2048 })));
    const verify = predictBatchMs(s, Array.from({ length: 64 }, () => ({ n: 2, L: 2048 })));
    expect(decode).to.be.closeTo(143.4, 15);
    expect(verify).to.be.closeTo(498.6, 50);
  });

  it('predicts prefill batches (L = 0) with the prefill model', () => {
    const s = createEstimatorState();
    expect(predictPrefillMs(s, [2048])).to.be.closeTo(265.8, 27);
    expect(predictPrefillMs(s, [2048, 2048, 2048, 2048])).to.be.greaterThan(predictPrefillMs(s, [2048]));
    expect(predictBatchMs(s, [{ n: 128, L: 0 }])).to.equal(predictPrefillMs(s, [128]));
    // A mixed batch is predicted as the sum of its parts.
    const mixed = predictBatchMs(s, [{ n: 128, L: 0 }, { n: 4, L: 500 }]);
    expect(mixed).to.be.closeTo(predictPrefillMs(s, [128]) + predictBatchMs(s, [{ n: 4, L: 500 }]), 1e-9);
  });

  it('fits a profile: in-sample error small, state JSON round-trips exactly', () => {
    const s = estimatorFromProfile(PROFILE.filter((r) => r.model === 'qwen3-32b'));
    expect(estimatorError(s).count).to.equal(109); // 70 grid + 30 mixed + 9 prefill rows
    expect(estimatorError(s).ewmaApe).to.be.lessThan(0.06);
    const back = JSON.parse(JSON.stringify(s)) as EstimatorState;
    expect(back).to.deep.equal(s);
    const shapes = [{ n: 9, L: 3000 }, { n: 2, L: 10 }];
    expect(predictBatchMs(back, shapes)).to.equal(predictBatchMs(s, shapes));
  });

  it('is pure: observing returns a new state and leaves the old one alone', () => {
    const s0 = createEstimatorState();
    const copy = JSON.parse(JSON.stringify(s0));
    const s1 = observeBatch(s0, [{ n: 4, L: 100 }], 80);
    expect(s0).to.deep.equal(copy);
    expect(s1).to.not.deep.equal(s0);
    expect(predictBatchMs(s0, [])).to.equal(0);
    expect(observeBatch(s0, [], 10)).to.equal(s0);
    expect(observeBatch(s0, [{ n: 1, L: 5 }], 0)).to.equal(s0);
  });

  it('a mixed prefill+verify batch updates only the running error', () => {
    const s0 = createEstimatorState();
    const s1 = observeBatch(s0, [{ n: 100, L: 0 }, { n: 3, L: 40 }], 500);
    expect(s1.verify).to.equal(s0.verify);
    expect(s1.prefill).to.equal(s0.prefill);
    expect(s1.error.count).to.equal(1);
  });

  it('refuses shapes that cannot be batch members', () => {
    const s = createEstimatorState();
    expect(() => predictBatchMs(s, [{ n: 0, L: 5 }])).to.throw(EstimatorInputError, 'batch shape needs integer n ≥ 1 and L ≥ 0, got n=0, L=5');
    expect(() => predictBatchMs(s, [{ n: 2, L: -1 }])).to.throw(EstimatorInputError);
  });

  it('adapts a too-high prior down to a much faster server (CPU-sized latencies)', () => {
    const next = seededUniform(3);
    let s = createEstimatorState(); // priors from an H200 32B: floor ≈ 54 ms
    const cpuMs = (shapes: BatchShape[]) => {
      const a = aggregateShapes(shapes);
      return 0.8 + 0.05 * a.B * a.nMax + 0.0004 * a.B * a.LMax;
    };
    for (let i = 0; i < 300; i++) {
      const shapes = randomBatch(next).slice(0, 8).map((x) => ({ n: x.n, L: 1 + (x.L % 400) }));
      s = observeBatch(s, shapes, cpuMs(shapes));
    }
    const probe = Array.from({ length: 50 }, () => randomBatch(next).slice(0, 8).map((x) => ({ n: x.n, L: 1 + (x.L % 400) })));
    const err = probe.map((b) => Math.abs(predictBatchMs(s, b) - cpuMs(b)) / cpuMs(b));
    expect(err.reduce((a, b) => a + b, 0) / err.length).to.be.lessThan(0.1);
  });
});
