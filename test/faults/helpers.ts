/**
 * Shared pieces of the fault suite (test/faults): every test runs against the real RabbitMQ and
 * Redis, but in a private RabbitMQ vhost and a private Redis database, so wiping or flooding them
 * touches nobody else's tests; and it starts the roles one by one so a test can stop, kill or
 * restart any of them.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { Redis } from 'ioredis';
import { connect } from 'amqplib';
import { connectBroker, type BrokerClient, type BrokerLogger } from '../../broker/connection.ts';
import { PROMPTS_QUEUE, SCHEDULER_QUEUE, deviceQueue, devicePromptQueue, workerQueue } from '../../broker/topology.ts';
import { WispClient } from '../../actors/client.ts';
import { runEdge, runScheduler, runVerifier, type LaunchHooks, type Running } from '../../actors/launch.ts';
import type { EdgeFleet } from '../../actors/edge/fleet.ts';
import type { SchedulerRole } from '../../actors/scheduler/role.ts';
import type { VerifierRole } from '../../actors/verifier/role.ts';
import type { DeepPartial } from '../../config/load.ts';
import type { WispConfig } from '../../config/schema.ts';
import type { Logger } from '../../telemetry/logger.ts';
import { AMQP_URL, REDIS_URL, testConfig } from '../helpers/system.ts';
import { sleep, waitFor } from '../helpers/wait.ts';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/**
 * The fault suite's Redis database; each test file has its own RabbitMQ vhost (`wisp-faults-*`),
 * so a role left over from one file can never take another file's messages from the shared queues.
 */
export const FAULTS_REDIS_DB = 9;

/** `AMQP_URL` with another vhost and, optionally, other credentials. */
export function amqpUrl(vhost: string, user?: string, password?: string): string {
  const u = new URL(AMQP_URL);
  u.pathname = `/${encodeURIComponent(vhost)}`;
  if (user !== undefined) u.username = encodeURIComponent(user);
  if (password !== undefined) u.password = encodeURIComponent(password);
  return u.toString();
}

/** `REDIS_URL` on the fault suite's database. */
export function faultsRedisUrl(): string {
  const u = new URL(REDIS_URL);
  u.pathname = `/${FAULTS_REDIS_DB}`;
  return u.toString();
}

