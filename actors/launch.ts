/**
 * Starts each process role from the validated config: connections (RabbitMQ, Redis), models,
 * and the role's composition root. `wisp up` starts them all in one process; `wisp scheduler`,
 * `wisp verifier` and `wisp edge` start one each (separate processes or containers).
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { connectBroker, type BrokerClient, type DeadLetterEvent } from '../broker/connection.ts';
import { queueSpec, workerQueue } from '../broker/topology.ts';
import type { WispConfig } from '../config/schema.ts';
import { ensureModelPair } from '../inference/forge/index.ts';
import { ModelDirNotFoundError } from '../inference/errors.ts';
import { CostModelRunner } from '../inference/cost-model-runner.ts';
import { PacedRunner, type PacedPass } from '../inference/paced-runner.ts';
import { loadEngine } from '../physics/engines.ts';
import { readModelDir } from '../inference/model-dir.ts';
import type { DecoderRunner } from '../inference/types.ts';
import { createLogger, type Logger } from '../telemetry/logger.ts';
import { openMetricsEndpoint, processMetrics, type WispMetrics } from '../telemetry/metrics.ts';
import { flushTraces } from '../telemetry/spans.ts';
import { ensureTracing } from '../telemetry/tracing-switch.ts';
import { resolveDraftDir } from './edge/draft-models.ts';
import type { JudgedToken, RoundTiming, ServedPrompt } from './edge/device.ts';
import { startEdgeFleet, type EdgeFleet } from './edge/fleet.ts';
import type { BatchReport } from '../machines/verifier-worker.ts';
import { startScheduler, type SchedulerRole } from './scheduler/role.ts';
import { startVerifier, type VerifierRole } from './verifier/role.ts';
import { openSessionStore, type SessionStoreHandle } from './store.ts';

/** Something started that can be stopped (Ctrl-C, tests). */
export interface Running {
  stop(): Promise<void>;
}

/** The model folder: config.models.modelDir, else the forged pair of the preset (forged on first use). */
export async function resolveModelRoot(config: WispConfig): Promise<string> {
  if (config.models.modelDir) {
    if (!existsSync(join(config.models.modelDir, 'target'))) throw new ModelDirNotFoundError(join(config.models.modelDir, 'target'));
    return config.models.modelDir;
  }
  return (await ensureModelPair(config.models.preset)).root;
}

/** A role's logger: JSON lines, or lines for people (config telemetry.prettyLogs; default on a terminal). */
function roleLogger(config: WispConfig, role: 'scheduler' | 'verifier' | 'edge'): Logger {
  return createLogger(role, config.logLevel, { pretty: config.telemetry.prettyLogs });
}

/**
 * A role's telemetry: tracing (if the config asks and the environment did not start it), the
 * process's metrics, and — once the role runs — its /metrics endpoint (shared by the roles of
 * one process). `close` releases the endpoint and flushes the spans recorded so far.
 */
async function roleTelemetry(config: WispConfig, logger: Logger): Promise<{ metrics: WispMetrics; serve(): Promise<void>; close(): Promise<void> }> {
  await ensureTracing(config.telemetry.tracing, (m) => logger.warn(m));
  const metrics = processMetrics();
  let endpoint: Awaited<ReturnType<typeof openMetricsEndpoint>> | null = null;
  return {
    metrics,
    async serve() {
      if (config.telemetry.metricsPort === 0) return;
      endpoint = await openMetricsEndpoint(metrics, config.telemetry.metricsHost, config.telemetry.metricsPort);
      logger.info({ url: endpoint.url }, 'metrics endpoint');
    },
    async close() {
      await endpoint?.close();
      await flushTraces();
    },
  };
}

/** Opens the role's metrics endpoint once it runs; a role whose endpoint cannot listen is stopped again. */
async function serveOrStop(telemetry: { serve(): Promise<void> }, running: Running): Promise<void> {
  try {
    await telemetry.serve();
  } catch (err) {
    await running.stop().catch(() => {});
    throw err;
  }
}

