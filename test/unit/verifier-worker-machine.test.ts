/**
 * The verifier worker machine's choice of next work with sessions decoding (centralized serving):
 * queued batches first; after a batch the scheduler marked `followUp` (more prompt chunks to come)
 * it waits for that batch — up to FOLLOW_UP_HOLD_MS — so the decode step shares its pass, instead
 * of running a step alone first. On a simulated clock, with recording model actors.
 */
import { expect } from 'chai';
import { SimulatedClock, createActor, fromPromise } from 'xstate';
import { FOLLOW_UP_HOLD_MS, holdsForFollowUp, verifierWorkerMachine, type BatchReport } from '../../machines/verifier-worker.ts';
import { PROTOCOL_VERSION, type VerifyBatch } from '../../protocol/messages.ts';

const flush = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

function batch(batchId: string, followUp: boolean): VerifyBatch {
  return {
    v: PROTOCOL_VERSION,
    type: 'batch',
    batchId,
    workerId: 'w',
    items: [
      {
        request: { v: PROTOCOL_VERSION, type: 'open', sessionId: batchId, deviceId: 'd', requestId: `r-${batchId}`, draftModel: 'd', mode: 'centralized', promptTokens: [1, 2, 3], maxNewTokens: 4, slo: { ttftMs: 1_000, tpotMs: 100 }, sampling: { temperature: 0, topP: 1, seed: 0 }, replyTo: 'x', sentAtMs: 0 },
        verifyTokens: 0,
        arrivedAtMs: 0,
      },
    ],
    predictedMs: 1,
    dispatchedAtMs: 0,
    evict: [],
    ...(followUp ? { followUp: true } : {}),
  };
}

function harness() {
  const clock = new SimulatedClock();
  /** What the worker ran, in order: batch ids, and 'step' for a decode step alone. */
  const ran: string[] = [];
  const report = (batchId: string): BatchReport => ({ batchId, shapes: [{ n: 1, L: 0 }], actualMs: 1, predictedMs: 1, sessions: 1, kvBytes: 0, decodeActive: 1 });
  const actor = createActor(
    verifierWorkerMachine.provide({
      actors: {
        loadModel: fromPromise(async () => ({ model: 'm', vocabSize: 10, maxPositions: 100 })),
        executeBatch: fromPromise(async ({ input }: { input: { batch: VerifyBatch } }) => {
          ran.push(input.batch.batchId);
          return report(input.batch.batchId);
        }),
        decodeStep: fromPromise(async () => {
          ran.push('step');
          // A step takes simulated time, so the test can see what comes next.
          await new Promise<void>((resolve) => clock.setTimeout(resolve, 50));
          return report(`step-${clock.now()}`);
        }),
      },
      actions: { reportReady: () => {}, reportBatchFailed: () => {}, evictIdle: () => {} },
    }),
    { input: { workerId: 'w', idleEvictMs: 60_000 }, clock },
  );
  actor.start();
  return { actor, clock, ran, state: () => String(actor.getSnapshot().value) };
}

describe('verifier worker machine: waiting for a follow-up batch', () => {
  it('holdsForFollowUp: only after a followUp batch, nothing queued, and sessions decoding', () => {
    expect(holdsForFollowUp({ followUp: true }, 0, 3)).to.equal(true);
    expect(holdsForFollowUp({ followUp: true }, 1, 3)).to.equal(false);
    expect(holdsForFollowUp({ followUp: true }, 0, 0)).to.equal(false);
    expect(holdsForFollowUp({}, 0, 3)).to.equal(false);
    expect(holdsForFollowUp(null, 0, 3)).to.equal(false);
  });

  it('after a followUp batch it runs the next batch, not a lone step, when it comes in time', async () => {
    const h = harness();
    await flush();
    h.actor.send({ type: 'BATCH', batch: batch('b1', true) });
    await flush();
    expect(h.state()).to.equal('holding');
    h.clock.increment(FOLLOW_UP_HOLD_MS - 1);
    h.actor.send({ type: 'BATCH', batch: batch('b2', false) });
    await flush();
    // b2 said nothing follows: the worker steps right after it.
    expect(h.ran).to.deep.equal(['b1', 'b2', 'step']);
  });

  it('runs the step alone when no batch comes within FOLLOW_UP_HOLD_MS', async () => {
    const h = harness();
    await flush();
    h.actor.send({ type: 'BATCH', batch: batch('b1', true) });
    await flush();
    h.clock.increment(FOLLOW_UP_HOLD_MS - 1);
    await flush();
    expect(h.ran).to.deep.equal(['b1']);
    h.clock.increment(1);
    await flush();
    expect(h.ran).to.deep.equal(['b1', 'step']);
  });

  it('without followUp a decoding worker steps at once', async () => {
    const h = harness();
    await flush();
    h.actor.send({ type: 'BATCH', batch: batch('b1', false) });
    await flush();
    expect(h.ran).to.deep.equal(['b1', 'step']);
    expect(h.state()).to.equal('stepping');
  });
});
