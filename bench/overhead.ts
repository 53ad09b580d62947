/**
 * Protocol overhead of a verification round (a benchmark, not a test): the time a round spends
 * outside model compute, device → scheduler → worker → device, queueing excluded, with 1 and
 * with 32 emulated devices, against the real RabbitMQ (in a private vhost, made with
 * rabbitmqctl as the tests do; WISP_AMQP_URL overrides) and Redis with the forged tiny models
 * and no emulated device or network time (timeScale 0). The scheduler and one verifier worker
 * run in this process; the devices and the client run in a child process (as on real, separate
 * devices), so neither their drafting nor the token stream loads the server roles' event loop.
 * `--in-process` puts them all in one.
 *
 * Per verification round (round ≥ 1):
 *   rtt       the device publishes its VerifyRequest → the device's consumer has the result
 *             (both stamps taken in the device process)
 *   waiting   the request waited in the scheduler for a batch slot (batch dispatchedAtMs − the
 *             request's arrivedAtMs): queueing behind other batches, policy waits
 *   model     the forward passes of the request's batch (the worker's actualMs)
 *   overhead  rtt − waiting − model: three broker hops, JSON + validation, the state machines,
 *             the Redis ledger write, event-loop time
 * Also printed: `rtt − queueMs − verifyMs` from the VerifyResult alone (its queueMs includes
 * the scheduler → worker hop, its verifyMs the batch's planning and sampling); the floor of any
 * broker-routed round measured right after the run (two bare hops device ⇄ server process plus
 * one inside the server process, result-sized messages: on a loaded host this floor moves a
 * lot, so read the overhead against it); and the p50 of each segment of the path.
 *
 *   npm run bench:overhead [-- --devices 1,32 --tokens 32 --sessions 4 --policy wisp --in-process]
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { performance as nodePerformance } from 'node:perf_hooks';
import { z } from 'zod';
import { WispClient } from '../actors/client.ts';
import { wallClock } from '../actors/clock.ts';
import { runEdge, runScheduler, runVerifier, type Running } from '../actors/launch.ts';
import { connectBroker, type BrokerClient } from '../broker/connection.ts';
import { tapBroker } from '../broker/tap.ts';
import type { VerifyBatch, VerifyRequest, VerifyResult } from '../protocol/messages.ts';
import { PROMPTS_QUEUE, SCHEDULER_QUEUE, deviceQueue } from '../broker/topology.ts';
import { privateAmqpUrl } from '../broker/vhost.ts';
import { loadConfig } from '../config/load.ts';
import { POLICIES, type PolicyName, type WispConfig } from '../config/schema.ts';
import { summarize, type Summary } from '../results/metrics.ts';
import { SHORT_PROMPTS } from './live.ts';

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '1,32' },
    /** New tokens per session. */
    tokens: { type: 'string', default: '32' },
    /** Sessions per device, after one warm-up session each. */
    sessions: { type: 'string', default: '4' },
    policy: { type: 'string', default: 'wisp' },
    'in-process': { type: 'boolean', default: false },
    /** Internal: this process is the device fleet of a parent bench. */
    'devices-child': { type: 'string' },
    /** Internal: this process echoes messages for the hop floor measurement. */
    'echo-child': { type: 'string' },
  },
});

const PROMPTS = SHORT_PROMPTS;

/** What the device side knows of a round. */
interface DeviceRound {
  key: string;
  sentMs: number;
  receivedMs: number;
  result: VerifyResult;
}

/** What the server side knows of a round. */
interface ServerRound {
  atSchedulerMs?: number;
  arrivedAtMs?: number;
  dispatchedAtMs?: number;
  batchSentMs?: number;
  batchId?: string;
  atWorkerMs?: number;
  resultSentMs?: number;
}

const now = () => wallClock.now();

/** Forwards every call to `broker`, letting `onPublish` / `onDeliver` see the messages. */
function tap(broker: BrokerClient, onPublish: (m: unknown) => void, onDeliver: (m: unknown) => void): BrokerClient {
  return tapBroker(broker, { publish: (_queue, m) => void onPublish(m), deliver: (_queue, m) => onDeliver(m) });
}

