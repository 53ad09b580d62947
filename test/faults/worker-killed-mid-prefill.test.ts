/**
 * Fault 1b, a verifier worker is killed while a prompt is half prefilled: with a 16-token pass
 * budget, long prompts are fed in several chunks; the first worker handed a middle chunk (the
 * prompt's earlier chunks are in its cache, later ones are not) is SIGKILLed on the spot. Checked:
 * the scheduler gives the dead worker up, resets the orphaned prefill, and the other worker
 * prefills the prompt again from its start; every session ends with exactly the target-only
 * tokens (`wisp generate --mode target`).
 */
import { expect } from 'chai';
import { workerQueue } from '../../broker/topology.ts';
import type { VerifyBatch } from '../../protocol/messages.ts';
import { tapBroker, targetTokens } from '../helpers/system.ts';
import { ensureVhost, faultConfig, spawnReadyWorkers, startFaultSystem, stopWorkers, waitFor, type FaultSystem, type WorkerProcess } from './helpers.ts';

const VHOST = 'wisp-faults-kill-prefill';
const LONG_PROMPTS = [
  'the old house on the hill stood alone at the end of a long and winding road where the wind came down from the mountains every evening and the children of the village told stories about the lights that moved behind its windows',
  'once upon a time there was a river that ran through a quiet town where nobody ever locked a door and every morning the baker sang while the bread rose in the warm dark ovens behind the square',
];
const BUDGET = 16;

/** A batch item that feeds a prompt chunk neither first nor last: the prompt is half prefilled. */
function middleChunk(batch: VerifyBatch): { sessionId: string; start: number; end: number; promptLength: number } | null {
  for (const item of batch.items) {
    if (item.request.type !== 'open' || item.chunk === undefined) continue;
    const promptLength = item.request.promptTokens.length;
    if (item.chunk.start > 0 && item.chunk.end < promptLength) return { sessionId: item.request.sessionId, ...item.chunk, promptLength };
  }
  return null;
}

describe('faults 1b: a verifier worker is SIGKILLed while a prompt is half prefilled', function () {
  this.timeout(240_000);
  let sys: FaultSystem;
  let workers: WorkerProcess[] = [];
  const config = faultConfig(VHOST, {
    scheduler: { chunkedPrefill: true, passTokenBudget: BUDGET },
    worker: { heartbeatMs: 200, heartbeatTtlMs: 1_500 },
    edge: { verifyTimeoutMs: 3_000, maxRetries: 4 },
  });
  const ids = [`${config.worker.id}-a`, `${config.worker.id}-b`];
  const onDispatch: ((workerId: string, batch: VerifyBatch) => void)[] = [];

  before(async () => {
    await ensureVhost(VHOST);
    sys = await startFaultSystem(config, {
      workers: 0,
      devices: 4,
      hooks: {
        wrapBroker: (role, b) =>
          tapBroker(b, {
            publish: (queue, m) => {
              if (role !== 'scheduler' || (m as { type?: string }).type !== 'batch') return;
              for (const id of ids) if (queue === workerQueue(id)) for (const f of onDispatch) f(id, m as VerifyBatch);
            },
          }),
      },
    });
    workers = await spawnReadyWorkers(sys, ids);
  });

  after(async () => {
    await stopWorkers(config, workers);
    await sys?.stop();
  });

  it('the other worker prefills the prompt again and every session ends exactly as the target alone', async () => {
    const maxNewTokens = 24;
    const prompts = [...LONG_PROMPTS, ...LONG_PROMPTS];
    const expected = await targetTokens(LONG_PROMPTS, maxNewTokens);
    expect(expected.every((t) => t.length > 0)).to.equal(true);
    const killed = new Promise<{ victim: WorkerProcess; chunk: NonNullable<ReturnType<typeof middleChunk>>; atMs: number }>((resolve) => {
      // One kill only: signalCode stays null until the child has exited, so a flag, not it.
      let done = false;
      onDispatch.push((id, batch) => {
        const victim = workers.find((w) => w.workerId === id);
        const chunk = middleChunk(batch);
        if (done || !victim || !chunk) return;
        done = true;
        victim.child.kill('SIGKILL');
        onDispatch.push((to, later) => {
          for (const item of later.items) if (to !== id && item.request.sessionId === chunk.sessionId && item.chunk) refed.push(item.chunk);
        });
        resolve({ victim, chunk, atMs: Date.now() });
      });
    });
    /** The killed session's chunks as the other worker is handed them. */
    const refed: { start: number; end: number }[] = [];
    const running = Promise.all(prompts.map((prompt) => sys.client.submit({ prompt, maxNewTokens }, 120_000)));
    const kill = await Promise.race([
      killed,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no worker was handed a middle prompt chunk within 60 s')), 60_000)),
    ]);
    const survivor = workers.find((w) => w !== kill.victim)!;
    await waitFor(() => sys.scheduler.role.snapshot().context.workers[kill.victim.workerId] === undefined, 'the scheduler to give the dead worker up', 30_000, 50);
    const movedMs = Date.now() - kill.atMs;

    const results = await running;
    results.forEach((r, i) => {
      expect(r.error, JSON.stringify(r.error)).to.equal(null);
      expect(r.tokens, `session ${i}`).to.deep.equal(expected[i % LONG_PROMPTS.length]);
    });
    expect(kill.victim.child.signalCode).to.equal('SIGKILL');
    expect(survivor.child.exitCode, survivor.output()).to.equal(null);
    expect(kill.chunk.start, 'the killed pass fed a chunk after the first').to.be.greaterThan(0);
    expect(refed[0]?.start, 'the other worker prefills the prompt from its start').to.equal(0);
    expect(refed.at(-1)?.end, 'up to its end').to.equal(kill.chunk.promptLength);
    console.log(
      `      [faults 1b] SIGKILL of ${kill.victim.workerId} handed prompt tokens [${kill.chunk.start}, ${kill.chunk.end}) of ${kill.chunk.promptLength}; ` +
        `given up ${movedMs} ms later; ${results.length}/${results.length} sessions exact (${results.reduce((a, r) => a + r.tokens.length, 0)} tokens)`,
    );
  });
});