/** Runs rabbitmqctl (the suite needs it: vhosts, users, stop_app/start_app). */
export function rabbitmqctl(args: string[], timeoutMs = 120_000, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('rabbitmqctl', args, { timeout: timeoutMs, env }, (err, stdout, stderr) => {
      if (err) reject(new Error(`rabbitmqctl ${args.join(' ')} failed: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Runs a shell script from the repository, resolving with its output. */
export function runScript(path: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 180_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('bash', [path, ...args], { cwd: REPO_ROOT, env, timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${path} failed: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

/**
 * Creates a test file's vhost afresh, with guest allowed everywhere in it. An earlier run's
 * vhost is deleted first: its leftover durable queues would pile up run after run, and a broker
 * holding many queues restarts slowly (the broker-restart test refuses to run then).
 */
export async function ensureVhost(vhost: string): Promise<void> {
  await rabbitmqctl(['delete_vhost', vhost]).catch(() => {});
  await rabbitmqctl(['add_vhost', vhost]).catch((err: Error) => {
    if (!/already exists|vhost_already_exists/.test(err.message)) throw err;
  });
  await rabbitmqctl(['set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*']);
}

/** Config for a fault test: its vhost, the suite's Redis database, a private prefix and worker id. */
export function faultConfig(vhost: string, overrides: DeepPartial<WispConfig> = {}): WispConfig {
  const run = randomUUID().slice(0, 6);
  return testConfig({
    amqpUrl: amqpUrl(vhost),
    redisUrl: faultsRedisUrl(),
    redisKeyPrefix: `wisp-faults-${run}:`,
    ...overrides,
    worker: { id: `fw${run}`, ...(overrides.worker ?? {}) },
  });
}

/** A logger that keeps every line (to check what roles write, e.g. that no secret leaks). */
export function captureLogger(role: string): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString('utf8'));
      done();
    },
  });
  return { logger: pino({ name: role, level: 'debug', base: { role } }, sink), lines };
}

export const quietBrokerLogger: BrokerLogger = { info: () => {}, warn: () => {} };

/** Deletes queues (best effort, in parallel batches). */
export async function deleteQueues(broker: BrokerClient, queues: readonly string[]): Promise<void> {
  for (let i = 0; i < queues.length; i += 100) await Promise.all(queues.slice(i, i + 100).map((q) => broker.deleteQueue(q).catch(() => {})));
}

/** Starts the broker's app again and waits for it (a test that stopped the shared broker must restore it, whatever happened). */
export async function restoreBroker(): Promise<void> {
  await rabbitmqctl(['start_app']).catch(() => {});
  await rabbitmqctl(['await_startup']).catch(() => {});
}

/**
 * Throws unless the broker can restart safely: a node recovers every durable queue at boot and
 * needs file handles for them; with too many queues for its limit, its boot stalls (seen here:
 * 4,435 queues, 1,024 handles). The broker is shared, so the restart test refuses to risk it.
 */
export async function assertBrokerCanRestart(): Promise<{ queues: number; fileHandles: number }> {
  const queues = Number((await rabbitmqctl(['eval', 'length(rabbit_amqqueue:list()).'])).trim());
  const fileHandles = Number((await rabbitmqctl(['eval', 'file_handle_cache:get_limit().'])).trim());
  if (!Number.isFinite(queues) || !Number.isFinite(fileHandles) || queues > fileHandles / 2) {
    throw new Error(`the broker holds ${queues} queues for ${fileHandles} file handles: restarting it could stall its boot; not restarting a shared broker`);
  }
  return { queues, fileHandles };
}

// The polling helpers live with the other test helpers; fault tests import them from here too.
export { sleep, waitFor };

/** Counts the keys of `prefix` in the suite's Redis database. */
export async function countKeys(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let n = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    n += keys.length;
  } while (cursor !== '0');
  return n;
}

export function faultsRedis(): Redis {
  return new Redis(faultsRedisUrl(), { lazyConnect: false, maxRetriesPerRequest: 3 });
}

export interface FaultSystemOptions {
  /** In-process verifier workers (their ids are `<worker.id>-<i>`). */
  workers: number;
  devices: number;
  hooks?: LaunchHooks;
  /** Logger of the roles (default: silent). */
  logger?: Logger;
}

/** Scheduler, workers and an edge fleet started one by one, so a test can stop or restart each. */
export interface FaultSystem {
  config: WispConfig;
  /** The test's own connection (guest on the suite's vhost) and a client on it. */
  broker: BrokerClient;
  client: WispClient;
  scheduler: Running & { role: SchedulerRole };
  workers: (Running & { role: VerifierRole })[];
  edge: Running & { fleet: EdgeFleet };
  /** Stops the scheduler and starts a fresh one (same config). */
  restartScheduler(): Promise<void>;
  stop(): Promise<void>;
}

export async function startFaultSystem(config: WispConfig, opts: FaultSystemOptions): Promise<FaultSystem> {
  const logger = opts.logger ?? pino({ level: 'silent' });
  const hooks = opts.hooks ?? {};
  const broker = await connectBroker(config.amqpUrl, { connectionName: 'faults-test', logger: quietBrokerLogger, ...(hooks.deadLetterQueue ? { deadLetterQueue: hooks.deadLetterQueue } : {}) });
  await broker.purgeQueue(PROMPTS_QUEUE);
  await broker.purgeQueue(SCHEDULER_QUEUE);
  const started: Running[] = [];
  try {
    let scheduler = await runScheduler(config, logger, hooks);
    started.push(scheduler);
    const workers: (Running & { role: VerifierRole })[] = [];
    for (let i = 0; i < opts.workers; i++) {
      const w = await runVerifier(config, { workerId: `${config.worker.id}-${i}`, hooks }, logger);
      started.push(w);
      workers.push(w);
    }
    const edge = await runEdge(config, { devices: opts.devices, hooks }, logger);
    started.push(edge);
    const client = new WispClient(broker);
    await client.start();
    const sys: FaultSystem = {
      config,
      broker,
      client,
      scheduler,
      workers,
      edge,
      async restartScheduler() {
        await scheduler.stop();
        scheduler = await runScheduler(config, logger, hooks);
        sys.scheduler = scheduler;
      },
      async stop() {
        await client.close().catch(() => {});
        await sys.edge.stop().catch(() => {});
        for (const w of workers) await w.stop().catch(() => {});
        await sys.scheduler.stop().catch(() => {});
        // Per-id queues would otherwise linger (durable, expiring in minutes) and slow a broker restart.
        const ids = [...workers.map((w) => workerQueue(w.role.workerId)), ...sys.edge.fleet.devices.flatMap((d) => [deviceQueue(d.id), devicePromptQueue(d.id)])];
        await deleteQueues(broker, ids);
        await broker.close().catch(() => {});
      },
    };
    return sys;
  } catch (err) {
    for (const r of started.reverse()) await r.stop().catch(() => {});
    await broker.close().catch(() => {});
    throw err;
  }
}

/** A verifier worker in its own process (`wisp verifier`), so a test can SIGKILL it. */
export interface WorkerProcess {
  workerId: string;
  child: ChildProcess;
  /** Output so far (stderr and stdout), for failure messages. */
  output(): string;
  /** Stops it (SIGTERM, then SIGKILL after `graceMs`); resolves when it exited. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts `wisp verifier` with `config` passed through the environment. */
export function spawnWorker(config: WispConfig, workerId: string): WorkerProcess {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    WISP_AMQP_URL: config.amqpUrl,
    WISP_REDIS_URL: config.redisUrl,
    WISP_REDIS_PREFIX: config.redisKeyPrefix,
    WISP_LOG_LEVEL: 'warn',
    WISP_PRETTY_LOGS: 'false',
    WISP_MODEL_PRESET: config.models.preset,
    WISP_THREADS: String(config.models.threads),
    WISP_HEARTBEAT_MS: String(config.worker.heartbeatMs),
    WISP_HEARTBEAT_TTL_MS: String(config.worker.heartbeatTtlMs),
    WISP_IDLE_EVICT_MS: String(config.worker.idleEvictMs),
    WISP_SESSION_TTL_MS: String(config.sessionTtlMs),
    WISP_COST_MODEL: String(config.models.costModel.enabled),
    WISP_COST_MODEL_SCALE: String(config.models.costModel.timeScale),
  };
  delete env.WISP_CONFIG;
  const child = spawn(process.execPath, ['bin/wisp.js', 'verifier', '--worker-id', workerId], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  child.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    workerId,
    child,
    output: () => out,
    async stop(graceMs = 5_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * Worker processes for a fault system started with no in-process workers: spawned, then waited
 * for until the scheduler knows each (a failure prints their output).
 */
export async function spawnReadyWorkers(sys: FaultSystem, ids: readonly string[]): Promise<WorkerProcess[]> {
  const workers = ids.map((id) => spawnWorker(sys.config, id));
  await waitFor(() => ids.every((id) => sys.scheduler.role.snapshot().context.workers[id]?.model !== undefined), 'worker processes ready', 90_000, 100).catch(async (err: Error) => {
    const output = workers.map((w) => `${w.workerId}: ${w.output()}`).join('\n');
    await stopWorkers(sys.config, workers);
    throw new Error(`${err.message}\n${output}`);
  });
  return workers;
}

/** Stops worker processes and deletes their queues (durable, they would outlive the test). */
export async function stopWorkers(config: WispConfig, workers: readonly WorkerProcess[]): Promise<void> {
  for (const w of workers) await w.stop().catch(() => {});
  const c = await connect(config.amqpUrl).catch(() => null);
  if (!c) return;
  const ch = await c.createChannel();
  for (const w of workers) await ch.deleteQueue(workerQueue(w.workerId)).catch(() => {});
  await c.close().catch(() => {});
}
