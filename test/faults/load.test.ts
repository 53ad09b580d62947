/**
 * Fault 8, load: 1,000 concurrent sessions (WISP_LOAD_SESSIONS to change) from two edge fleets of
 * 500 emulated devices each, against one verifier worker in cost-model mode (models.costModel:
 * every batch sleeps for the estimator's predicted H200 time, scaled, and returns deterministic
 * fake logits). Checked: every session completes with exactly the tokens the cost-model target
 * produces alone (no token lost or duplicated), and no device ever had to resend a request (no
 * message lost). Reported: scheduler time per decision and broker throughput.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { connectBroker, type BrokerClient } from '../../broker/connection.ts';
import { PROMPTS_QUEUE, SCHEDULER_QUEUE, deviceQueue, devicePromptQueue, workerQueue } from '../../broker/topology.ts';
import { WispClient } from '../../actors/client.ts';
import { runEdge, runScheduler, runVerifier, type LaunchHooks, type Running } from '../../actors/launch.ts';
import { CostModelRunner } from '../../inference/cost-model-runner.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { readModelDir } from '../../inference/model-dir.ts';
import { generateTarget } from '../../inference/speculative.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { TEST_PROMPTS, tapBroker } from '../helpers/system.ts';
import { deleteQueues, ensureVhost, faultConfig, quietBrokerLogger } from './helpers.ts';

const SESSIONS = Number(process.env.WISP_LOAD_SESSIONS ?? 1_000);
const FLEETS = 2;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

const VHOST = 'wisp-faults-load';

describe('faults 8: load — 1,000 concurrent sessions against a cost-model verifier', function () {
  this.timeout(600_000);
  const run = randomUUID().slice(0, 6);
  const started: Running[] = [];
  let broker: BrokerClient;
  let client: WispClient;
  const decisionsMs: number[] = [];
  const published = { scheduler: 0, verifier: 0, edge: 0 };
  const delivered = { scheduler: 0, verifier: 0, edge: 0 };
  /** Requests each device sent, by session and round: a second copy is a resend (a lost message). */
  const sent = new Map<string, number>();
  const openAt = new Map<string, number>();
  const closeAt = new Map<string, number>();
  const maxNewTokens = 8;
  const config = faultConfig(VHOST, {
    models: { costModel: { enabled: true, timeScale: 0.1 } },
    scheduler: { bMax: 64, maxBatchTokens: 1_024 },
    worker: { id: `load${run}`, heartbeatMs: 500, heartbeatTtlMs: 60_000, idleEvictMs: 300_000 },
    edge: { verifyTimeoutMs: 120_000, maxRetries: 2 },
    slo: { ttftMs: 60_000, tpotMs: 10_000 },
  });

  before(async () => {
    await ensureVhost(VHOST);
    broker = await connectBroker(config.amqpUrl, { connectionName: `load-${run}`, logger: quietBrokerLogger });
    await broker.purgeQueue(PROMPTS_QUEUE);
    await broker.purgeQueue(SCHEDULER_QUEUE);
    const hooks: LaunchHooks = {
      onSchedulerDecision: (_event, ms) => decisionsMs.push(ms),
      wrapBroker: (role, b) =>
        tapBroker(b, {
          publish: (queue, m) => {
            published[role]++;
            const msg = m as { type?: string; sessionId?: string; round?: number };
            if (role === 'edge' && queue === SCHEDULER_QUEUE && (msg.type === 'open' || msg.type === 'verify')) {
              const key = `${msg.sessionId}:${msg.type === 'open' ? 0 : msg.round}`;
              sent.set(key, (sent.get(key) ?? 0) + 1);
              if (msg.type === 'open' && !openAt.has(msg.sessionId!)) openAt.set(msg.sessionId!, performance.now());
            }
            if (role === 'edge' && msg.type === 'close') closeAt.set(msg.sessionId!, performance.now());
          },
          deliver: () => {
            delivered[role]++;
          },
        }),
    };
    const logger = pino({ level: 'silent' });
    started.push(await runScheduler(config, logger, hooks));
    started.push(await runVerifier(config, { workerId: `${config.worker.id}-0`, hooks }, logger));
    for (let f = 0; f < FLEETS; f++) started.push(await runEdge(config, { devices: Math.ceil(SESSIONS / FLEETS), fleetId: `ld${run}${f}`, hooks }, logger));
    client = new WispClient(broker);
    await client.start();
  });

  after(async () => {
    await client?.close().catch(() => {});
    for (const r of started.reverse()) await r.stop().catch(() => {});
    // 2,000 durable device queues would linger for minutes (and slow any broker restart).
    if (broker) {
      const ids = Array.from({ length: FLEETS }, (_, f) => Array.from({ length: Math.ceil(SESSIONS / FLEETS) }, (_, i) => `ld${run}${f}-${i}`)).flat();
      await deleteQueues(broker, [workerQueue(`${config.worker.id}-0`), ...ids.flatMap((id) => [deviceQueue(id), devicePromptQueue(id)])]);
    }
    await broker?.close().catch(() => {});
  });

  it(`completes ${SESSIONS.toLocaleString('en')} concurrent sessions exactly, with no lost message`, async () => {
    // The reference: the cost-model target alone (generateTarget, as `wisp generate --mode target` does).
    const pair = await ensureModelPair('tiny');
    const tok = await loadTokenizer(pair.targetDir);
    const reference = new CostModelRunner({ info: (await readModelDir(pair.targetDir)).info, timeScale: 0 });
    const expected: number[][] = [];
    for (const p of TEST_PROMPTS) expected.push((await generateTarget(reference, tok.encode(p), { maxNewTokens, sampling: { temperature: 0, topP: 1, seed: 0 }, eosTokenId: reference.info.eosTokenId })).tokens);

    const startedMs = performance.now();
    const sends = await Promise.all(Array.from({ length: SESSIONS }, (_, i) => client.send({ prompt: TEST_PROMPTS[i % TEST_PROMPTS.length], maxNewTokens }, 540_000)));
    const results = await Promise.all(sends.map((s) => s.result));
    const wallMs = performance.now() - startedMs;

    const failed = results.filter((r) => r.error !== null);
    expect(failed.length, `failed sessions, e.g. ${JSON.stringify(failed[0]?.error)}`).to.equal(0);
    results.forEach((r, i) => expect(r.tokens, `session ${i}`).to.deep.equal(expected[i % TEST_PROMPTS.length]));
    const resent = [...sent.values()].filter((n) => n > 1).length;
    expect(resent, 'requests a device had to send again (a lost message)').to.equal(0);

    // Concurrency actually reached: sessions open at once (open sent, close not yet).
    const events = [...openAt.entries()].flatMap(([sid, t]) => [[t, 1], [closeAt.get(sid) ?? Infinity, -1]] as [number, number][]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let open = 0;
    let peak = 0;
    for (const [, d] of events) peak = Math.max(peak, (open += d));
    const sorted = [...decisionsMs].sort((a, b) => a - b);
    const mean = sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length);
    const messages = published.scheduler + published.verifier + published.edge;
    const tokens = results.reduce((a, r) => a + r.tokens.length, 0);
    console.log(
      `      [faults 8] ${SESSIONS} sessions (peak ${peak} open at once), ${tokens} tokens in ${(wallMs / 1000).toFixed(1)} s; ` +
        `scheduler per decision: mean ${mean.toFixed(3)} ms, p50 ${percentile(sorted, 0.5).toFixed(3)}, p99 ${percentile(sorted, 0.99).toFixed(3)}, max ${sorted[sorted.length - 1]?.toFixed(1)} ms over ${sorted.length} events; ` +
        `broker: ${messages} role publishes (${Math.round(messages / (wallMs / 1000))}/s; scheduler ${published.scheduler}, verifier ${published.verifier}, edge ${published.edge}), ` +
        `${delivered.scheduler + delivered.verifier + delivered.edge} deliveries; resent requests ${resent}`,
    );
    expect(peak, 'sessions open at once').to.be.greaterThan(SESSIONS * 0.9);
  });
});
