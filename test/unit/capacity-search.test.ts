/**
 * The capacity search shared by `wisp sim map` and `wisp bench` (results/capacity-search.ts), on
 * made-up attainment curves: doubling, bisection to the precision, censoring at the largest
 * count, and loads that judged no session.
 */
import { expect } from 'chai';
import { nextSearchCount, searchBracket, searchCensored, type CapacitySearch, type SearchedLoad } from '../../results/capacity-search.ts';

/** Runs a search to its end against `attainment(devices)`; returns the counts it ran, in order. */
function search(s: CapacitySearch, attainment: (n: number) => number, sessions: (n: number) => number = () => 10): { ran: number[]; loads: SearchedLoad[] } {
  const loads: SearchedLoad[] = [];
  for (let n = nextSearchCount(loads, s); n !== null; n = nextSearchCount(loads, s)) {
    expect(loads.map((l) => l.devices), 'a count is never run twice').not.to.include(n);
    loads.push({ devices: n, attainment: attainment(n), sessions: sessions(n) });
    expect(loads.length, 'the search ends').to.be.below(64);
  }
  return { ran: loads.map((l) => l.devices), loads };
}

describe('capacity search', () => {
  it('doubles until a load misses the target, then bisects until within the precision', () => {
    // Capacity 37: attainment falls below 0.9 above 37 devices.
    const { ran, loads } = search({ start: 2, max: 512, precision: 0.125 }, (n) => (n <= 37 ? 0.95 : 0.5));
    expect(ran.slice(0, 6)).to.deep.equal([2, 4, 8, 16, 32, 64]);
    expect(ran.slice(6)).to.deep.equal([48, 40, 36]);
    // 40 − 36 is within 12.5 % of 36: the capacity is 36 at the stated precision (the true one, 37, lies between).
    expect(searchBracket(loads)).to.deep.equal({ pass: 36, fail: 40 });
    expect(searchCensored(loads)).to.equal(false);
  });

  it('stops at the largest count and calls a pass there censored', () => {
    const { ran, loads } = search({ start: 2, max: 24, precision: 0.125 }, () => 1);
    expect(ran).to.deep.equal([2, 4, 8, 16, 24]);
    expect(searchCensored(loads)).to.equal(true);
    expect(searchBracket(loads).pass).to.equal(24);
  });

  it('a policy that fails at its first load has capacity 0', () => {
    const { ran, loads } = search({ start: 2, max: 64, precision: 0.125 }, () => 0.2);
    expect(ran).to.deep.equal([2, 1]);
    expect(searchBracket(loads)).to.deep.equal({ pass: 0, fail: 1 });
  });

  it('while doubling, a load that judged no session says nothing; once bisecting, a miss is a miss', () => {
    // At 2 devices no session started in the window (long sessions): the doubling goes on.
    const doubling = search({ start: 2, max: 16, precision: 0.125 }, (n) => (n === 2 ? 0 : 1), (n) => (n === 2 ? 0 : 10));
    expect(doubling.ran).to.deep.equal([2, 4, 8, 16]);
    expect(searchCensored(doubling.loads)).to.equal(true);
    const loads: SearchedLoad[] = [
      { devices: 8, attainment: 1, sessions: 10 },
      { devices: 16, attainment: 0.5, sessions: 10 },
      { devices: 12, attainment: 0, sessions: 0 },
    ];
    expect(searchBracket(loads)).to.deep.equal({ pass: 8, fail: 12 });
    expect(nextSearchCount(loads, { start: 2, max: 64, precision: 0.125 })).to.equal(10);
  });
});