/** Seams for tests and benchmarks: how each role's broker connection is made. */
export interface LaunchHooks {
  /** Dead-letter queue of every role's connection (default `wisp.dead`; tests use a private one). */
  deadLetterQueue?: string;
  /** Wraps a role's broker client (fault injection, measurement); default: used as is. */
  wrapBroker?: (role: 'scheduler' | 'verifier' | 'edge', broker: BrokerClient) => BrokerClient;
  /** Every prompt an edge device served (benchmarks collect session records here). */
  onServed?: (served: ServedPrompt) => void;
  /** Every batch or decode step a verifier worker executed (benchmarks collect batch records). */
  onBatch?: (report: BatchReport) => void;
  /** Every drafted token the target judged, with its draft features (acceptance samples). */
  onTokenJudged?: (sample: JudgedToken) => void;
  /** Every verified round's timing as its device saw it (the simulator's replay is fed these). */
  onRoundTimed?: (timing: RoundTiming) => void;
  /** Called with a closed session's id before the scheduler deletes its record (tests read the record then). */
  beforeForget?: (sessionId: string) => Promise<void> | void;
  /** Every pass a paced verifier ran (models.pace): its paced and real compute time. */
  onPacedPass?: (pass: PacedPass) => void;
  /** Time the scheduler took per event (reduction and batch decision), ms (load tests). */
  onSchedulerDecision?: (event: string, ms: number) => void;
}

async function brokerFor(config: WispConfig, role: 'scheduler' | 'verifier' | 'edge', name: string, logger: Logger, hooks: LaunchHooks, queues: string[] = []): Promise<BrokerClient> {
  const broker = await connectBroker(config.amqpUrl, {
    connectionName: name,
    queues,
    // Devices publish through the uplink exchange, keyed by device id (least privilege, ops/rabbitmq).
    ...(role === 'edge' ? { uplink: true } : {}),
    ...(config.amqpTls.enabled ? { tls: { caPath: config.amqpTls.caPath } } : {}),
    ...(hooks.deadLetterQueue ? { deadLetterQueue: hooks.deadLetterQueue } : {}),
    logger: { info: (m, f) => logger.info(f ?? {}, m), warn: (m, f) => logger.warn(f ?? {}, m) },
  });
  // Every refusal counted (wisp_refused_messages_total), by queue kind and reason code.
  const refusals = processMetrics().refusals();
  broker.on('dead-letter', (e: DeadLetterEvent) => refusals.refusedMessage(queueSpec(e.queue).kind, e.reason));
  return hooks.wrapBroker ? hooks.wrapBroker(role, broker) : broker;
}

export async function runScheduler(config: WispConfig, logger = roleLogger(config, 'scheduler'), hooks: LaunchHooks = {}): Promise<Running & { role: SchedulerRole }> {
  const telemetry = await roleTelemetry(config, logger);
  const broker = await brokerFor(config, 'scheduler', 'scheduler', logger, hooks);
  const store = await openSessionStore(config, logger);
  const role = await startScheduler({
    broker,
    settings: {
      policy: config.scheduler.policy,
      bMax: config.scheduler.bMax,
      waitMs: config.scheduler.waitMs,
      maxBatchTokens: config.scheduler.maxBatchTokens,
      ageBoundMs: config.scheduler.ageBoundMs,
      truncation: config.scheduler.truncation,
      chunkedPrefill: config.scheduler.chunkedPrefill,
      passTokenBudget: config.scheduler.passTokenBudget,
      modeSwitching: config.scheduler.modeSwitching,
      defaultSlo: config.slo,
      defaultReturnLatencyMs: 0,
    },
    estimators: store.estimators,
    owners: {
      lookup: async (sessionId) => (await store.store.getSession(sessionId)) ?? null,
      forget: async (sessionId) => {
        await hooks.beforeForget?.(sessionId);
        await store.store.deleteSession(sessionId);
      },
    },
    ...(hooks.onSchedulerDecision ? { onDecision: hooks.onSchedulerDecision } : {}),
    workerTimeoutMs: config.worker.heartbeatTtlMs,
    // The worker drops an idle session's cache after idleEvictMs; the scheduler forgets it then too.
    sessionIdleMs: config.worker.idleEvictMs,
    logger,
    metrics: telemetry.metrics.scheduler(),
    onIgnored: (reason) => telemetry.metrics.refusals().ignoredMessage('scheduler', reason),
  });
  const running = { role, stop: inOrder(() => role.stop(), () => broker.close(), () => store.close(), () => telemetry.close()) };
  await serveOrStop(telemetry, running);
  logger.info({ policy: config.scheduler.policy }, 'scheduler started');
  return running;
}

