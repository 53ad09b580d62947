import { expect } from 'chai';
import { createActor } from 'xstate';
import { PROTOCOL_VERSION, type SessionOpen, type VerifyBatch, type VerifyRequest, type WorkerStatus } from '../../protocol/messages.ts';
import { initialSchedulerContext, reduceScheduler, schedulerMachine, type SchedulerSettings } from '../../machines/scheduler.ts';

const settings = (policy: SchedulerSettings['policy']): SchedulerSettings => ({
  policy,
  bMax: 4,
  waitMs: 10,
  maxBatchTokens: 512,
  ageBoundMs: 1_000,
  truncation: false,
  defaultSlo: { ttftMs: 1_000, tpotMs: 100 },
  defaultReturnLatencyMs: 0,
});

const worker = (workerId: string, extra: Partial<WorkerStatus> = {}): WorkerStatus => ({
  v: PROTOCOL_VERSION,
  type: 'worker',
  workerId,
  model: 'm',
  vocabSize: 100,
  maxPositions: 64,
  state: 'ready',
  sessions: 0,
  kvBytes: 0,
  incarnation: 'i1',
  sentAtMs: 0,
  ...extra,
});

const open = (sessionId: string, deviceId = 'd1', promptTokens = [1, 2, 3]): SessionOpen => ({
  v: PROTOCOL_VERSION,
  type: 'open',
  sessionId,
  deviceId,
  requestId: `r-${sessionId}`,
  draftModel: 'draft-1',
  mode: 'speculative',
  promptTokens,
  maxNewTokens: 8,
  slo: { ttftMs: 1_000, tpotMs: 100 },
  sampling: { temperature: 0, topP: 1, seed: 0 },
  replyTo: `wisp.device.${deviceId}`,
  sentAtMs: 0,
});

const verify = (sessionId: string, round: number, deviceId = 'd1'): VerifyRequest => ({
  v: PROTOCOL_VERSION,
  type: 'verify',
  sessionId,
  deviceId,
  round,
  committedLength: 4,
  draftTokens: [5, 6],
  predictedAcceptance: [0.9, 0.8],
  replyTo: `wisp.device.${deviceId}`,
  sentAtMs: 0,
});

/** Runs the machine with recording actions. */
function harness(policy: SchedulerSettings['policy']) {
  const batches: VerifyBatch[] = [];
  const refusals: { code: string; sessionId: string }[] = [];
  const wakes: number[] = [];
  const forgotten: string[] = [];
  const ignored: string[] = [];
  const actor = createActor(
    schedulerMachine.provide({
      actions: {
        dispatchBatch: (_, p) => void batches.push(p.batch),
        refuseRequest: (_, p) => void refusals.push({ code: p.code, sessionId: p.sessionId }),
        persistEstimator: () => {},
        forgetSession: (_, p) => void forgotten.push(p.sessionId),
        countIgnored: (_, p) => void ignored.push(p.reason),
        scheduleWake: (_, p) => void wakes.push(p.atMs),
      },
    }),
    { input: settings(policy) },
  );
  actor.subscribe({ error: (e) => { throw e; } });
  actor.start();
  return { actor, batches, refusals, wakes, forgotten, ignored };
}

