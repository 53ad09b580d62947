import { expect } from 'chai';
import { expectedCommitted, prefillDeadlineMs, roundDeadlineMs } from '../../policies/deadline.ts';

describe('policies/deadline', () => {
  it('round deadline is t0 + τ·(c+1) − returnLatency', () => {
    expect(roundDeadlineMs(1000, 50, 0, 10)).to.equal(1040);
    expect(roundDeadlineMs(1000, 50, 4, 10)).to.equal(1240);
    // A session that ran ahead has slack: more committed tokens, later deadline.
    expect(roundDeadlineMs(1000, 50, 10, 0)).to.be.greaterThan(roundDeadlineMs(1000, 50, 9, 0));
  });

  it('prefill deadline is arrival + ttft − returnLatency', () => {
    expect(prefillDeadlineMs(200, 500, 20)).to.equal(680);
  });

  it('expected committed is 1 + Σ_i Π_{j≤i} a_j', () => {
    expect(expectedCommitted([])).to.equal(1);
    expect(expectedCommitted([1, 1, 1])).to.equal(4);
    expect(expectedCommitted([0.5, 0.5])).to.be.closeTo(1.75, 1e-12);
    expect(expectedCommitted([0.9, 0.8, 0.5])).to.be.closeTo(1 + 0.9 + 0.72 + 0.36, 1e-12);
    // A sure rejection cuts off everything after it.
    expect(expectedCommitted([0, 1, 1])).to.equal(1);
  });

  it('expected committed clamps out-of-range probabilities', () => {
    expect(expectedCommitted([1.5, -1])).to.equal(2);
    expect(expectedCommitted([Number.NaN, 1])).to.equal(1);
  });
});
