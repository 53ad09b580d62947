/**
 * Pure logic behind the fault guarantees (docs/guarantees.md): uplink routing and sender checks
 * (least privilege), and the scheduler reductions for a failed dispatch, idle sessions, session
 * ownership and adoption after a restart.
 */
import { expect } from 'chai';
import { PROTOCOL_VERSION, type SessionOpen, type VerifyBatch, type VerifyRequest, type WorkerStatus } from '../../protocol/messages.ts';
import { HandlerError } from '../../broker/connection.ts';
import { UPLINK_EXCHANGE, clientQueue, deviceQueue, devicePromptQueue, uplinkRoute, uplinkSender, workerQueue } from '../../broker/topology.ts';
import { checkSender } from '../../actors/scheduler/role.ts';
import { initialSchedulerContext, reduceScheduler, type SchedulerContext, type SchedulerEvent, type SchedulerSettings } from '../../machines/scheduler.ts';

const settings: SchedulerSettings = {
  policy: 'sled',
  bMax: 4,
  waitMs: 0,
  maxBatchTokens: 512,
  ageBoundMs: 1_000,
  truncation: false,
  defaultSlo: { ttftMs: 1_000, tpotMs: 100 },
  defaultReturnLatencyMs: 0,
};

const worker = (workerId: string, extra: Partial<WorkerStatus> = {}): WorkerStatus => ({
  v: PROTOCOL_VERSION, type: 'worker', workerId, model: 'm', vocabSize: 100, maxPositions: 64, state: 'ready', sessions: 0, kvBytes: 0, incarnation: 'i1', sentAtMs: 0, ...extra,
});
const open = (sessionId: string, deviceId = 'd-1'): SessionOpen => ({
  v: PROTOCOL_VERSION, type: 'open', sessionId, deviceId, requestId: `r-${sessionId}`, draftModel: 'draft-1', mode: 'speculative', promptTokens: [1, 2, 3], maxNewTokens: 8,
  slo: { ttftMs: 1_000, tpotMs: 100 }, sampling: { temperature: 0, topP: 1, seed: 0 }, replyTo: deviceQueue(deviceId), sentAtMs: 0,
});
const verify = (sessionId: string, round: number, deviceId = 'd-1'): VerifyRequest => ({
  v: PROTOCOL_VERSION, type: 'verify', sessionId, deviceId, round, committedLength: 4, draftTokens: [5], predictedAcceptance: [0.9], replyTo: deviceQueue(deviceId), sentAtMs: 0,
});

function run(ctx: SchedulerContext, ...events: SchedulerEvent[]) {
  const effects = [];
  for (const e of events) {
    const r = reduceScheduler(ctx, e);
    ctx = r.context;
    effects.push(...r.effects);
  }
  return { ctx, effects };
}

describe('uplink routing (least privilege)', () => {
  it('keys device requests by the device they name, and reaches only scheduler, prompt and client queues', () => {
    expect(uplinkRoute('wisp.scheduler', verify('s', 1, 'f-3'))).to.deep.equal({ exchange: UPLINK_EXCHANGE, routingKey: 'scheduler.f-3' });
    expect(uplinkRoute('wisp.prompts', {})).to.deep.equal({ exchange: UPLINK_EXCHANGE, routingKey: 'prompts' });
    expect(uplinkRoute(devicePromptQueue('f-3'), {})?.routingKey).to.equal('prompts.f-3');
    expect(uplinkRoute(clientQueue('c9'), {})?.routingKey).to.equal('client.c9');
    expect(uplinkRoute(workerQueue('w1'), {}), 'worker queue').to.equal(null);
    expect(uplinkRoute(deviceQueue('f-4'), {}), 'device queue').to.equal(null);
    expect(uplinkRoute('wisp.scheduler', { deviceId: 'bad id/' }), 'unsafe device id').to.equal(null);
    expect(uplinkSender(UPLINK_EXCHANGE, 'scheduler.f-3')).to.equal('f-3');
    expect(uplinkSender('', 'wisp.scheduler')).to.equal(null);
  });

  it('refuses a device speaking for another device, answering elsewhere, or posing as a worker', () => {
    const via = (key: string) => ({ exchange: UPLINK_EXCHANGE, routingKey: key });
    expect(() => checkSender(verify('s', 1, 'f-3'), via('scheduler.f-3'))).to.not.throw();
    expect(() => checkSender(verify('s', 1, 'f-3'), { exchange: '', routingKey: 'wisp.scheduler' }), 'default exchange: server roles').to.not.throw();
    expect(() => checkSender(verify('s', 1, 'f-3'), via('scheduler.f-4'))).to.throw(HandlerError, 'device f-4 may not send verify requests for device f-3');
    expect(() => checkSender({ ...open('s', 'f-3'), replyTo: deviceQueue('f-4') }, via('scheduler.f-3'))).to.throw(HandlerError, 'only its own queue wisp.device.f-3');
    expect(() => checkSender(worker('w1'), via('scheduler.f-3'))).to.throw(HandlerError, 'came through the device uplink');
    try {
      checkSender(verify('s', 1, 'f-3'), via('scheduler.f-4'));
    } catch (err) {
      expect((err as HandlerError).code).to.equal('not_owner');
    }
  });
});

