/**
 * Faults 9, chaos under load: 1,000 sessions (WISP_CHAOS_SESSIONS to change) from 40 emulated
 * devices against two verifier processes in cost-model mode, while at seeded random points of
 * the run a verifier is SIGKILLed and started again (same id: its queue and the batches in it
 * wait for the new process), the broker restarts (`stop_app` / `start_app`) and Redis is emptied
 * (FLUSHDB on the suite's own database). Checked: every session ends with exactly the tokens the
 * cost-model target gives alone, or is refused with a typed error having delivered nothing; when
 * the run is over no session key is left in Redis, no queue but the run's own is on the broker
 * and no message is left in them (dead letters are counted). Faults come one at a time, each
 * after the system recovered from the one before.
 * Printed: sessions, faults injected, tokens compared, lost, changed.
 *
 * The broker and Redis are shared with other tests: the broker is started again in `finally`
 * and in `after`, and only this suite's Redis database is flushed.
 */
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { DEAD_QUEUE, PROMPTS_QUEUE, SCHEDULER_QUEUE, deviceQueue, devicePromptQueue, workerQueue } from '../../broker/topology.ts';
import { CostModelRunner } from '../../inference/cost-model-runner.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { readModelDir } from '../../inference/model-dir.ts';
import { generateTarget } from '../../inference/speculative.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { seededUniform } from '../../policies/seeded-rng.ts';
import { TEST_PROMPTS } from '../helpers/system.ts';
import {
  assertBrokerCanRestart,
  countKeys,
  ensureVhost,
  faultConfig,
  faultsRedis,
  rabbitmqctl,
  restoreBroker,
  sleep,
  spawnReadyWorkers,
  spawnWorker,
  startFaultSystem,
  stopWorkers,
  waitFor,
  type FaultSystem,
  type WorkerProcess,
} from './helpers.ts';

const SESSIONS = Number(process.env.WISP_CHAOS_SESSIONS ?? 1_000);
// Two queues per device: kept well inside what the shared broker can recover at a restart (assertBrokerCanRestart).
const DEVICES = 40;
const SEED = 9;
const VHOST = 'wisp-faults-chaos';

type Fault = 'kill' | 'broker' | 'flush';

