import { expect } from 'chai';
import type { SessionStats } from '../../protocol/messages.ts';
import {
  medianRun,
  acceptanceSummary,
  attainedSlo,
  attainment,
  capacity,
  energyPerTokenJ,
  goodputTokS,
  loadPoint,
  percentile,
  policyResult,
  ratioBetween,
  summarize,
  throughputTokS,
  wastedDraftSummary,
  type LoadPoint,
  type SessionRecord,
} from '../../results/metrics.ts';

const SLO = { ttftMs: 1_000, tpotMs: 100 };

function stats(over: Partial<SessionStats>): SessionStats {
  return {
    ttftMs: 0,
    tpotMs: 0,
    sloAttained: false,
    rounds: 0,
    drafted: 0,
    accepted: 0,
    wastedDraftTokens: 0,
    wastedDraftMs: 0,
    queueMs: 0,
    verifyMs: 0,
    acceptedByPosition: [],
    draftedByPosition: [],
    ...over,
  };
}

function rec(id: string, over: Partial<SessionRecord>, s: Partial<SessionStats>): SessionRecord {
  return {
    sessionId: id,
    deviceId: `dev-${id}`,
    deviceClass: 'jetson',
    startedAtMs: 0,
    endedAtMs: 1_000,
    finished: true,
    outputTokens: 0,
    energyJ: 0,
    draftMs: 0,
    ...over,
    stats: stats(s),
  };
}

// Hand-checked: A attains; B misses TTFT; C misses TPOT; D was cut off by the end of the run.
const A = rec('a', { outputTokens: 100, energyJ: 10, draftMs: 400 }, { ttftMs: 500, tpotMs: 80, sloAttained: true, rounds: 10, drafted: 40, accepted: 30, wastedDraftMs: 100, draftedByPosition: [10, 10, 10, 10], acceptedByPosition: [9, 8, 7, 6] });
const B = rec('b', { outputTokens: 50, energyJ: 5, draftMs: 100, deviceClass: 'pi' }, { ttftMs: 1_500, tpotMs: 50, rounds: 5, drafted: 10, accepted: 5, wastedDraftMs: 50, draftedByPosition: [5, 5], acceptedByPosition: [3, 2] });
const C = rec('c', { outputTokens: 30, energyJ: 3, draftMs: 0 }, { ttftMs: 200, tpotMs: 120 });
const D = rec('d', { outputTokens: 10, energyJ: 99, finished: false, deviceClass: 'pi' }, { ttftMs: 2_500, tpotMs: 0 });

