/**
 * Fault 1, a verifier worker is killed: two `wisp verifier` processes serve 16 live sessions; one
 * is SIGKILLed the moment the scheduler has handed it a batch. Checked: the scheduler notices
 * (heartbeat timeout) and moves its sessions to the other worker, which re-prefills them from
 * the committed history in Redis (and replays a round the dead worker had committed but not
 * answered); every session completes with exactly the target-only tokens (`wisp generate
 * --mode target`), none lost or duplicated.
 */
import { expect } from 'chai';
import { SCHEDULER_QUEUE, workerQueue } from '../../broker/topology.ts';
import { TEST_PROMPTS, tapBroker, targetTokens } from '../helpers/system.ts';
import { ensureVhost, faultConfig, spawnReadyWorkers, startFaultSystem, stopWorkers, waitFor, type FaultSystem, type WorkerProcess } from './helpers.ts';

const VHOST = 'wisp-faults-kill';

describe('faults 1: a verifier worker is SIGKILLed in the middle of a batch', function () {
  this.timeout(240_000);
  let sys: FaultSystem;
  let workers: WorkerProcess[] = [];
  const config = faultConfig(VHOST, { worker: { heartbeatMs: 200, heartbeatTtlMs: 1_500 }, edge: { verifyTimeoutMs: 3_000, maxRetries: 4 } });
  const ids = [`${config.worker.id}-a`, `${config.worker.id}-b`];
  const onDispatch: ((workerId: string) => void)[] = [];
  let verifies = 0;

  before(async () => {
    await ensureVhost(VHOST);
    sys = await startFaultSystem(config, {
      workers: 0,
      devices: 16,
      hooks: {
        wrapBroker: (role, b) =>
          tapBroker(b, {
            publish: (queue, m) => {
              if (role === 'edge' && queue === SCHEDULER_QUEUE && (m as { type?: string }).type === 'verify') verifies++;
              if (role === 'scheduler') for (const id of ids) if (queue === workerQueue(id)) for (const f of onDispatch) f(id);
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

  it('moves its sessions to the other worker and completes all 16 exactly', async () => {
    const maxNewTokens = 40;
    const prompts = Array.from({ length: 16 }, (_, i) => TEST_PROMPTS[i % TEST_PROMPTS.length]);
    const expected = await targetTokens(TEST_PROMPTS, maxNewTokens);
    const running = Promise.all(prompts.map((prompt) => sys.client.submit({ prompt, maxNewTokens }, 120_000)));

    await waitFor(() => verifies >= 32, 'sessions under way', 60_000, 5);
    const [victim, survivor] = workers;
    const victimSessions = () => Object.values(sys.scheduler.role.snapshot().context.sessions).filter((s) => s.workerId === victim.workerId).length;
    // Kill it the moment it is handed a batch: the batch is in its queue or being executed.
    const killed = new Promise<{ sessions: number; atMs: number }>((resolve) => {
      onDispatch.push((id) => {
        if (id !== victim.workerId || victim.child.signalCode !== null) return;
        const sessions = victimSessions();
        victim.child.kill('SIGKILL');
        resolve({ sessions, atMs: Date.now() });
      });
    });
    const kill = await killed;
    await waitFor(() => sys.scheduler.role.snapshot().context.workers[victim.workerId] === undefined, 'the scheduler to give the dead worker up', 30_000, 50);
    const movedMs = Date.now() - kill.atMs;

    const results = await running;
    results.forEach((r, i) => {
      expect(r.error, JSON.stringify(r.error)).to.equal(null);
      expect(r.tokens, `session ${i}`).to.deep.equal(expected[i % TEST_PROMPTS.length]);
    });
    expect(victim.child.signalCode).to.equal('SIGKILL');
    expect(survivor.child.exitCode, survivor.output()).to.equal(null);
    expect(kill.sessions, 'sessions the killed worker held').to.be.greaterThan(0);
    console.log(
      `      [faults 1] SIGKILL of ${victim.workerId} with ${kill.sessions} of 16 sessions on it, right after a batch was dispatched to it; ` +
        `sessions moved ${movedMs} ms later (heartbeat TTL ${config.worker.heartbeatTtlMs} ms); 16/16 sessions exact (${results.reduce((a, r) => a + r.tokens.length, 0)} tokens)`,
    );
  });
});

/**
 * The same fault for sessions the server decodes (centralized serving; adaptive serving's decoded
 * sessions take the same path): each decode step's tokens are in the ledger before their chunks
 * go out, so when the worker dies mid-stream the devices' stalled streams ask to be resumed, and
 * the other worker rebuilds each session from Redis, re-sends what its device lacks and decodes on.
 */
describe('faults 1c: a verifier worker is SIGKILLed while it decodes centralized sessions', function () {
  this.timeout(240_000);
  const vhost = `${VHOST}-decode`;
  let sys: FaultSystem;
  let workers: WorkerProcess[] = [];
  const config = faultConfig(vhost, { scheduler: { policy: 'centralized' }, worker: { heartbeatMs: 200, heartbeatTtlMs: 1_500 }, edge: { verifyTimeoutMs: 3_000, maxRetries: 4 } });
  const ids = [`${config.worker.id}-a`, `${config.worker.id}-b`];
  let resumes = 0;

  before(async () => {
    await ensureVhost(vhost);
    sys = await startFaultSystem(config, {
      workers: 0,
      devices: 8,
      hooks: {
        wrapBroker: (role, b) =>
          tapBroker(b, {
            publish: (queue, m) => {
              if (role === 'edge' && queue === SCHEDULER_QUEUE && (m as { resume?: boolean }).resume === true) resumes++;
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

  it('its streams resume on the other worker and all 8 answers are exact', async () => {
    const maxNewTokens = 160;
    const prompts = Array.from({ length: 8 }, (_, i) => TEST_PROMPTS[i % TEST_PROMPTS.length]);
    const expected = await targetTokens(TEST_PROMPTS, maxNewTokens);
    const running = Promise.all(prompts.map((prompt) => sys.client.submit({ prompt, maxNewTokens }, 120_000)));
    const [victim, survivor] = workers;
    const decodingOn = (id: string) => sys.scheduler.role.snapshot().context.workers[id]?.decoding ?? 0;
    // Kill it while it reports sessions decoding (its status comes with each step and heartbeat).
    await waitFor(() => decodingOn(victim.workerId) > 0, 'the victim to decode sessions', 60_000, 5);
    const decoding = decodingOn(victim.workerId);
    victim.child.kill('SIGKILL');
    const results = await running;
    results.forEach((r, i) => {
      expect(r.error, JSON.stringify(r.error)).to.equal(null);
      expect(r.tokens, `session ${i}`).to.deep.equal(expected[i % TEST_PROMPTS.length]);
    });
    expect(survivor.child.exitCode, survivor.output()).to.equal(null);
    expect(resumes, 'stalled streams asked to be resumed').to.be.greaterThan(0);
    console.log(`      [faults 1c] SIGKILL of ${victim.workerId} while it decoded ${decoding} sessions; ${resumes} resumes; 8/8 answers exact (${results.reduce((a, r) => a + r.tokens.length, 0)} tokens)`);
  });
});