/** models.costModel: a runner that sleeps per the serving-engine cost model, shaped like the target in `targetDir`. */
async function costModelRunner(config: WispConfig, targetDir: string): Promise<DecoderRunner> {
  const { info } = await readModelDir(targetDir);
  return new CostModelRunner({ info, timeScale: config.models.costModel.timeScale, engine: loadEngine(config.models.costModel.server) });
}

/** models.pace: the real target, each pass held for the engine's time for it × timeScale. */
function pacedBy(server: string, timeScale: number, onPass?: (pass: PacedPass) => void): (runner: DecoderRunner) => DecoderRunner {
  const engine = loadEngine(server);
  return (runner) => new PacedRunner(runner, { engine, timeScale, ...(onPass ? { onPass } : {}) });
}

/** A stop() that runs each step in order (roles first, then their connections). */
function inOrder(...steps: (() => Promise<unknown>)[]): () => Promise<void> {
  return async () => {
    for (const step of steps) await step();
  };
}

export interface VerifierLaunchOptions {
  workerId?: string;
  /** Share an already loaded target (several workers in one process, tests). */
  runner?: DecoderRunner;
  hooks?: LaunchHooks;
}

export async function runVerifier(config: WispConfig, opts: VerifierLaunchOptions = {}, logger = roleLogger(config, 'verifier')): Promise<Running & { role: VerifierRole }> {
  const telemetry = await roleTelemetry(config, logger);
  const workerId = opts.workerId ?? config.worker.id ?? `w${randomUUID().slice(0, 8)}`;
  const modelRoot = await resolveModelRoot(config);
  const broker = await brokerFor(config, 'verifier', `verifier-${workerId}`, logger, opts.hooks ?? {}, [workerQueue(workerId)]);
  const store: SessionStoreHandle = await openSessionStore(config, logger);
  const role = await startVerifier({
    workerId,
    broker,
    ledger: store.ledger(workerId),
    targetDir: join(modelRoot, 'target'),
    threads: config.models.threads,
    idleEvictMs: config.worker.idleEvictMs,
    heartbeatMs: config.worker.heartbeatMs,
    heartbeat: (s) => store.heartbeat(s, config.worker.heartbeatTtlMs),
    logger,
    ...(opts.runner ? { runner: opts.runner } : config.models.costModel.enabled ? { runner: await costModelRunner(config, join(modelRoot, 'target')) } : {}),
    ...(config.models.pace !== undefined ? { wrapRunner: pacedBy(config.models.pace, config.timeScale, opts.hooks?.onPacedPass) } : {}),
    ...(opts.hooks?.onBatch ? { onBatch: opts.hooks.onBatch } : {}),
    metrics: telemetry.metrics.verifier(),
    onIgnored: (reason) => telemetry.metrics.refusals().ignoredMessage('verifier', reason),
  });
  const running = { role, stop: inOrder(() => role.stop(), () => broker.close(), () => store.close(), () => telemetry.close()) };
  await serveOrStop(telemetry, running);
  logger.info({ workerId }, 'verifier started');
  return running;
}

export interface EdgeLaunchOptions {
  devices: number;
  /** Profiles assigned round-robin; default: config.deviceProfile. */
  profiles?: string[];
  fleetId?: string;
  seed?: number;
  hooks?: LaunchHooks;
}