describe('bench metrics (hand-checked)', () => {
  it('judges a session by TTFT and mean TPOT, and never an unfinished one', () => {
    expect(attainedSlo(A, SLO)).to.equal(true);
    expect(attainedSlo(B, SLO)).to.equal(false);
    expect(attainedSlo(C, SLO)).to.equal(false);
    expect(attainedSlo(D, SLO)).to.equal(false);
    expect(attainedSlo(A)).to.equal(true); // the record's own verdict
    // Exactly at the bound attains (≤).
    expect(attainedSlo(rec('e', {}, { ttftMs: 1_000, tpotMs: 100 }), SLO)).to.equal(true);
  });

  it('attainment is the attaining share of judged sessions (0 for none)', () => {
    expect(attainment([A, B, C, D], SLO)).to.equal(0.25);
    expect(attainment([A], SLO)).to.equal(1);
    expect(attainment([], SLO)).to.equal(0);
  });

  it('goodput counts only attaining sessions; throughput every finished one', () => {
    // 100 tokens of A over a 10 s window.
    expect(goodputTokS([A, B, C, D], 10_000, SLO)).to.equal(10);
    // A + B + C = 180 tokens over 10 s; D is unfinished.
    expect(throughputTokS([A, B, C, D], 10_000)).to.equal(18);
    expect(() => goodputTokS([A], 0, SLO)).to.throw(RangeError);
  });

  it('capacity is the largest device count with ≥ 90 % attainment', () => {
    expect(capacity([
      { devices: 2, attainment: 1 },
      { devices: 4, attainment: 0.95 },
      { devices: 8, attainment: 0.9 },
      { devices: 16, attainment: 0.5 },
    ])).to.equal(8);
    // By the definition, a passing larger count wins even after a failing one.
    expect(capacity([
      { devices: 16, attainment: 0.5 },
      { devices: 32, attainment: 0.92 },
      { devices: 8, attainment: 0.9 },
    ])).to.equal(32);
    expect(capacity([{ devices: 2, attainment: 0.89 }])).to.equal(0);
    expect(capacity([{ devices: 2, attainment: 0.8 }], 0.8)).to.equal(2);
  });

  it('percentiles interpolate between closest ranks', () => {
    expect(percentile([4, 1, 3, 2], 50)).to.equal(2.5);
    expect(percentile([1, 2, 3, 4], 90)).to.be.closeTo(3.7, 1e-12);
    expect(percentile([1, 2, 3, 4], 0)).to.equal(1);
    expect(percentile([1, 2, 3, 4], 100)).to.equal(4);
    expect(percentile([], 50)).to.equal(0);
    const s = summarize([10, 20, 30, 40, 50]);
    expect(s).to.deep.equal({ count: 5, mean: 30, p50: 30, p90: 46, p99: 49.6, max: 50 });
  });

  it('energy per token over finished sessions', () => {
    // (10 + 5 + 3) J over (100 + 50 + 30) tokens; D (unfinished) is left out.
    expect(energyPerTokenJ([A, B, C, D])).to.be.closeTo(0.1, 1e-12);
    expect(energyPerTokenJ([])).to.equal(0);
  });

  it('acceptance and wasted drafting time', () => {
    const a = acceptanceSummary([A, B]);
    // Accepted 35 of 50 judged drafts; 35 accepted over 15 rounds; 50 drafted over 15 rounds.
    expect(a.rate).to.equal(35 / 50);
    expect(a.acceptedPerRound).to.equal(35 / 15);
    expect(a.draftedPerRound).to.equal(50 / 15);
    expect(a.byPosition).to.deep.equal([12 / 15, 10 / 15, 7 / 10, 6 / 10]);
    const w = wastedDraftSummary([A, B]);
    expect(w.totalMs).to.equal(150);
    expect(w.fraction).to.equal(150 / 500);
    expect(w.msPerOutputToken).to.equal(1);
  });

  it('a load point and a policy result put them together', () => {
    const p = loadPoint([A, B, C, D], {
      devices: 4,
      windowMs: 10_000,
      slo: SLO,
      batches: [
        { workerId: 'w', kind: 'verify', size: 2, startedAtMs: 0, actualMs: 100, predictedMs: 110, truncatedTokens: 1 },
        { workerId: 'w', kind: 'verify', size: 4, startedAtMs: 0, actualMs: 50, predictedMs: 40, truncatedTokens: 2 },
        { workerId: 'w', kind: 'step', size: 6, startedAtMs: 0, actualMs: 50, predictedMs: null, truncatedTokens: 0 },
      ],
    });
    expect(p.attainment).to.equal(0.25);
    expect(p.goodputTokS).to.equal(10);
    expect(p.sessions).to.equal(4);
    expect(p.batchSize.mean).to.equal(4);
    // APE: |110 − 100| / 100 = 0.1 and |40 − 50| / 50 = 0.2; decode steps are not predicted.
    expect(p.estimatorApe.mean).to.be.closeTo(0.15, 1e-12);
    expect(p.truncatedPerRound).to.equal(3 / 6);
    expect(p.attainmentByClass).to.deep.equal({ jetson: 0.5, pi: 0 });

    const mk = (devices: number, att: number, good: number): LoadPoint => ({ ...p, devices, attainment: att, goodputTokS: good, energyJPerToken: devices / 100 });
    const r = policyResult([mk(8, 0.5, 300), mk(2, 1, 100), mk(4, 0.95, 200)]);
    expect(r.capacity).to.equal(4);
    expect(r.goodputTokS).to.equal(300);
    expect(r.goodputAtDevices).to.equal(8);
    expect(r.energyJPerToken).to.equal(0.04);
    expect(r.points.map((x) => x.devices)).to.deep.equal([2, 4, 8]);
    const base = policyResult([mk(2, 0.95, 50), mk(4, 0.5, 75)]);
    expect(ratioBetween(r, base)).to.deep.equal({ capacity: 2, goodput: 4 });
    expect(ratioBetween(r, policyResult([mk(2, 0.1, 0)]))).to.deep.equal({ capacity: null, goodput: null });
  });
});

describe('medianRun (a load run several times)', () => {
  const run = (attainment: number, goodputTokS: number) => ({ ...loadPoint([], { devices: 8, windowMs: 1_000 }), attainment, goodputTokS });

  it('keeps the median run by attainment, then goodput, with every run\'s range; the lower middle when even', () => {
    const m = medianRun([run(0.95, 300), run(0.8, 250), run(1, 310)]);
    expect([m.attainment, m.goodputTokS]).to.deep.equal([0.95, 300]);
    expect(m.repeats).to.deep.equal({ runs: 3, attainment: { min: 0.8, max: 1 }, goodputTokS: { min: 250, max: 310 } });
    const even = medianRun([run(0.92, 300), run(0.88, 280)]);
    expect(even.attainment, 'a tie between two leans to the worse').to.equal(0.88);
    expect(even.repeats?.runs).to.equal(2);
    const same = medianRun([run(0.9, 200), run(0.9, 100), run(0.9, 150)]);
    expect(same.goodputTokS).to.equal(150);
  });

  it('returns a single run as it is and refuses none', () => {
    const one = run(0.5, 10);
    expect(medianRun([one])).to.equal(one);
    expect(() => medianRun([])).to.throw(RangeError);
  });
});
