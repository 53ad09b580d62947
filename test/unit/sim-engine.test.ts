import { expect } from 'chai';
import { applySchedulerEvent, initialSchedulerContext, reduceScheduler, type SchedulerEvent, type SchedulerSettings } from '../../machines/scheduler.ts';
import type { DraftTokenFeatures } from '../../policies/types.ts';
import type { AcceptanceModel } from '../../sim/acceptance.ts';
import { loadPoint } from '../../results/metrics.ts';
import { classOfDevice, runSimulation } from '../../sim/engine.ts';
import { EventQueue } from '../../sim/event-queue.ts';
import { DEFAULT_SERVER_PROFILE, loadServerProfile, runConfig, scenario, serverCostOf } from '../../sim/scenarios.ts';
import { serverCostFromProfile } from '../../sim/server-cost.ts';
import type { SimRunConfig, SimRunResult } from '../../sim/types.ts';
import type { PolicyName } from '../../policies/types.ts';

const rows = loadServerProfile(DEFAULT_SERVER_PROFILE);
const tinyCost = serverCostOf(scenario('tiny'));

/** A tiny run: 2 classes, short sessions, a few simulated seconds. */
function tiny(policy: PolicyName, devices: number, over: Partial<SimRunConfig> = {}): SimRunConfig {
  const s = scenario('tiny');
  s.durationMs = 8_000;
  s.warmupMs = 0;
  return { ...runConfig(s, tinyCost, policy, devices), ...over };
}

/** An acceptance model that accepts by position only (deterministic), with confident features. */
function scripted(acceptAt: (position: number) => boolean): AcceptanceModel {
  return {
    name: 'scripted',
    meanAcceptance: 0.5,
    sessionOffset: () => 0,
    draw: (_rng, _offset, position) => {
      const features: DraftTokenFeatures = { top1Prob: 0.99, entropy: 0.05, margin: 0.98, logitSpread: 15, position };
      return { features, accepted: acceptAt(position) };
    },
  };
}

function withAcceptance(c: SimRunConfig, model: AcceptanceModel): SimRunConfig {
  return { ...c, classes: c.classes.map((k) => ({ ...k, acceptance: model })) };
}

const strip = (r: SimRunResult) => ({ ...r, wallMs: 0 });

describe('sim: event queue', () => {
  it('pops by time, then in insertion order', () => {
    const q = new EventQueue<string>();
    q.push(5, 'c');
    q.push(1, 'a');
    q.push(5, 'd');
    q.push(1, 'b');
    q.push(0, 'z');
    const out: string[] = [];
    while (q.size > 0) out.push(q.pop()!.event);
    expect(out).to.deep.equal(['z', 'a', 'b', 'c', 'd']);
    expect(q.pop()).to.equal(undefined);
    expect(q.peekTime()).to.equal(Infinity);
  });
});

describe('sim: device classes', () => {
  it('deals devices to classes in proportion, interleaved', () => {
    const mk = (weight: number) => ({ ...tiny('wisp', 1).classes[0], weight });
    expect(classOfDevice([mk(1), mk(1)], 6)).to.deep.equal([0, 1, 0, 1, 0, 1]);
    const three = classOfDevice([mk(3), mk(1)], 8);
    expect(three.filter((c) => c === 0)).to.have.length(6);
  });
});

