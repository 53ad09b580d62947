import { expect } from 'chai';
import fc from 'fast-check';
import type { BatchPolicyState } from '../../policies/batch-common.ts';
import { selectBatch } from '../../policies/batch.ts';
import { selectBatchCentralized } from '../../policies/batch-centralized.ts';
import { selectBatchSled } from '../../policies/batch-sled.ts';
import { selectBatchWisp } from '../../policies/batch-wisp.ts';
import { PolicyConfigError } from '../../policies/errors.ts';
import { createEstimatorState, predictBatchMs } from '../../policies/estimator.ts';
import type { BatchDecision, PendingRequest, PolicyName } from '../../policies/types.ts';

/**
 * A hand-set estimator with round numbers: a batch costs 10 ms + 1 ms per padded token
 * (B · n_max), no floor, context length free. Prefills alike (B · prompt length).
 */
const EST = createEstimatorState({
  verify: { theta: [10, 0, 576, 0, 0, 0], floorMs: 0 },
  prefill: { theta: [10, 32768, 0], floorMs: 0 },
});

let seq = 0;
function verify(opts: { drafts: number; deadlineMs: number; arrivalMs?: number; a?: number | number[]; L?: number; id?: string }): PendingRequest {
  const id = opts.id ?? `s${seq++}`;
  const acc = Array.isArray(opts.a) ? opts.a : new Array<number>(opts.drafts).fill(opts.a ?? 0.8);
  return {
    requestId: `${id}:1`,
    sessionId: id,
    kind: 'verify',
    round: 1,
    n: opts.drafts + 1,
    contextLength: opts.L ?? 100,
    predictedAcceptance: acc,
    arrivalMs: opts.arrivalMs ?? 0,
    deadlineMs: opts.deadlineMs,
  };
}

function prefill(opts: { n: number; deadlineMs: number; arrivalMs?: number; id?: string }): PendingRequest {
  const id = opts.id ?? `p${seq++}`;
  return { requestId: `${id}:0`, sessionId: id, kind: 'prefill', round: 0, n: opts.n, contextLength: 0, predictedAcceptance: [], arrivalMs: opts.arrivalMs ?? 0, deadlineMs: opts.deadlineMs };
}

function state(pending: PendingRequest[], over: Partial<BatchPolicyState> = {}): BatchPolicyState {
  return { pending, estimator: EST, bMax: 8, waitMs: 50, maxBatchTokens: 1000, ageBoundMs: 10_000, truncation: false, ...over };
}

const ids = (d: BatchDecision) => d.members.map((m) => m.requestId);