describe('scheduler reductions behind the fault guarantees', () => {
  const start = () => run(initialSchedulerContext(settings), { type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 }).ctx;

  it('a batch that could not be published frees its worker and its requests wait again', () => {
    let { ctx, effects } = run(start(), { type: 'OPEN', message: open('s1'), atMs: 1 });
    const batch = (effects.find((e) => e.kind === 'dispatch') as { batch: VerifyBatch }).batch;
    expect(ctx.workers.w1.ready).to.equal(false);
    ({ ctx, effects } = run(ctx, { type: 'DISPATCH_FAILED', batch, atMs: 2 }));
    const again = effects.find((e) => e.kind === 'dispatch') as { batch: VerifyBatch } | undefined;
    expect(again?.batch.items.map((i) => i.request.sessionId), 'dispatched again').to.deep.equal(['s1']);
    expect(ctx.workers.w1.inflight?.batchId).to.equal(again?.batch.batchId);
  });

  it('forgets sessions idle for longer than the idle time, never one with a request waiting', () => {
    let { ctx } = run(start(), { type: 'OPEN', message: open('s1'), atMs: 0 }, { type: 'OPEN', message: open('s2'), atMs: 0 });
    ({ ctx } = run(ctx, { type: 'WORKER_STATUS', message: worker('w1', { doneBatchId: ctx.workers.w1.inflight!.batchId }), atMs: 5 }));
    // s2 sends a round late enough to be fresh; the worker is busy, so it waits.
    ctx = { ...ctx, workers: { ...ctx.workers, w1: { ...ctx.workers.w1, ready: false } } };
    ({ ctx } = run(ctx, { type: 'VERIFY', message: verify('s2', 1), atMs: 900 }));
    ({ ctx } = run(ctx, { type: 'EXPIRE_IDLE', atMs: 1_500, idleMs: 1_000 }));
    expect(Object.keys(ctx.sessions)).to.deep.equal(['s2']);
    expect(ctx.workers.w1.sessions).to.equal(1);
  });

  it("refuses another device's requests on a session instead of queueing them in the owner's place", () => {
    let { ctx } = run(start(), { type: 'OPEN', message: open('s1', 'd-1'), atMs: 0 });
    const r = run(ctx, { type: 'VERIFY', message: verify('s1', 1, 'd-2'), atMs: 1 }, { type: 'OPEN', message: open('s1', 'd-2'), atMs: 2 });
    ctx = r.ctx;
    const refusals = r.effects.filter((e) => e.kind === 'refuse') as { params: { code: string; replyTo: string } }[];
    expect(refusals.map((e) => [e.params.code, e.params.replyTo])).to.deep.equal([
      ['not_owner', deviceQueue('d-2')],
      ['not_owner', deviceQueue('d-2')],
    ]);
    expect(ctx.sessions.s1.deviceId).to.equal('d-1');
    expect((ctx.pending.w1 ?? []).every((p) => p.message.deviceId === 'd-1')).to.equal(true);
  });

  it('adopts an unknown session on the worker Redis names when that worker is here', () => {
    let { ctx } = run(start(), { type: 'WORKER_STATUS', message: worker('w2'), atMs: 0 });
    // w1 is the least loaded either way; the hint wins.
    ({ ctx } = run(ctx, { type: 'VERIFY', message: verify('s9', 3), atMs: 1, workerHint: 'w2' }));
    expect(ctx.sessions.s9.workerId).to.equal('w2');
    ({ ctx } = run(ctx, { type: 'VERIFY', message: verify('s8', 3), atMs: 1, workerHint: 'gone' }));
    expect(ctx.sessions.s8.workerId).to.equal('w1');
  });
});