describe('sim: runs', () => {
  it('is deterministic for a seed, and a different seed gives a different run', () => {
    const a = runSimulation(tiny('wisp', 4));
    const b = runSimulation(tiny('wisp', 4));
    expect(JSON.stringify(strip(a))).to.equal(JSON.stringify(strip(b)));
    expect(a.records.length).to.be.greaterThan(4);
    const c = runSimulation(tiny('wisp', 4, { seed: 2 }));
    expect(JSON.stringify(c.records)).to.not.equal(JSON.stringify(a.records));
  });

  it('gives every policy the same prompts: the k-th session of a device has the same length', () => {
    const outputs = (p: PolicyName) => new Map(runSimulation(tiny(p, 3)).records.filter((r) => r.finished).map((r) => [r.sessionId, r.outputTokens]));
    const wisp = outputs('wisp');
    const central = outputs('centralized');
    const shared = [...wisp.keys()].filter((k) => central.has(k));
    expect(shared.length).to.be.greaterThan(3);
    for (const k of shared) expect(wisp.get(k), k).to.equal(central.get(k));
  });

  it('greedy verification accepts the longest accepted prefix of the draft', () => {
    // Positions 0 and 1 accepted, 2 and later rejected; SLED drafts to K_max (threshold 0).
    const c = withAcceptance({ ...tiny('sled', 2), controller: { kMax: 4, threshold: 0, minAcceptance: 0.2 } }, scripted((p) => p < 2 || p === 3));
    const r = runSimulation(c);
    const done = r.records.filter((x) => x.finished);
    expect(done.length).to.be.greaterThan(0);
    for (const x of done) {
      const s = x.stats;
      expect(s.acceptedByPosition.slice(2).every((n) => n === 0), 'nothing accepted after the first rejection').to.equal(true);
      expect(s.draftedByPosition[3] ?? 0).to.be.greaterThan(0);
      // Every token is accounted for: the first (prefill), then accepted drafts + one target token per round.
      expect(x.outputTokens).to.equal(1 + s.accepted + s.rounds);
    }
  });

  it('pipelined drafting reuses the look-ahead only when the whole draft and the bonus guess are accepted', () => {
    const all = runSimulation(withAcceptance({ ...tiny('wisp', 2), pipelinedDrafting: true }, scripted(() => true)));
    expect(all.lookahead.started).to.be.greaterThan(0);
    expect(all.lookahead.reused).to.be.greaterThan(0);
    const none = runSimulation(withAcceptance({ ...tiny('wisp', 2), pipelinedDrafting: true }, scripted((p) => p > 0)));
    expect(none.lookahead.reused).to.equal(0);
    const off = runSimulation(withAcceptance({ ...tiny('wisp', 2), pipelinedDrafting: false }, scripted(() => true)));
    expect(off.lookahead.started).to.equal(0);
  });

  it('centralized: one device gets a token per decode step', () => {
    const c = tiny('centralized', 1);
    const noiseless = { ...c, server: { ...c.server, cost: serverCostFromProfile(rows, 'qwen3-32b', 0) } };
    const r = runSimulation(noiseless);
    const done = r.records.filter((x) => x.finished);
    expect(done.length).to.be.greaterThan(1);
    const stepMs = noiseless.server.cost.meanBatchMs([{ n: 1, L: 100 }]);
    // Launch-bound: a one-session step costs the same at any of these context lengths.
    for (const x of done) expect(x.stats.tpotMs).to.be.closeTo(stepMs, 1);
    expect(r.batches.some((b) => b.kind === 'step')).to.equal(true);
  });

  it('SLED waiting for its batch: wake-ups always move simulated time forward', function () {
    this.timeout(20_000); // a livelock at the due instant would hang here
    const c = tiny('sled', 6, { scheduler: { ...tiny('sled', 6).scheduler, waitMs: 50, bMax: 8 } });
    const r = runSimulation(c);
    expect(r.records.filter((x) => x.finished).length).to.be.greaterThan(6);
    expect(r.events).to.be.lessThan(100_000);
  });

  it('spreads sessions over several workers with the scheduler\'s placement', () => {
    const r = runSimulation(tiny('wisp', 6, { workers: 3 }));
    expect(new Set(r.batches.map((b) => b.workerId))).to.deep.equal(new Set(['w0', 'w1', 'w2']));
  });
});