describe('policies/batch-wisp', () => {
  it('serves at-risk requests first, earliest deadline first', () => {
    // Solo: 10 + 3 = 13 ms; at risk when deadline − now ≤ 26 ms.
    const late2 = verify({ drafts: 2, deadlineMs: 25, id: 'c' });
    const late0 = verify({ drafts: 2, deadlineMs: 20, id: 'a' });
    const late1 = verify({ drafts: 2, deadlineMs: 22, id: 'b' });
    const relaxed = verify({ drafts: 2, deadlineMs: 5000, a: 1, id: 'z' }); // best density, plenty of slack
    const d = selectBatchWisp(state([relaxed, late2, late0, late1], { bMax: 2 }), 0);
    expect(ids(d)).to.deep.equal(['a:1', 'b:1']);
    expect(d.wakeAtMs).to.equal(null);
  });

  it('fills by density E[committed] / marginal latency', () => {
    // Same marginal cost (2 drafts each, padded to 3): order by expected committed tokens.
    const lo = verify({ drafts: 2, deadlineMs: 5000, a: 0.2, id: 'lo' });
    const hi = verify({ drafts: 2, deadlineMs: 5000, a: 0.9, id: 'hi' });
    const mid = verify({ drafts: 2, deadlineMs: 5000, a: 0.5, id: 'mid' });
    expect(ids(selectBatchWisp(state([lo, hi, mid], { bMax: 2 }), 0))).to.deep.equal(['hi:1', 'mid:1']);
    // A long draft with slightly more expected tokens costs far more time: the short one goes first.
    const long = verify({ drafts: 8, deadlineMs: 5000, a: 0.5, id: 'long' }); // E ≈ 2, solo ΔT 19 ms
    const short = verify({ drafts: 1, deadlineMs: 5000, a: 0.9, id: 'short' }); // E = 1.9, solo ΔT 12 ms
    expect(ids(selectBatchWisp(state([long, short], { bMax: 1 }), 0))).to.deep.equal(['short:1']);
  });

  it('rejects an addition that would break a member’s deadline', () => {
    const tight = verify({ drafts: 2, deadlineMs: 24, id: 'tight' }); // alone: 13 ms
    const big = verify({ drafts: 8, deadlineMs: 5000, id: 'big' }); // with tight: 10 + 2·9 = 28 > 24
    const small = verify({ drafts: 1, deadlineMs: 5000, id: 'small' }); // with tight: 10 + 2·3 = 16
    const d = selectBatchWisp(state([big, tight, small]), 0);
    expect(ids(d)).to.deep.equal(['tight:1', 'small:1']);
    expect(d.predictedMs).to.equal(10 + 2 * 3);
    expect(d.predictedMs).to.equal(predictBatchMs(EST, [{ n: 3, L: 100 }, { n: 2, L: 100 }]));
  });

  it('truncation verifies the largest draft prefix that keeps every deadline', () => {
    const tight = verify({ drafts: 2, deadlineMs: 24, id: 'tight' });
    const big = verify({ drafts: 8, deadlineMs: 5000, id: 'big' });
    // 10 + 2·(m + 1) ≤ 24  ⇒  m ≤ 6.
    const d = selectBatchWisp(state([big, tight], { truncation: true }), 0);
    expect(d.members).to.deep.equal([
      { requestId: 'tight:1', verifyTokens: 2 },
      { requestId: 'big:1', verifyTokens: 6 },
    ]);
    expect(d.predictedMs).to.equal(24);
    // Truncation also respects the token cap: Σ n ≤ 7 leaves room for m + 1 ≤ 4.
    const capped = selectBatchWisp(state([big, tight], { truncation: true, maxBatchTokens: 7 }), 0);
    expect(capped.members[1]).to.deep.equal({ requestId: 'big:1', verifyTokens: 3 });
  });

  it('truncates a request to meet its own deadline', () => {
    const r = verify({ drafts: 8, deadlineMs: 15, id: 'r' }); // full: 19 ms; m = 4 → 15 ms
    expect(selectBatchWisp(state([r], { truncation: true }), 0).members).to.deep.equal([{ requestId: 'r:1', verifyTokens: 4 }]);
    // Without truncation it cannot make it, but it is still served (never dropped).
    expect(selectBatchWisp(state([r]), 0).members).to.deep.equal([{ requestId: 'r:1', verifyTokens: 8 }]);
  });

  it('no starvation: a request older than the age bound is served first', () => {
    const old = verify({ drafts: 8, deadlineMs: 1e9, a: 0.1, arrivalMs: -600, id: 'old' });
    const urgent = verify({ drafts: 1, deadlineMs: 20, a: 0.9, id: 'urgent' });
    expect(ids(selectBatchWisp(state([urgent, old], { bMax: 1, ageBoundMs: 500 }), 0))).to.deep.equal(['old:1']);
    expect(ids(selectBatchWisp(state([urgent, old], { bMax: 1, ageBoundMs: 700 }), 0))).to.deep.equal(['urgent:1']);
  });

  it('serves requests that can no longer make their deadline, after those that can', () => {
    const lost = verify({ drafts: 2, deadlineMs: -50, id: 'lost' });
    const ok = verify({ drafts: 2, deadlineMs: 500, id: 'ok' });
    expect(ids(selectBatchWisp(state([lost, ok], { bMax: 1 }), 0))).to.deep.equal(['ok:1']);
    expect(ids(selectBatchWisp(state([lost, ok], { bMax: 2 }), 0))).to.deep.equal(['ok:1', 'lost:1']);
    expect(ids(selectBatchWisp(state([lost]), 0))).to.deep.equal(['lost:1']);
  });

  it('keeps a late request out when it would break a deadline that holds', () => {
    const tight = verify({ drafts: 2, deadlineMs: 16, id: 'tight' }); // alone 13 ms
    const lost = verify({ drafts: 8, deadlineMs: -50, id: 'lost' }); // would make it 28 ms
    expect(ids(selectBatchWisp(state([lost, tight]), 0))).to.deep.equal(['tight:1']);
  });

  it('builds a batch of one kind: prefills and verifications are not mixed', () => {
    const p = prefill({ n: 64, deadlineMs: 80, id: 'p' }); // alone: 74 ms, urgent
    const v = verify({ drafts: 2, deadlineMs: 5000, id: 'v' });
    const d = selectBatchWisp(state([v, p]), 0);
    expect(d.members).to.deep.equal([{ requestId: 'p:0', verifyTokens: 0 }]);
    expect(d.predictedMs).to.equal(74);
  });

  it('caps members and tokens; a lone oversized request still runs', () => {
    const rs = [0, 1, 2, 3].map((i) => verify({ drafts: 4, deadlineMs: 5000, id: `r${i}` }));
    expect(selectBatchWisp(state(rs, { bMax: 3 }), 0).members).to.have.length(3);
    expect(selectBatchWisp(state(rs, { maxBatchTokens: 10 }), 0).members).to.have.length(2);
    expect(selectBatchWisp(state(rs.slice(0, 1), { maxBatchTokens: 2 }), 0).members).to.have.length(1);
  });

  it('returns an idle decision for no pending work and does not mutate its input', () => {
    expect(selectBatchWisp(state([]), 0)).to.deep.equal({ members: [], wakeAtMs: null, predictedMs: 0 });
    const pending = [verify({ drafts: 2, deadlineMs: 100, id: 'x' }), verify({ drafts: 1, deadlineMs: 50, id: 'y' })];
    const copy = JSON.parse(JSON.stringify(pending));
    selectBatchWisp(state(pending), 0);
    expect(pending).to.deep.equal(copy);
  });

  it('property: decisions respect caps, are unique, never empty with work pending, and keep feasible deadlines', () => {
    const req = fc.record({
      drafts: fc.integer({ min: 0, max: 8 }),
      slack: fc.integer({ min: -100, max: 300 }),
      age: fc.integer({ min: 0, max: 1000 }),
      a: fc.double({ min: 0, max: 1, noNaN: true }),
      L: fc.integer({ min: 1, max: 4000 }),
    });
    fc.assert(
      fc.property(fc.array(req, { minLength: 1, maxLength: 30 }), fc.integer({ min: 1, max: 16 }), fc.integer({ min: 9, max: 200 }), fc.boolean(), (specs, bMax, cap, truncation) => {
        const pending = specs.map((s, i) => verify({ drafts: s.drafts, deadlineMs: 1000 + s.slack, arrivalMs: 1000 - s.age, a: s.a, L: s.L, id: `q${i}` }));
        const d = selectBatchWisp(state(pending, { bMax, maxBatchTokens: cap, truncation, ageBoundMs: 800 }), 1000);
        expect(d.members.length).to.be.within(1, bMax);
        expect(new Set(ids(d)).size).to.equal(d.members.length);
        const byId = new Map(pending.map((p) => [p.requestId, p]));
        const fed = d.members.map((m) => m.verifyTokens + 1);
        d.members.forEach((m) => expect(m.verifyTokens).to.be.at.most(byId.get(m.requestId)!.n - 1));
        if (d.members.length > 1) expect(fed.reduce((a, b) => a + b, 0)).to.be.at.most(cap);
        // Without starving members, the first member (which always meets its own deadline if it
        // can) still meets it when the batch is done.
        const first = byId.get(d.members[0].requestId)!;
        const anyOld = d.members.some((m) => 1000 - byId.get(m.requestId)!.arrivalMs >= 800);
        const firstAlone = 10 + d.members[0].verifyTokens + 1;
        if (!anyOld && 1000 + firstAlone <= first.deadlineMs) expect(1000 + d.predictedMs).to.be.at.most(first.deadlineMs);
      }),
      { seed: 42, numRuns: 200 },
    );
  });
});