export async function runEdge(config: WispConfig, opts: EdgeLaunchOptions, logger = roleLogger(config, 'edge')): Promise<Running & { fleet: EdgeFleet }> {
  const telemetry = await roleTelemetry(config, logger);
  const profileNames = opts.profiles?.length ? opts.profiles : [config.deviceProfile];
  for (const p of profileNames) {
    if (!Object.hasOwn(config.devices, p)) throw new Error(`unknown device profile "${p}" (known: ${Object.keys(config.devices).sort().join(', ')})`);
  }
  const modelRoot = await resolveModelRoot(config);
  for (const p of profileNames) {
    const dir = resolveDraftDir(modelRoot, config.devices[p].draftModel);
    if (!existsSync(dir)) throw new ModelDirNotFoundError(dir);
  }
  const fleetId = opts.fleetId ?? config.edge.deviceId ?? `e${randomUUID().slice(0, 6)}`;
  const broker = await brokerFor(config, 'edge', `edge-${fleetId}`, logger, opts.hooks ?? {});
  let fleet: EdgeFleet;
  try {
    fleet = await startEdgeFleet({
      fleetId,
      devices: opts.devices,
      profileNames,
      profiles: config.devices,
      modelRoot,
      timeScale: config.timeScale,
      policy: config.scheduler.policy,
      pipelinedDrafting: config.scheduler.pipelinedDrafting,
      controller: config.controller,
      defaultSlo: config.slo,
      verifyTimeoutMs: config.edge.verifyTimeoutMs,
      maxRetries: config.edge.maxRetries,
      threads: config.models.threads,
      broker,
      logger,
      ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
      ...(opts.hooks?.onServed ? { onServed: opts.hooks.onServed } : {}),
      ...(opts.hooks?.onTokenJudged ? { onTokenJudged: opts.hooks.onTokenJudged } : {}),
      ...(opts.hooks?.onRoundTimed ? { onRoundTimed: opts.hooks.onRoundTimed } : {}),
      metrics: telemetry.metrics.edge(),
      onIgnored: (reason) => telemetry.metrics.refusals().ignoredMessage('edge', reason),
    });
  } catch (err) {
    // Models or queues failed: do not leave the connection open behind a failed start.
    await broker.close().catch(() => {});
    throw err;
  }
  const running = {
    fleet,
    async stop() {
      await fleet.stop();
      await broker.close();
      await telemetry.close();
    },
  };
  await serveOrStop(telemetry, running);
  logger.info({ fleetId, devices: opts.devices, profiles: profileNames }, 'edge fleet started');
  return running;
}

export interface UpOptions {
  devices: number;
  workers: number;
  profiles?: string[];
  seed?: number;
  fleetId?: string;
  hooks?: LaunchHooks;
}

/** Scheduler, W verifier workers (sharing one loaded model) and an edge fleet, in this process. */
export async function runUp(config: WispConfig, opts: UpOptions): Promise<Running & { scheduler: SchedulerRole; workers: VerifierRole[]; fleet: EdgeFleet }> {
  const started: Running[] = [];
  try {
    const hooks = opts.hooks ?? {};
    const scheduler = await runScheduler(config, undefined, hooks);
    started.push(scheduler);
    const workers: VerifierRole[] = [];
    for (let i = 0; i < opts.workers; i++) {
      const w = await runVerifier(config, { workerId: `${config.worker.id ?? 'worker'}-${i}`, hooks });
      started.push(w);
      workers.push(w.role);
    }
    const edge = await runEdge(config, {
      devices: opts.devices,
      ...(opts.profiles ? { profiles: opts.profiles } : {}),
      ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
      ...(opts.fleetId ? { fleetId: opts.fleetId } : {}),
      hooks,
    });
    started.push(edge);
    return {
      scheduler: scheduler.role,
      workers,
      fleet: edge.fleet,
      async stop() {
        // Devices first (no new work), then workers, then the scheduler.
        for (const r of started.reverse()) await r.stop().catch(() => {});
      },
    };
  } catch (err) {
    for (const r of started.reverse()) await r.stop().catch(() => {});
    throw err;
  }
}