describe('faults 9: chaos under load — a verifier killed and restarted, the broker restarted, Redis emptied', function () {
  this.timeout(600_000);
  let sys: FaultSystem;
  let redis: Redis;
  let workers: WorkerProcess[] = [];
  const ids = ['a', 'b'];

  before(async () => {
    await ensureVhost(VHOST);
    const config = faultConfig(VHOST, {
      models: { costModel: { enabled: true, timeScale: 0.1 } },
      edge: { verifyTimeoutMs: 4_000, maxRetries: 8 },
      worker: { heartbeatMs: 200, heartbeatTtlMs: 2_000 },
      slo: { ttftMs: 60_000, tpotMs: 10_000 },
    });
    sys = await startFaultSystem(config, { workers: 0, devices: DEVICES });
    workers = await spawnReadyWorkers(sys, ids.map((s) => `${config.worker.id}-${s}`));
    redis = faultsRedis();
  });

  after(async () => {
    await restoreBroker();
    if (sys) await stopWorkers(sys.config, workers);
    await sys?.stop();
    redis?.disconnect();
  });

  it(`serves ${SESSIONS.toLocaleString('en')} sessions exactly through every fault, and leaves nothing behind`, async () => {
    const maxNewTokens = 16;
    const pair = await ensureModelPair('tiny');
    const tok = await loadTokenizer(pair.targetDir);
    const reference = new CostModelRunner({ info: (await readModelDir(pair.targetDir)).info, timeScale: 0 });
    const expected: number[][] = [];
    for (const p of TEST_PROMPTS) expected.push((await generateTarget(reference, tok.encode(p), { maxNewTokens, sampling: { temperature: 0, topP: 1, seed: 0 }, eosTokenId: reference.info.eosTokenId })).tokens);

    // The faults, each at a seeded point of the run (a count of finished sessions), in a seeded order.
    const rng = seededUniform(SEED);
    const kinds: Fault[] = ['kill', 'broker', 'flush', 'kill'];
    for (let i = kinds.length - 1; i > 0; i--) {
      const j = Math.floor(rng() * (i + 1));
      [kinds[i], kinds[j]] = [kinds[j], kinds[i]];
    }
    // Spread over the run, one per stretch: each fault finds the system recovered from the last
    // (a worker killed while its sessions' records are still being written back after a flush
    // would lose them — two faults at once, which the system does not claim to survive).
    const at = kinds.map((_, i) => Math.floor(SESSIONS * (0.15 + 0.18 * i + 0.1 * rng())));
    const injected: string[] = [];
    let finished = 0;
    let chain = Promise.resolve();
    const faultErrors: string[] = [];
    let next = 0;
    const inject = async (kind: Fault): Promise<void> => {
      if (kind === 'kill') {
        const i = Math.floor(rng() * workers.length);
        const victim = workers[i];
        victim.child.kill('SIGKILL');
        await new Promise<void>((resolve) => (victim.child.exitCode !== null || victim.child.signalCode !== null ? resolve() : victim.child.once('exit', () => resolve())));
        // Started again under the same id: the batches waiting in its queue go to the new process.
        workers[i] = spawnWorker(sys.config, victim.workerId);
        await waitFor(() => sys.scheduler.role.snapshot().context.workers[victim.workerId]?.model !== undefined, 'the restarted worker', 90_000, 100);
        injected.push(`SIGKILL ${victim.workerId} at ${finished}`);
      } else if (kind === 'broker') {
        await assertBrokerCanRestart();
        try {
          await rabbitmqctl(['stop_app']);
          await sleep(500);
        } finally {
          await restoreBroker();
        }
        injected.push(`broker restart at ${finished}`);
      } else {
        await redis.flushdb();
        injected.push(`FLUSHDB at ${finished}`);
      }
      // The next fault waits until this one is over for the system: retries answered, records written back.
      await sleep(2_000);
    };
    const onFinished = () => {
      finished++;
      while (next < at.length && finished >= at[next]) {
        const kind = kinds[next++];
        chain = chain.then(() => inject(kind)).catch((err: Error) => void faultErrors.push(`${kind}: ${err.message}`));
      }
    };

    const started = performance.now();
    const results: { prompt: number; tokens: number[]; error: { code: string } | null }[] = [];
    let issued = 0;
    await Promise.all(
      Array.from({ length: DEVICES }, async () => {
        while (issued < SESSIONS) {
          const prompt = issued++ % TEST_PROMPTS.length;
          const r = await sys.client.submit({ prompt: TEST_PROMPTS[prompt], maxNewTokens }, 180_000);
          results.push({ prompt, tokens: r.tokens, error: r.error });
          onFinished();
        }
      }),
    );
    await chain;
    const wallS = (performance.now() - started) / 1_000;

    const exact = results.filter((r) => r.error === null && JSON.stringify(r.tokens) === JSON.stringify(expected[r.prompt]));
    const refused = results.filter((r) => r.error !== null && r.tokens.length === 0);
    const changed = results.filter((r) => r.error === null && JSON.stringify(r.tokens) !== JSON.stringify(expected[r.prompt]));
    const halfWritten = results.filter((r) => r.error !== null && r.tokens.length > 0);
    const tokens = exact.reduce((a, r) => a + r.tokens.length, 0);

    // Nothing left behind: sessions' Redis keys go with their close.
    await waitFor(async () => (await countKeys(redis, `${sys.config.redisKeyPrefix}session:`)) === 0, 'session keys to be deleted', 30_000, 200).catch(() => {});
    const sessionKeys = await countKeys(redis, `${sys.config.redisKeyPrefix}session:`);
    console.log(
      `      [faults 9] ${results.length} sessions in ${wallS.toFixed(1)} s on ${DEVICES} devices; faults: ${injected.join(', ')}; ` +
        `${tokens} tokens compared; exact ${exact.length}, refused ${refused.length}${refused.length ? ` (${[...new Set(refused.map((r) => r.error?.code))].join(', ')})` : ''}, ` +
        `changed ${changed.length}, half-written ${halfWritten.length}, lost ${SESSIONS - results.length}; session keys left ${sessionKeys}`,
    );
    expect(faultErrors, 'faults that could not be injected').to.deep.equal([]);
    expect(injected, 'every fault was injected').to.have.length(kinds.length);
    expect(results.length, 'every session answered').to.equal(SESSIONS);
    expect(changed.length, 'sessions whose tokens changed').to.equal(0);
    expect(halfWritten.length, 'refused sessions that had delivered tokens').to.equal(0);
    expect(exact.length + refused.length).to.equal(SESSIONS);
    expect(sessionKeys, 'session keys left in Redis').to.equal(0);

    // No queue but the run's own, and nothing stranded in them: every request was taken and answered.
    const own = new Set([PROMPTS_QUEUE, SCHEDULER_QUEUE, DEAD_QUEUE, sys.client.replyQueue, ...workers.map((w) => workerQueue(w.workerId)), ...sys.edge.fleet.devices.flatMap((d) => [deviceQueue(d.id), devicePromptQueue(d.id)])]);
    const listed = (await rabbitmqctl(['list_queues', '-q', '--no-table-headers', '-p', VHOST, 'name', 'messages']))
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((cols) => cols.length === 2);
    const stray = listed.filter(([name]) => !own.has(name)).map(([name]) => name);
    const stranded = listed.filter(([name, n]) => name !== DEAD_QUEUE && Number(n) > 0).map(([name, n]) => `${name}: ${n}`);
    const dead = Number(listed.find(([name]) => name === DEAD_QUEUE)?.[1] ?? 0);
    console.log(`      [faults 9] queues: ${listed.length} listed, stray ${stray.length}, with messages left ${stranded.length}; dead letters ${dead}`);
    expect(stray, 'queues that are not the run\'s').to.deep.equal([]);
    expect(stranded, 'messages left in the run\'s queues').to.deep.equal([]);
  });
});