describe('policies/batch-sled', () => {
  it('waits until bMax are pending or the oldest waited waitMs, then dispatches FIFO', () => {
    const a = verify({ drafts: 3, deadlineMs: 0, arrivalMs: 100, id: 'a' });
    const b = verify({ drafts: 5, deadlineMs: 0, arrivalMs: 110, id: 'b' });
    const s = (pending: PendingRequest[]) => state(pending, { bMax: 3, waitMs: 50 });
    expect(selectBatchSled(s([b, a]), 120)).to.deep.equal({ members: [], wakeAtMs: 150, predictedMs: 0 });
    const due = selectBatchSled(s([b, a]), 150);
    expect(due.members).to.deep.equal([
      { requestId: 'a:1', verifyTokens: 3 },
      { requestId: 'b:1', verifyTokens: 5 },
    ]);
    expect(due.predictedMs).to.equal(10 + 2 * 6);
    const c = verify({ drafts: 1, deadlineMs: 0, arrivalMs: 115, id: 'c' });
    const d = verify({ drafts: 1, deadlineMs: 0, arrivalMs: 118, id: 'd' });
    expect(ids(selectBatchSled(s([d, c, b, a]), 120))).to.deep.equal(['a:1', 'b:1', 'c:1']);
  });

  it('ignores deadlines and never truncates', () => {
    const r = verify({ drafts: 8, deadlineMs: -1000, arrivalMs: 0, id: 'r' });
    expect(selectBatchSled(state([r], { bMax: 1, truncation: true }), 0).members).to.deep.equal([{ requestId: 'r:1', verifyTokens: 8 }]);
  });

  it('batches kinds separately; the kind whose oldest request is older goes first when both are due', () => {
    const p = prefill({ n: 30, deadlineMs: 0, arrivalMs: 10, id: 'p' });
    const v = verify({ drafts: 2, deadlineMs: 0, arrivalMs: 20, id: 'v' });
    expect(ids(selectBatchSled(state([v, p], { bMax: 4, waitMs: 50 }), 100))).to.deep.equal(['p:0']);
    // Only the prefill group is due at 62 (waited 52 ms); the verify waits for 70.
    expect(ids(selectBatchSled(state([v, p], { bMax: 4, waitMs: 50 }), 62))).to.deep.equal(['p:0']);
    expect(selectBatchSled(state([v], { bMax: 4, waitMs: 50 }), 62).wakeAtMs).to.equal(70);
  });
});