describe('sim: where the time goes', () => {
  for (const policy of ['wisp', 'sled', 'centralized'] as const) {
    it(`${policy}: a session's time parts add up to its duration, each ≥ 0; server time by kind adds up to the window`, () => {
      const r = runSimulation(tiny(policy, 4));
      const done = r.records.filter((x) => x.finished);
      expect(done.length).to.be.greaterThan(4);
      for (const x of done) {
        const t = x.timeMs!;
        for (const v of Object.values(t)) expect(v).to.be.at.least(0);
        const sum = t.drafting + t.network + t.queue + t.verify + t.memoryWait;
        expect(sum, x.sessionId).to.be.closeTo(x.endedAtMs - x.startedAtMs, 1e-6);
        // The remainder is the network: two one-way trips a round at most, never a large share.
        expect(t.network, `${x.sessionId} network`).to.be.lessThan(0.5 * sum);
        if (policy === 'centralized') expect(t.drafting).to.equal(0);
        else expect(t.drafting).to.be.greaterThan(0);
      }
      const point = loadPoint(r.records, { devices: 4, windowMs: r.windowMs, batches: r.batches, workers: 1, kvCapacityTokens: 1_000 });
      const st = point.serverMs!;
      expect(st.verify + st.decode + st.prefill + st.idle).to.be.closeTo(r.windowMs, r.windowMs * 0.05);
      expect(policy === 'centralized' ? st.decode : st.verify).to.be.greaterThan(0);
      expect(st.prefill).to.be.greaterThan(0);
      expect(point.sessionMsPerToken!.verify).to.be.greaterThan(0);
    });
  }

  it('sessions whose KV cache does not fit wait before their prefill; the wait is reported, the cache never over-full', () => {
    // Room for about two sessions (tiny: prompts ≤ 128 + answers ≤ 48 tokens).
    const base = tiny('centralized', 6);
    const cost = { ...base.server.cost, kvCapacityTokens: 360 };
    const r = runSimulation({ ...base, server: { ...base.server, cost } });
    const waited = r.records.filter((x) => (x.timeMs?.memoryWait ?? 0) > 0);
    expect(waited.length).to.be.greaterThan(0);
    expect(r.batches.every((b) => (b.kvReservedTokens ?? 0) <= 360)).to.equal(true);
    expect(Math.max(...r.batches.map((b) => b.memoryWaiting ?? 0))).to.be.greaterThan(0);
    const kv = loadPoint(r.records, { devices: 6, windowMs: r.windowMs, batches: r.batches, kvCapacityTokens: 360 }).kv!;
    expect(kv.peakUtilisation).to.be.at.most(1);
    expect(kv.meanWaiting).to.be.greaterThan(0);
    const free = runSimulation(base);
    expect(free.records.every((x) => (x.timeMs?.memoryWait ?? 0) === 0), 'the default tiny server has room for all').to.equal(true);
  });
});

describe('sim: the scheduler it drives', () => {
  for (const policy of ['wisp', 'sled', 'centralized'] as const) {
    it(`in-place reduction equals the pure reducer on a recorded ${policy} run`, () => {
      const events: SchedulerEvent[] = [];
      const cfg = tiny(policy, 5, { workers: 2 });
      runSimulation(cfg, { onSchedulerEvent: (e) => events.push(e) });
      expect(events.length).to.be.greaterThan(50);
      const settings: SchedulerSettings = {
        policy,
        ...cfg.scheduler,
        defaultSlo: cfg.slo,
        defaultReturnLatencyMs: 0,
      };
      let pure = initialSchedulerContext(settings);
      const owned = initialSchedulerContext(settings);
      for (const e of events) {
        const r = reduceScheduler(pure, e);
        pure = r.context;
        const effects = applySchedulerEvent(owned, e);
        expect(JSON.stringify(effects)).to.equal(JSON.stringify(r.effects));
      }
      expect(JSON.stringify(owned)).to.equal(JSON.stringify(pure));
    });
  }
});

describe('sim: the scheduler\'s closed-session memory in place', () => {
  it('matches the pure rebuild across the retention cap, expiry, re-closed ids and an out-of-order time', () => {
    const settings: SchedulerSettings = { policy: 'wisp', bMax: 4, waitMs: 5, maxBatchTokens: 512, ageBoundMs: 1_000, truncation: false, defaultSlo: { ttftMs: 1_000, tpotMs: 100 }, defaultReturnLatencyMs: 0 };
    // Start just under the cap (4,096), as a long run would be.
    const prefilled: Record<string, number> = {};
    for (let i = 0; i < 4_090; i++) prefilled[`p${i}`] = i;
    let pure = { ...initialSchedulerContext(settings), closed: { ...prefilled } };
    const owned = { ...initialSchedulerContext(settings), closed: { ...prefilled } };
    const check = (label: string) => expect(JSON.stringify(Object.entries(owned.closed)), label).to.equal(JSON.stringify(Object.entries(pure.closed)));
    let t = 4_090;
    for (let i = 0; i < 140; i++) {
      if (i === 100) t += 11 * 60_000; // everything older expires
      t += 1;
      const at = i === 120 ? t - 10 : t; // one close stamped earlier than the last
      const id = i % 9 === 0 ? `p${4_000 + i}` : i % 13 === 0 ? `s${i - 13}` : `s${i}`; // some ids close again
      const e: SchedulerEvent = { type: 'CLOSE', message: { v: 1, type: 'close', sessionId: id, deviceId: 'd', reason: 'done' }, atMs: at };
      pure = reduceScheduler(pure, e).context;
      applySchedulerEvent(owned, e);
      if (i === 50) expect(Object.keys(pure.closed).length, 'at the cap').to.equal(4_096);
      if (i % 10 === 0 || [99, 100, 101, 120, 121, 139].includes(i)) check(`after close ${i}`);
    }
    expect(Object.keys(owned.closed).length).to.be.lessThan(100);
  });
});
