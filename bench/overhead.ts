/**
 * Protocol overhead of a verification round (a benchmark, not a test): the time a round spends
 * outside model compute, device → scheduler → worker → device, queueing excluded, with 1 and
 * with 32 emulated devices. Everything runs in this process against the real RabbitMQ and
 * Redis with the forged tiny models and no emulated device or network time (timeScale 0).
 *
 * Per verification round (round ≥ 1), all times on this process's clock:
 *   rtt       the device publishes its VerifyRequest → the device's consumer gets the result
 *   waiting   the request waited in the scheduler for a batch slot (batch dispatchedAtMs −
 *             the request's arrivedAtMs), i.e. queueing behind other batches or policy waits
 *   model     the forward passes of the request's batch (the worker's actualMs)
 *   overhead  rtt − waiting − model: broker hops, JSON + validation, state machines, the
 *             Redis ledger write, event-loop time
 * It also prints the simpler `rtt − queueMs − verifyMs` from the VerifyResult itself (queueMs
 * there also holds the scheduler → worker hop, verifyMs the batch's planning and sampling).
 *
 *   npm run bench:overhead [-- --devices 1,32 --tokens 32 --sessions 4 --policy wisp]
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { WispClient } from '../actors/client.ts';
import { wallClock } from '../actors/clock.ts';
import { runUp } from '../actors/launch.ts';
import { connectBroker, type BrokerClient } from '../broker/connection.ts';
import type { VerifyBatch, VerifyRequest, VerifyResult } from '../broker/contracts.ts';
import { PROMPTS_QUEUE, SCHEDULER_QUEUE } from '../broker/topology.ts';
import { loadConfig } from '../config/load.ts';
import { POLICIES, type PolicyName } from '../config/schema.ts';
import { summarize, type Summary } from './metrics.ts';

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '1,32' },
    /** New tokens per session. */
    tokens: { type: 'string', default: '32' },
    /** Sessions per device (the first round of each device's first session is warm-up). */
    sessions: { type: 'string', default: '4' },
    policy: { type: 'string', default: 'wisp' },
  },
});
const deviceCounts = values.devices.split(',').map(Number);
const maxNewTokens = Number(values.tokens);
const sessionsPerDevice = Number(values.sessions);
const policy = values.policy as PolicyName;
if (!POLICIES.includes(policy) || policy === 'centralized') throw new Error(`--policy must be wisp or sled (rounds are what is measured), got ${values.policy}`);
if (deviceCounts.some((d) => !Number.isInteger(d) || d < 1)) throw new Error(`--devices must list positive integers, got ${values.devices}`);

const PROMPTS = [
  'the quick brown fox',
  'once upon a time',
  'in the beginning there was',
  'hello',
  'a river runs through the',
  'she said that the',
  'the old house on the hill',
  'numbers and letters',
];

interface RoundTimes {
  sentMs?: number;
  /** Breakdown stamps: scheduler got it, batch published, worker got the batch, result published. */
  atSchedulerMs?: number;
  batchSentMs?: number;
  atWorkerMs?: number;
  resultSentMs?: number;
  receivedMs?: number;
  result?: VerifyResult;
  arrivedAtMs?: number;
  dispatchedAtMs?: number;
  batchId?: string;
}

