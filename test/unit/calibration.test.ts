import { expect } from 'chai';
import type { RoundTiming, ServedPrompt } from '../../actors/edge/device.ts';
import { calibrate, CalibrationError, trimmedMean } from '../../bench/calibration.ts';
import { profileRow } from '../../bench/live.ts';
import type { BatchReport } from '../../machines/verifier-worker.ts';
import { parseProfileCsv } from '../../policies/profile-csv.ts';
import { compareWithLive, validationTable } from '../../sim/replay.ts';

const stats = { ttftMs: 0, tpotMs: 0, sloAttained: true, rounds: 0, drafted: 0, accepted: 0, wastedDraftTokens: 0, wastedDraftMs: 0, queueMs: 0, verifyMs: 0, acceptedByPosition: [], draftedByPosition: [] };
const served = (deviceId: string, startedAtMs: number, endedAtMs: number, promptTokens: number, tokens: number): ServedPrompt => ({
  requestId: `${deviceId}-${startedAtMs}`,
  sessionId: `${deviceId}-${startedAtMs}`,
  deviceId,
  profileName: 'p',
  tokens: new Array<number>(tokens).fill(1),
  stats,
  error: null,
  stopReason: 'length',
  startedAtMs,
  endedAtMs,
  energyJ: 0,
  draftMs: 0,
  promptTokens,
});
const round = (roundTripMs: number, queueMs: number, verifyMs: number, draftMsPerToken: number[], profileName = 'p'): RoundTiming => ({ profileName, roundTripMs, networkRttMs: 4, queueMs, verifyMs, draftMsPerToken });
const batch = (batchId: string, startedAtMs: number, actualMs: number, busyMs: number): BatchReport => ({ batchId, shapes: [{ n: 2, L: 5 }], actualMs, busyMs, startedAtMs, predictedMs: 0, sessions: 1, kvBytes: 0, decodeActive: 0 });

describe('live calibration (what the simulator is fed besides profiles)', () => {
  it('derives think time, overheads, the link hop and drafting pace from hand-checked records', () => {
    const c = calibrate(
      [
        // Device a: gaps 10 and 20 ms; device b: one gap of 30 ms and one of 5 s (between loads: ignored).
        served('a', 0, 100, 5, 32),
        served('a', 110, 200, 7, 32),
        served('a', 220, 300, 6, 30),
        served('b', 0, 100, 8, 32),
        served('b', 130, 200, 5, 32),
        served('b', 5_200, 5_300, 5, 32),
      ],
      [
        // Residuals: 20 − 4 − 3 − 5 = 8; 30 − 4 − 10 − 6 = 10; 16 − 4 − 1 − 5 = 6 → mean 8.
        round(20, 3, 5, [10, 11]),
        round(30, 10, 6, [12]),
        round(16, 1, 5, [10], 'q'),
      ],
      [
        // Verify overheads 1, 2, 4 → 7/3. Steps back to back: cycles beyond the model 213 − 200 − 10 = 3 and
        // 225 − 213 − 10 = 2 → mean 2.5 (b3 → step-1 is no pair of steps).
        batch('b1', 0, 5, 6),
        batch('b2', 6, 5, 7),
        batch('b3', 100, 5, 9),
        batch('step-1', 200, 10, 11),
        batch('step-2', 213, 10, 11),
        batch('step-3', 225, 10, 11),
      ],
    );
    expect(c.promptTokens).to.deep.equal({ min: 5, max: 8 });
    expect(c.outputTokens).to.deep.equal({ min: 30, max: 32 });
    expect(c.thinkMs).to.equal(20);
    expect(c.batchOverheadMs).to.be.closeTo(7 / 3, 1e-12);
    expect(c.stepOverheadMs).to.equal(2.5);
    expect(c.roundResidualMs).to.equal(8);
    // Two hops and the worker's overhead before replying: (8 − 7/3) / 2.
    expect(c.linkHopMs).to.be.closeTo((8 - 7 / 3) / 2, 1e-12);
    expect(c.draftMsPerToken).to.deep.equal({ p: 11, q: 10 });
    expect(c.counts).to.deep.equal({ sessions: 6, rounds: 3, batches: 3, steps: 3 });
  });

  it('averages without the slowest 2 % (a stall does not move a constant)', () => {
    const xs = [...new Array<number>(98).fill(1), 500, 900];
    expect(trimmedMean(xs)).to.equal(1);
    expect(trimmedMean([1, 2, 6])).to.equal(3);
    expect(trimmedMean([])).to.equal(0);
  });

  it('refuses a run that finished no session', () => {
    expect(() => calibrate([{ ...served('a', 0, 1, 5, 0), error: { code: 'internal', message: 'x' } }], [], [])).to.throw(CalibrationError, /finished no session/);
  });

  it('writes a multi-prompt prefill as the profile format counts it (padded to the longest)', () => {
    const row = profileRow({ batchId: 'b', shapes: [{ n: 8, L: 0 }, { n: 6, L: 0 }, { n: 5, L: 0 }], actualMs: 6.5, predictedMs: 0, sessions: 3, kvBytes: 0, decodeActive: 0 });
    const header = 'model,kind,B,n_max,L_max,sum_n,sum_L,sum_nL,ms_median,ms_min,ms_max,per_request_n,per_request_L';
    const [parsed] = parseProfileCsv(`${header}\n${row}\n`, 'live');
    expect(parsed.kind).to.equal('prefill');
    expect(parsed.sumN).to.equal(24);
    expect(parsed.perRequestN).to.deep.equal([8, 6, 5]);
  });
});

describe('simulator against a live run (comparison arithmetic)', () => {
  const point = (devices: number, attainment: number, goodputTokS: number) => ({ devices, attainment, goodputTokS });
  it('computes capacity, best-goodput and per-load goodput errors as (sim − live) / live', () => {
    const live = { policies: { wisp: { capacity: 4, goodputTokS: 200, points: [point(2, 1, 100), point(4, 0.95, 200), point(8, 0.5, 150)] } } };
    const sim = { policies: { wisp: { capacity: 8, goodputTokS: 300, points: [point(2, 1, 110), point(4, 1, 180), point(8, 0.9, 300)] } } };
    const v = compareWithLive(live, sim);
    expect(v.policies).to.have.length(1);
    const w = v.policies[0];
    expect(w.capacityError).to.equal(1);
    expect(w.goodputError).to.equal(0.5);
    // |110−100|/100 = 0.1, |180−200|/200 = 0.1, |300−150|/150 = 1 → mean 0.4.
    expect(w.meanLoadGoodputError).to.be.closeTo(0.4, 1e-12);
    expect(v.worstCapacityError).to.equal(1);
    expect(validationTable(v)).to.contain('+100.0%').and.contain('+50.0%').and.contain('40.0%');
  });

  it('leaves out policies one side lacks and reports n/a for a live figure of 0', () => {
    const live = { policies: { sled: { capacity: 0, goodputTokS: 0, points: [point(2, 0.5, 0)] }, centralized: { capacity: 2, goodputTokS: 10, points: [point(2, 1, 10)] } } };
    const sim = { policies: { sled: { capacity: 2, goodputTokS: 5, points: [point(2, 1, 5)] } } };
    const v = compareWithLive(live, sim);
    expect(v.policies.map((p) => p.policy)).to.deep.equal(['sled']);
    expect(v.policies[0].capacityError).to.equal(null);
    expect(v.policies[0].meanLoadGoodputError).to.equal(null);
    expect(validationTable(v)).to.contain('n/a');
  });
});