describe('Scheduler machine (no broker)', () => {
  it('parks opens until a worker appears, then dispatches them', () => {
    const h = harness('centralized');
    h.actor.send({ type: 'OPEN', message: open('s1'), atMs: 0 });
    expect(h.batches).to.have.length(0);
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 1 });
    expect(h.batches).to.have.length(1);
    expect(h.batches[0].workerId).to.equal('w1');
    expect(h.batches[0].items[0].request.sessionId).to.equal('s1');
  });

  it('parks rounds of unknown sessions that arrive before any worker (a restarted scheduler), then places them on the worker Redis names', () => {
    // Seen in CI: a fresh scheduler drained its queue before the first worker status and dropped
    // these rounds; their devices resent them only after their verify timeout.
    const h = harness('sled');
    h.actor.send({ type: 'VERIFY', message: verify('s1', 2), atMs: 0, workerHint: 'w2' });
    h.actor.send({ type: 'VERIFY', message: verify('s1', 2), atMs: 1, workerHint: 'w2' }); // a resent copy replaces it
    h.actor.send({ type: 'VERIFY', message: verify('s2', 3, 'd2'), atMs: 1 });
    expect(h.batches).to.have.length(0);
    expect(h.actor.getSnapshot().context.unplaced.map((u) => `${u.message.sessionId}:${u.message.type === 'verify' ? u.message.round : 0}`)).to.deep.equal(['s1:2', 's2:3']);
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w2'), atMs: 2 });
    const ctx = h.actor.getSnapshot().context;
    expect(ctx.unplaced).to.deep.equal([]);
    expect(ctx.sessions.s1.workerId).to.equal('w2');
    expect(ctx.sessions.s2.workerId).to.equal('w2');
    const requests = [...h.batches.flatMap((b) => b.items.map((i) => i.request)), ...(ctx.pending.w2 ?? []).map((p) => p.message)];
    expect(requests.map((r) => `${r.sessionId}:${r.type === 'verify' ? r.round : 0}`).sort()).to.deep.equal(['s1:2', 's2:3']);
  });

  it('places sessions on the least loaded worker and keeps affinity for their rounds', () => {
    const h = harness('centralized');
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w2'), atMs: 0 });
    h.actor.send({ type: 'OPEN', message: open('s1'), atMs: 1 });
    h.actor.send({ type: 'OPEN', message: open('s2'), atMs: 1 });
    const placed = h.batches.map((b) => [b.items[0].request.sessionId, b.workerId]);
    expect(new Set(placed.map((p) => p[1])).size).to.equal(2);
    const w1 = placed.find((p) => p[0] === 's1')![1];
    // The worker of s1 finishes its batch; s1's round 1 goes to the same worker.
    const b1 = h.batches.find((b) => b.workerId === w1)!;
    h.actor.send({ type: 'WORKER_STATUS', message: worker(w1, { doneBatchId: b1.batchId }), atMs: 5 });
    h.actor.send({ type: 'VERIFY', message: verify('s1', 1), atMs: 6 });
    expect(h.batches[h.batches.length - 1].workerId).to.equal(w1);
    expect(h.batches[h.batches.length - 1].items[0].verifyTokens).to.equal(2);
  });

  it('does not dispatch to a busy worker; dispatches when its batch is reported done', () => {
    const h = harness('centralized');
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'OPEN', message: open('s1'), atMs: 1 });
    h.actor.send({ type: 'OPEN', message: open('s2'), atMs: 2 });
    expect(h.batches).to.have.length(1);
    // A heartbeat is not a completion.
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 3 });
    expect(h.batches).to.have.length(1);
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1', { doneBatchId: h.batches[0].batchId }), atMs: 4 });
    expect(h.batches).to.have.length(2);
    expect(h.batches[1].items[0].request.sessionId).to.equal('s2');
  });

  it('a restarted worker (new incarnation) is ready again though its batch never finished', () => {
    const h = harness('centralized');
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'OPEN', message: open('s1'), atMs: 1 });
    h.actor.send({ type: 'OPEN', message: open('s2'), atMs: 2 });
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1', { incarnation: 'i2' }), atMs: 3 });
    expect(h.batches).to.have.length(2);
  });

  it('SLED waits for bMax or waitMs and asks to be woken', () => {
    const h = harness('sled');
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'OPEN', message: open('s1'), atMs: 100 });
    expect(h.batches).to.have.length(0);
    expect(h.wakes).to.deep.equal([110]);
    h.actor.send({ type: 'WAKE', atMs: 110 });
    expect(h.batches).to.have.length(1);
  });

  it('a retried round replaces the queued copy instead of queueing twice', () => {
    const h = harness('sled');
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'VERIFY', message: verify('s9', 3), atMs: 1 });
    h.actor.send({ type: 'VERIFY', message: verify('s9', 3), atMs: 2 });
    const pending = h.actor.getSnapshot().context.pending['w1'];
    expect(pending.map((p) => p.request.requestId)).to.deep.equal(['s9:3']);
  });

  it('refuses a model nobody serves and a prompt longer than the context', () => {
    const h = harness('centralized');
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'OPEN', message: { ...open('s1'), targetModel: 'other' }, atMs: 1 });
    h.actor.send({ type: 'OPEN', message: open('s2', 'd1', Array.from({ length: 64 }, () => 1)), atMs: 1 });
    expect(h.refusals).to.deep.equal([
      { code: 'unknown_model', sessionId: 's1' },
      { code: 'prompt_too_long', sessionId: 's2' },
    ]);
    expect(h.batches).to.have.length(0);
  });

  it('moves a lost worker\'s sessions and queued rounds to another worker', () => {
    let ctx = initialSchedulerContext(settings('sled'));
    ctx = reduceScheduler(ctx, { type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 }).context;
    ctx = reduceScheduler(ctx, { type: 'OPEN', message: open('s1'), atMs: 1 }).context;
    ctx = reduceScheduler(ctx, { type: 'WORKER_STATUS', message: worker('w2', { sessions: 5 }), atMs: 2 }).context;
    expect(ctx.sessions['s1'].workerId).to.equal('w1');
    const { context, effects } = reduceScheduler(ctx, { type: 'WORKER_LOST', workerId: 'w1', atMs: 3 });
    expect(context.sessions['s1'].workerId).to.equal('w2');
    expect(context.workers['w1']).to.equal(undefined);
    expect(context.pending['w2'].map((p) => p.request.requestId)).to.deep.equal(['s1:0']);
    // SLED's wake-up for the moved open (arrived at 1, waitMs 10) still stands.
    expect(context.wakeAtMs).to.equal(11);
    expect(effects.filter((e) => e.kind === 'dispatch')).to.have.length(0);
  });

  it('a close from another device is ignored; the owner\'s close evicts on the next batch and deletes the record', () => {
    const h = harness('centralized');
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'OPEN', message: open('s1'), atMs: 1 });
    h.actor.send({ type: 'CLOSE', message: { v: PROTOCOL_VERSION, type: 'close', sessionId: 's1', deviceId: 'intruder', reason: 'done' }, atMs: 2 });
    expect(h.actor.getSnapshot().context.sessions['s1']).to.not.equal(undefined);
    expect(h.forgotten, 'another device cannot delete the record').to.deep.equal([]);
    expect(h.ignored, 'and its close is counted as ignored').to.deep.equal(['foreign_close']);
    h.actor.send({ type: 'CLOSE', message: { v: PROTOCOL_VERSION, type: 'close', sessionId: 's1', deviceId: 'd1', reason: 'done' }, atMs: 3 });
    expect(h.actor.getSnapshot().context.sessions['s1']).to.equal(undefined);
    expect(h.forgotten).to.deep.equal(['s1']);
    // A close of a session this scheduler does not know (unchecked) deletes nothing.
    h.actor.send({ type: 'CLOSE', message: { v: PROTOCOL_VERSION, type: 'close', sessionId: 's9', deviceId: 'd9', reason: 'done' }, atMs: 3 });
    expect(h.forgotten).to.deep.equal(['s1']);
    // A request of the closed session is let go, and counted.
    h.actor.send({ type: 'OPEN', message: open('s1'), atMs: 4 });
    expect(h.ignored).to.deep.equal(['foreign_close', 'ended_session']);
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1', { doneBatchId: h.batches[0].batchId }), atMs: 4 });
    h.actor.send({ type: 'OPEN', message: open('s2'), atMs: 5 });
    expect(h.batches[1].evict).to.deep.equal(['s1']);
  });

  describe('KV-cache memory (workers that report a capacity)', () => {
    // Each open needs prompt (3) + maxNewTokens (8) = 11 tokens of cache; the worker holds 25.
    const limited = (extra: Partial<WorkerStatus> = {}) => worker('w1', { kvCapacityTokens: 25, ...extra });

    it('admits opens while their whole cache fits; the next waits, first come first served, until a session closes', () => {
      const h = harness('centralized');
      h.actor.send({ type: 'WORKER_STATUS', message: limited(), atMs: 0 });
      for (const [i, id] of ['s1', 's2', 's3', 's4'].entries()) h.actor.send({ type: 'OPEN', message: open(id, `d${id}`), atMs: 1 + i });
      let ctx = h.actor.getSnapshot().context;
      expect(ctx.workers.w1.kvReservedTokens).to.equal(22);
      expect(ctx.memoryWait.w1.map((q) => q.message.sessionId)).to.deep.equal(['s3', 's4']);
      expect(ctx.sessions.s3.kvTokens).to.equal(0);
      // The worker runs what it was given; s3 is admitted when s1 closes, its wait recorded on the batch item.
      h.actor.send({ type: 'WORKER_STATUS', message: limited({ doneBatchId: h.batches[0].batchId }), atMs: 10 });
      h.actor.send({ type: 'CLOSE', message: { v: PROTOCOL_VERSION, type: 'close', sessionId: 's1', deviceId: 'ds1', reason: 'done' }, atMs: 20 });
      ctx = h.actor.getSnapshot().context;
      expect(ctx.memoryWait.w1.map((q) => q.message.sessionId)).to.deep.equal(['s4']);
      expect(ctx.workers.w1.kvReservedTokens).to.equal(22);
      const s3 = [...h.batches.flatMap((b) => b.items), ...(ctx.pending.w1 ?? []).map((p) => ({ request: p.message, admittedAtMs: p.admittedAtMs, arrivedAtMs: p.request.arrivalMs }))].find((i) => i.request.sessionId === 's3')!;
      expect(s3.arrivedAtMs).to.equal(3);
      expect(s3.admittedAtMs).to.equal(20);
    });

    it('a waiting session that closes leaves the queue; a session that can never fit is refused with the reason', () => {
      const h = harness('centralized');
      h.actor.send({ type: 'WORKER_STATUS', message: limited(), atMs: 0 });
      for (const id of ['s1', 's2', 's3']) h.actor.send({ type: 'OPEN', message: open(id, `d${id}`), atMs: 1 });
      h.actor.send({ type: 'CLOSE', message: { v: PROTOCOL_VERSION, type: 'close', sessionId: 's3', deviceId: 'ds3', reason: 'cancelled' }, atMs: 2 });
      expect(h.actor.getSnapshot().context.memoryWait.w1).to.deep.equal([]);
      h.actor.send({ type: 'OPEN', message: { ...open('big', 'dbig'), maxNewTokens: 30 }, atMs: 3 });
      expect(h.refusals).to.deep.equal([{ code: 'prompt_too_long', sessionId: 'big' }]);
    });

    it('a worker without a capacity admits everything (the live ONNX verifier)', () => {
      const h = harness('centralized');
      h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
      for (const id of ['s1', 's2', 's3', 's4', 's5']) h.actor.send({ type: 'OPEN', message: open(id, `d${id}`), atMs: 1 });
      const ctx = h.actor.getSnapshot().context;
      expect(ctx.memoryWait.w1).to.deep.equal([]);
      expect(Object.values(ctx.sessions).every((s) => (s.kvTokens ?? 0) > 0)).to.equal(true);
    });
  });

  it('gives each worker the estimator family of its pass layout, and ignores a stored state of the other family', () => {
    let ctx = initialSchedulerContext(settings('wisp'));
    ctx = reduceScheduler(ctx, { type: 'WORKER_STATUS', message: worker('w1', { passLayout: 'varlen' }), atMs: 0 }).context;
    ctx = reduceScheduler(ctx, { type: 'WORKER_STATUS', message: worker('w2'), atMs: 0 }).context;
    expect(ctx.workers.w1.estimator.layout).to.equal('varlen');
    expect(ctx.workers.w2.estimator.layout).to.equal(undefined);
    const padded = ctx.workers.w2.estimator;
    ctx = reduceScheduler(ctx, { type: 'RESTORE_ESTIMATOR', workerId: 'w1', estimator: padded }).context;
    expect(ctx.workers.w1.estimator.layout).to.equal('varlen');
    ctx = reduceScheduler(ctx, { type: 'RESTORE_ESTIMATOR', workerId: 'w2', estimator: { ...padded, errorAlpha: 0.5 } }).context;
    expect(ctx.workers.w2.estimator.errorAlpha).to.equal(0.5);
  });
});