/** Forwards every call to `broker`, letting `onPublish` / `onDeliver` see the messages. */
function tap(broker: BrokerClient, onPublish: (queue: string, m: unknown) => void, onDeliver: (queue: string, m: unknown) => void): BrokerClient {
  const publish: BrokerClient['publish'] = (queue, message, options) => {
    onPublish(queue, message);
    return broker.publish(queue, message, options);
  };
  const consume: BrokerClient['consume'] = (queue, schema, handler, options) =>
    broker.consume(queue, schema, (m, meta) => {
      onDeliver(queue, m);
      return handler(m, meta);
    }, options);
  return new Proxy(broker, {
    get(target, prop) {
      if (prop === 'publish') return publish;
      if (prop === 'consume') return consume;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

interface Figures {
  devices: number;
  rounds: number;
  batchSize: Summary;
  rtt: Summary;
  waiting: Summary;
  model: Summary;
  overhead: Summary;
  overheadFromResult: Summary;
  /** Where the overhead goes, by segment of the path. */
  parts: Record<string, Summary>;
  wallS: number;
}

async function measure(devices: number): Promise<Figures> {
  const run = randomUUID().slice(0, 8);
  const config = loadConfig({
    env: process.env,
    overrides: {
      redisKeyPrefix: `wisp-bench-${run}:`,
      logLevel: 'silent',
      timeScale: 0,
      models: { preset: 'tiny', threads: 1 },
      // A profile whose draft the tiny pair has; its times do not matter at timeScale 0.
      deviceProfile: 'raspberry-pi-5',
      scheduler: { policy },
      worker: { id: `bench-${run}` },
    },
  });
  const rounds = new Map<string, RoundTimes>();
  const modelMs = new Map<string, number>();
  const entry = (key: string) => {
    let r = rounds.get(key);
    if (!r) rounds.set(key, (r = {}));
    return r;
  };
  const now = () => wallClock.now();

  const client = await connectBroker(config.amqpUrl, { connectionName: `bench-overhead-${run}` });
  await client.purgeQueue(PROMPTS_QUEUE);
  await client.purgeQueue(SCHEDULER_QUEUE);
  const up = await runUp(config, {
    devices,
    workers: 1,
    hooks: {
      onBatch: (report) => modelMs.set(report.batchId, report.actualMs),
      wrapBroker: (role, broker) => {
        if (role === 'edge') {
          return tap(
            broker,
            (_q, m) => {
              const v = m as VerifyRequest;
              if (v.type === 'verify') entry(`${v.sessionId}:${v.round}`).sentMs ??= now();
            },
            (_q, m) => {
              const r = m as VerifyResult;
              if (r.type !== 'result' || r.round < 1) return;
              const e = entry(`${r.sessionId}:${r.round}`);
              if (e.receivedMs === undefined) {
                e.receivedMs = now();
                e.result = r;
              }
            },
          );
        }
        if (role === 'scheduler') {
          return tap(
            broker,
            (_q, m) => {
              const b = m as VerifyBatch;
              if (b.type !== 'batch') return;
              for (const item of b.items) {
                if (item.request.type !== 'verify') continue;
                const e = entry(`${item.request.sessionId}:${item.request.round}`);
                e.arrivedAtMs = item.arrivedAtMs;
                e.dispatchedAtMs = b.dispatchedAtMs;
                e.batchId = b.batchId;
                e.batchSentMs = now();
              }
            },
            (_q, m) => {
              const v = m as VerifyRequest;
              if (v.type === 'verify') entry(`${v.sessionId}:${v.round}`).atSchedulerMs ??= now();
            },
          );
        }
        if (role === 'verifier') {
          return tap(
            broker,
            (_q, m) => {
              const r = m as VerifyResult;
              if (r.type === 'result' && r.round >= 1) entry(`${r.sessionId}:${r.round}`).resultSentMs ??= now();
            },
            (_q, m) => {
              const b = m as VerifyBatch;
              if (b.type !== 'batch') return;
              const t = now();
              for (const item of b.items) if (item.request.type === 'verify') entry(`${item.request.sessionId}:${item.request.round}`).atWorkerMs ??= t;
            },
          );
        }
        return broker;
      },
    },
  });
  const wispClient = new WispClient(client, `bench-${run}`);
  await wispClient.start();
  const started = now();
  try {
    // Warm-up: one short session per device (model caches, JIT, connections).
    await Promise.all(Array.from({ length: devices }, (_, i) => wispClient.submit({ prompt: PROMPTS[i % PROMPTS.length], maxNewTokens: 8 })));
    rounds.clear();
    const results = await Promise.all(
      Array.from({ length: devices * sessionsPerDevice }, (_, i) => wispClient.submit({ prompt: PROMPTS[i % PROMPTS.length], maxNewTokens }, 300_000)),
    );
    const failed = results.filter((r) => r.error);
    if (failed.length) throw new Error(`${failed.length} sessions failed, first: ${JSON.stringify(failed[0].error)}`);
  } finally {
    await wispClient.close();
    await up.stop();
    await client.close();
  }
  const wallS = (now() - started) / 1_000;

  const rtt: number[] = [];
  const waiting: number[] = [];
  const model: number[] = [];
  const overhead: number[] = [];
  const fromResult: number[] = [];
  const batchSize: number[] = [];
  const parts: Record<string, number[]> = { up: [], scheduler: [], toWorker: [], workerStart: [], execNonModel: [], ledgerAndReply: [], down: [] };
  for (const e of rounds.values()) {
    if (e.sentMs === undefined || e.receivedMs === undefined || !e.result || e.dispatchedAtMs === undefined || e.arrivedAtMs === undefined) continue;
    const m = e.batchId !== undefined ? modelMs.get(e.batchId) : undefined;
    if (m === undefined) continue;
    const r = e.receivedMs - e.sentMs;
    const w = e.dispatchedAtMs - e.arrivedAtMs;
    rtt.push(r);
    waiting.push(w);
    model.push(m);
    overhead.push(r - w - m);
    fromResult.push(r - e.result.queueMs - e.result.verifyMs);
    batchSize.push(e.result.batchSize);
    if (e.atSchedulerMs !== undefined && e.batchSentMs !== undefined && e.atWorkerMs !== undefined && e.resultSentMs !== undefined) {
      const startedMs = e.arrivedAtMs + e.result.queueMs;
      parts.up.push(e.atSchedulerMs - e.sentMs);
      parts.scheduler.push(e.batchSentMs - e.atSchedulerMs - w);
      parts.toWorker.push(e.atWorkerMs - e.batchSentMs);
      parts.workerStart.push(startedMs - e.atWorkerMs);
      parts.execNonModel.push(e.result.verifyMs - m);
      parts.ledgerAndReply.push(e.resultSentMs - startedMs - e.result.verifyMs);
      parts.down.push(e.receivedMs - e.resultSentMs);
    }
  }
  return {
    devices,
    rounds: rtt.length,
    batchSize: summarize(batchSize),
    rtt: summarize(rtt),
    waiting: summarize(waiting),
    model: summarize(model),
    overhead: summarize(overhead),
    overheadFromResult: summarize(fromResult),
    parts: Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, summarize(v)])),
    wallS,
  };
}

const fmt = (s: Summary) => `${s.p50.toFixed(2).padStart(7)} ${s.p99.toFixed(2).padStart(7)}`;

async function main(): Promise<void> {
  const all: Figures[] = [];
  for (const d of deviceCounts) all.push(await measure(d));
  console.log(`verification round overhead, policy ${policy}, ${maxNewTokens} tokens × ${sessionsPerDevice} sessions per device, timeScale 0, ms (p50 p99)`);
  console.log('devices rounds batch(p50)      rtt p50/p99   waiting p50/p99  model p50/p99  OVERHEAD p50/p99  rtt−queueMs−verifyMs');
  for (const f of all) {
    console.log(
      `${String(f.devices).padStart(7)} ${String(f.rounds).padStart(6)} ${f.batchSize.p50.toFixed(0).padStart(10)}  ${fmt(f.rtt)}  ${fmt(f.waiting)}  ${fmt(f.model)}  ${fmt(f.overhead)}  ${fmt(f.overheadFromResult)}`,
    );
  }
  for (const f of all) {
    console.log(`  ${f.devices} device(s), p50 by segment: ${Object.entries(f.parts).map(([k, v]) => `${k} ${v.p50.toFixed(2)}`).join(', ')}`);
  }
  const goal = all.every((f) => f.overhead.p50 <= 1.5);
  console.log(`goal p50 overhead ≤ 1.5 ms: ${goal ? 'met' : 'missed'}`);
}

await main();