describe('policies/batch-centralized', () => {
  it('runs every pending step now, FIFO, up to bMax', () => {
    const steps = [3, 1, 2, 0].map((t) => verify({ drafts: 0, deadlineMs: 0, arrivalMs: t, id: `s${t}` }));
    const d = selectBatchCentralized(state(steps, { bMax: 3 }), 5);
    expect(ids(d)).to.deep.equal(['s0:1', 's1:1', 's2:1']);
    expect(d.wakeAtMs).to.equal(null);
    expect(d.predictedMs).to.equal(10 + 3);
  });
});

describe('policies/batch selectBatch', () => {
  it('dispatches by policy name and refuses unknown ones', () => {
    const pending = [verify({ drafts: 2, deadlineMs: 100, arrivalMs: 0, id: 'k' })];
    for (const name of ['wisp', 'sled', 'centralized'] as PolicyName[]) {
      expect(ids(selectBatch(name, state(pending, { waitMs: 0 }), 10)), name).to.deep.equal(['k:1']);
    }
    expect(() => selectBatch('fifo' as PolicyName, state(pending), 0)).to.throw(PolicyConfigError, 'unknown batch policy "fifo" (known: wisp, sled, centralized, adaptive)');
    expect(() => selectBatch('wisp', state(pending, { bMax: 0 }), 0)).to.throw(PolicyConfigError, 'bMax must be an integer ≥ 1, got 0');
  });
});