/** Starts an edge fleet whose rounds are reported to `report` (device-side stamps). */
async function startDevices(config: WispConfig, devices: number, report: (r: DeviceRound) => void): Promise<Running> {
  const sent = new Map<string, number>();
  const done = new Set<string>();
  const edge = await runEdge(config, {
    devices,
    hooks: {
      wrapBroker: (_role, broker) =>
        tap(
          broker,
          (m) => {
            const v = m as VerifyRequest;
            const key = `${v.sessionId}:${v.round}`;
            if (v.type === 'verify' && !sent.has(key)) sent.set(key, now());
          },
          (m) => {
            const r = m as VerifyResult;
            const key = `${r.sessionId}:${r.round}`;
            const sentMs = sent.get(key);
            if (r.type !== 'result' || r.round < 1 || sentMs === undefined || done.has(key)) return;
            done.add(key);
            report({ key, sentMs, receivedMs: now(), result: r });
          },
        ),
    },
  });
  return edge;
}

function benchConfig(run: string, policy: PolicyName, amqpUrl: string): WispConfig {
  return loadConfig({
    env: process.env,
    overrides: {
      amqpUrl,
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
}

const HOP_BODY = { v: 1, type: 'result', sessionId: 'e0a1b2c-0.1.abcdef', round: 3, accepted: 2, token: 55, verified: 3, committedLength: 40, queueMs: 0.1, verifyMs: 1.2, batchSize: 1, workerId: 'bench-worker' };

/**
 * The floor of a round made of bare broker hops, measured now: a round is two hops between the
 * device process and the server process plus one inside the server process (scheduler →
 * worker). Measured as a ping-pong with an echoing child process (2 hops) plus a hop within
 * this process. p50s add up; the p99 given is the ping-pong's plus the hop's.
 */
async function hopFloor(config: WispConfig, n = 200): Promise<{ crossPair: Summary; local: Summary; floorP50: number }> {
  const a = await connectBroker(config.amqpUrl, { connectionName: 'bench-hop-a' });
  const b = await connectBroker(config.amqpUrl, { connectionName: 'bench-hop-b' });
  const id = randomUUID().slice(0, 8);
  const [ping, pong, local] = ['ping', 'pong', 'local'].map((k) => deviceQueue(`benchhop-${k}-${id}`));
  const child = fork(process.argv[1], ['--echo-child', JSON.stringify({ url: config.amqpUrl, from: ping, to: pong })], { execArgv: process.execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    for (const q of [ping, pong, local]) await a.declareQueue(q);
    await new Promise((resolve) => child.once('message', resolve));
    let arrived: (() => void) | null = null;
    const c1 = await b.consume(local, z.unknown(), () => arrived?.(), { prefetch: 16 });
    const c2 = await a.consume(pong, z.unknown(), () => arrived?.(), { prefetch: 16 });
    const time = async (queue: string) => {
      const ms: number[] = [];
      for (let i = 0; i < n + 20; i++) {
        const got = new Promise<void>((resolve) => (arrived = resolve));
        const t0 = now();
        void a.publish(queue, HOP_BODY);
        await got;
        if (i >= 20) ms.push(now() - t0);
      }
      return summarize(ms);
    };
    const localHop = await time(local);
    const crossPair = await time(ping);
    await c1.cancel();
    await c2.cancel();
    return { crossPair, local: localHop, floorP50: crossPair.p50 + localHop.p50 };
  } finally {
    child.kill();
    for (const q of [ping, pong, local]) await a.deleteQueue(q).catch(() => {});
    await a.close();
    await b.close();
  }
}

/** Child mode for hopFloor: echoes every message from one queue to another. */
async function echoChild(arg: string): Promise<void> {
  const { url, from, to } = JSON.parse(arg) as { url: string; from: string; to: string };
  const b = await connectBroker(url, { connectionName: 'bench-hop-echo' });
  await b.consume(from, z.unknown(), (m) => void b.publish(to, m), { prefetch: 16 });
  process.send!('ready');
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
  /** Bare hops measured right after the run (see hopFloor). */
  hops: Awaited<ReturnType<typeof hopFloor>>;
  /** CPU time of the server process (scheduler + worker, all threads) per round, ms. */
  serverCpuMsPerRound: number;
  /** Mean model time per round (a batch shared by k rounds counts k times), ms. */
  modelMsPerRound: number;
  /** Event-loop utilization of the server process during the run (0–1). */
  serverElu: number;
  /** Where the overhead goes, by segment of the path (p50s). */
  parts: Record<string, Summary>;
}

async function measure(devices: number, policy: PolicyName, maxNewTokens: number, sessionsPerDevice: number, inProcess: boolean): Promise<Figures> {
  const run = randomUUID().slice(0, 8);
  // A private vhost: nothing else on this broker (a `wisp up`, tests) can take our messages.
  const amqpUrl = process.env.WISP_AMQP_URL ?? privateAmqpUrl();
  const config = benchConfig(run, policy, amqpUrl);
  const server = new Map<string, ServerRound>();
  const modelMs = new Map<string, number>();
  const deviceRounds: DeviceRound[] = [];
  const entry = (key: string) => {
    let r = server.get(key);
    if (!r) server.set(key, (r = {}));
    return r;
  };

  const client = await connectBroker(config.amqpUrl, { connectionName: `bench-overhead-${run}` });
  await client.purgeQueue(PROMPTS_QUEUE);
  await client.purgeQueue(SCHEDULER_QUEUE);
  const started: Running[] = [];
  let child: ChildProcess | null = null;
  let elu0 = nodePerformance.eventLoopUtilization();
  let cpu0 = process.cpuUsage();
  let serverCpuMs = 0;
  let serverElu = 0;
  try {
    started.push(
      await runScheduler(config, undefined, {
        wrapBroker: (_role, broker) =>
          tap(
            broker,
            (m) => {
              const b = m as VerifyBatch;
              if (b.type !== 'batch') return;
              const t = now();
              for (const item of b.items) {
                if (item.request.type !== 'verify') continue;
                const e = entry(`${item.request.sessionId}:${item.request.round}`);
                e.arrivedAtMs = item.arrivedAtMs;
                e.dispatchedAtMs = b.dispatchedAtMs;
                e.batchId = b.batchId;
                e.batchSentMs ??= t;
              }
            },
            (m) => {
              const v = m as VerifyRequest;
              if (v.type === 'verify') entry(`${v.sessionId}:${v.round}`).atSchedulerMs ??= now();
            },
          ),
      }),
    );
    started.push(
      await runVerifier(config, {
        workerId: `bench-${run}`,
        hooks: {
          onBatch: (report) => modelMs.set(report.batchId, report.actualMs),
          wrapBroker: (_role, broker) =>
            tap(
              broker,
              (m) => {
                const r = m as VerifyResult;
                if (r.type === 'result' && r.round >= 1) entry(`${r.sessionId}:${r.round}`).resultSentMs ??= now();
              },
              (m) => {
                const b = m as VerifyBatch;
                if (b.type !== 'batch') return;
                const t = now();
                for (const item of b.items) if (item.request.type === 'verify') entry(`${item.request.sessionId}:${item.request.round}`).atWorkerMs ??= t;
              },
            ),
        },
      }),
    );
    const load: LoadSpec = { devices, sessionsPerDevice, maxNewTokens, clientId: `bench-${run}` };
    const markStart = () => {
      deviceRounds.length = 0;
      elu0 = nodePerformance.eventLoopUtilization();
      cpu0 = process.cpuUsage();
    };
    const markEnd = () => {
      const cpu = process.cpuUsage(cpu0);
      serverCpuMs = (cpu.user + cpu.system) / 1_000;
      serverElu = nodePerformance.eventLoopUtilization(elu0).utilization;
    };
    if (inProcess) {
      started.push(await startDevices(config, devices, (r) => deviceRounds.push(r)));
      await drive(client, load, markStart);
      markEnd();
    } else {
      // The devices and the client run in the child: this process holds the server roles only.
      child = fork(process.argv[1], ['--devices-child', JSON.stringify({ run, policy, load, amqpUrl })], { execArgv: process.execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      await new Promise<void>((resolve, reject) => {
        child!.on('message', (m: { type: string; round?: DeviceRound; error?: string }) => {
          if (m.type === 'round' && m.round) deviceRounds.push(m.round);
          else if (m.type === 'warm') markStart();
          else if (m.type === 'done') {
            markEnd();
            if (m.error) reject(new Error(m.error));
            else resolve();
          }
        });
        child!.once('exit', (code) => reject(new Error(`device process exited with ${code}`)));
      });
    }
    await new Promise((r) => setTimeout(r, 200)); // the last rounds' reports
  } finally {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.send({ type: 'stop' });
      await exited;
    }
    for (const r of started.reverse()) await r.stop().catch(() => {});
    await client.close();
  }

  const rtt: number[] = [];
  const waiting: number[] = [];
  const model: number[] = [];
  const overhead: number[] = [];
  const fromResult: number[] = [];
  const batchSize: number[] = [];
  const parts: Record<string, number[]> = { up: [], scheduler: [], toWorker: [], workerStart: [], execNonModel: [], ledgerAndReply: [], down: [] };
  for (const d of deviceRounds) {
    const s = server.get(d.key);
    if (!s || s.dispatchedAtMs === undefined || s.arrivedAtMs === undefined || s.batchId === undefined) continue;
    const m = modelMs.get(s.batchId);
    if (m === undefined) continue;
    const r = d.receivedMs - d.sentMs;
    const w = s.dispatchedAtMs - s.arrivedAtMs;
    rtt.push(r);
    waiting.push(w);
    model.push(m);
    overhead.push(r - w - m);
    fromResult.push(r - d.result.queueMs - d.result.verifyMs);
    batchSize.push(d.result.batchSize);
    if (s.atSchedulerMs !== undefined && s.batchSentMs !== undefined && s.atWorkerMs !== undefined && s.resultSentMs !== undefined) {
      // Across the two processes: both clocks are the host's wall clock (performance.timeOrigin).
      const startedMs = s.arrivedAtMs + d.result.queueMs;
      parts.up.push(s.atSchedulerMs - d.sentMs);
      parts.scheduler.push(s.batchSentMs - s.atSchedulerMs - w);
      parts.toWorker.push(s.atWorkerMs - s.batchSentMs);
      parts.workerStart.push(startedMs - s.atWorkerMs);
      parts.execNonModel.push(d.result.verifyMs - m);
      parts.ledgerAndReply.push(s.resultSentMs - startedMs - d.result.verifyMs);
      parts.down.push(d.receivedMs - s.resultSentMs);
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
    hops: await hopFloor(config),
    serverCpuMsPerRound: serverCpuMs / Math.max(1, rtt.length),
    modelMsPerRound: model.reduce((x, y) => x + y, 0) / Math.max(1, model.length),
    serverElu,
    parts: Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, summarize(v)])),
  };
}

/** The measured load: sessions of every device, all at once, after one warm-up session each. */
interface LoadSpec {
  devices: number;
  sessionsPerDevice: number;
  maxNewTokens: number;
  clientId: string;
}

/** Runs the load through a client on `broker`; `onWarm` runs between warm-up and measurement. */
async function drive(broker: BrokerClient, load: LoadSpec, onWarm: () => void): Promise<void> {
  const client = new WispClient(broker, load.clientId);
  await client.start();
  try {
    // Warm-up: one short session per device (model caches, JIT, connections).
    await Promise.all(Array.from({ length: load.devices }, (_, i) => client.submit({ prompt: PROMPTS[i % PROMPTS.length], maxNewTokens: 8 }, 120_000)));
    await new Promise((r) => setTimeout(r, 200)); // late round reports of the warm-up
    onWarm();
    const results = await Promise.all(
      Array.from({ length: load.devices * load.sessionsPerDevice }, (_, i) => client.submit({ prompt: PROMPTS[i % PROMPTS.length], maxNewTokens: load.maxNewTokens }, 300_000)),
    );
    const failed = results.filter((r) => r.error);
    if (failed.length) throw new Error(`${failed.length} sessions failed, first: ${JSON.stringify(failed[0].error)}`);
  } finally {
    await client.close();
  }
}

/** Child mode: the device fleet and the client, reporting each round's device-side stamps. */
async function deviceChild(arg: string): Promise<void> {
  const { run, policy, load, amqpUrl } = JSON.parse(arg) as { run: string; policy: PolicyName; load: LoadSpec; amqpUrl: string };
  const config = benchConfig(run, policy, amqpUrl);
  const edge = await startDevices(config, load.devices, (round) => process.send!({ type: 'round', round }));
  const broker = await connectBroker(config.amqpUrl, { connectionName: `bench-client-${run}` });
  process.on('message', (m: { type: string }) => {
    if (m.type === 'stop') void Promise.all([edge.stop(), broker.close()]).finally(() => process.exit(0));
  });
  try {
    await drive(broker, load, () => process.send!({ type: 'warm' }));
    process.send!({ type: 'done' });
  } catch (err) {
    process.send!({ type: 'done', error: (err as Error).message });
  }
}

const fmt = (s: Summary) => `${s.p50.toFixed(2).padStart(7)} ${s.p99.toFixed(2).padStart(7)}`;

async function main(): Promise<void> {
  const deviceCounts = values.devices.split(',').map(Number);
  const maxNewTokens = Number(values.tokens);
  const sessionsPerDevice = Number(values.sessions);
  const policy = values.policy as PolicyName;
  // Adaptive may have the server decode every session: no rounds to measure.
  if (policy !== 'wisp' && policy !== 'sled') throw new Error(`--policy must be wisp or sled (rounds are what is measured), got ${values.policy}`);
  if (deviceCounts.some((d) => !Number.isInteger(d) || d < 1)) throw new Error(`--devices must list positive integers, got ${values.devices}`);
  const all: Figures[] = [];
  for (const d of deviceCounts) all.push(await measure(d, policy, maxNewTokens, sessionsPerDevice, values['in-process']));
  console.log(
    `verification round overhead, policy ${policy}, ${maxNewTokens} tokens × ${sessionsPerDevice} sessions per device, timeScale 0, devices ${values['in-process'] ? 'in this process' : 'in a child process'}; ms, p50 p99`,
  );
  console.log('devices rounds batch(p50)      rtt p50/p99   waiting p50/p99    model p50/p99  OVERHEAD p50/p99  rtt−queueMs−verifyMs  bare-hop floor p50');
  for (const f of all) {
    console.log(
      `${String(f.devices).padStart(7)} ${String(f.rounds).padStart(6)} ${f.batchSize.p50.toFixed(0).padStart(10)}  ${fmt(f.rtt)}  ${fmt(f.waiting)}  ${fmt(f.model)}  ${fmt(f.overhead)}  ${fmt(f.overheadFromResult)}       ${f.hops.floorP50.toFixed(2).padStart(7)}`,
    );
  }
  for (const f of all) {
    console.log(`  ${f.devices} device(s), bare hops now: device⇄server ping-pong p50 ${f.hops.crossPair.p50.toFixed(2)} p99 ${f.hops.crossPair.p99.toFixed(2)}, in-process hop p50 ${f.hops.local.p50.toFixed(2)} p99 ${f.hops.local.p99.toFixed(2)}`);
  }
  for (const f of all) {
    console.log(`  ${f.devices} device(s), server process: ${f.serverCpuMsPerRound.toFixed(2)} ms CPU per round (model ≤ ${f.modelMsPerRound.toFixed(2)} ms of it), event loop ${(f.serverElu * 100).toFixed(0)}% busy`);
  }
  for (const f of all) console.log(`  ${f.devices} device(s), p50 by segment: ${Object.entries(f.parts).map(([k, v]) => `${k} ${v.p50.toFixed(2)}`).join(', ')}`);
  console.log(`goal p50 overhead ≤ 1.5 ms: ${all.every((f) => f.overhead.p50 <= 1.5) ? 'met' : 'missed'}`);
}

if (values['devices-child'] !== undefined) await deviceChild(values['devices-child']);
else if (values['echo-child'] !== undefined) await echoChild(values['echo-child']);
else await main();
