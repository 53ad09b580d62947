/**
 * Composition root of a verifier worker: the VerifierWorker machine, the ONNX target model,
 * the batch executor, the worker's queue, status reports to the scheduler, heartbeats and the
 * session ledger in Redis.
 */
import { randomUUID } from 'node:crypto';
import { createActor, fromPromise } from 'xstate';
import { VerifyBatchSchema, type VerifyBatch, type WorkerStatus } from '../../protocol/messages.ts';
import { errorMessage, workerStatus } from '../../protocol/builders.ts';
import type { BrokerTransport } from '../../broker/transport.ts';
import { SCHEDULER_QUEUE, workerQueue } from '../../broker/topology.ts';
import { HandlerError } from '../../broker/refusals.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import type { DecoderRunner } from '../../inference/types.ts';
import { verifierWorkerMachine, type BatchReport, type WorkerModelSummary } from '../../machines/verifier-worker.ts';
import type { Context } from '@opentelemetry/api';
import type { Logger } from '../../telemetry/logger.ts';
import type { VerifierMetrics } from '../../telemetry/metrics.ts';
import { itemContextsFrom, tracingOn } from '../../telemetry/spans.ts';
import { wallClock, type Clock } from '../clock.ts';
import { BatchExecutor, type SessionLedger } from './executor.ts';

export interface VerifierRoleOptions {
  workerId: string;
  broker: BrokerTransport;
  ledger: SessionLedger;
  /** Target model folder (Optimum ONNX layout). */
  targetDir: string;
  threads: number;
  idleEvictMs: number;
  heartbeatMs: number;
  /** Records liveness where the scheduler (or an operator) can see it; optional. */
  heartbeat?: (status: WorkerStatus) => Promise<void>;
  logger: Logger;
  clock?: Clock;
  /** Called with every executed batch's report (benchmarks collect batch records here). */
  onBatch?: (report: BatchReport) => void;
  /** A runner to use instead of loading `targetDir` (tests share one model between workers). */
  runner?: DecoderRunner;
  /** Wraps the runner once it is loaded (pacing to a serving engine, models.pace). */
  wrapRunner?: (runner: DecoderRunner) => DecoderRunner;
  /** Counts a request let go on purpose (wisp_ignored_messages_total). */
  onIgnored?: (reason: string) => void;
  /** Prometheus series of the verifier role; none when absent. */
  metrics?: VerifierMetrics;
}

export interface VerifierRole {
  workerId: string;
  executor: () => BatchExecutor | null;
  stop(): Promise<void>;
}

export async function startVerifier(opts: VerifierRoleOptions): Promise<VerifierRole> {
  const clock = opts.clock ?? wallClock;
  const log = opts.logger.child({ workerId: opts.workerId });
  const incarnation = randomUUID().slice(0, 8);
  let runner: DecoderRunner | null = opts.runner ?? null;
  let executor: BatchExecutor | null = null;
  let model: WorkerModelSummary | null = null;
  /** Deliveries wait here until their batch ran, so the broker keeps them until then. */
  const waiting = new Map<string, () => void>();
  let stopped = false;

  /** The pass-time curve of a runner that knows its server's cost (a cost model), once. */
  let curve: number[] | undefined;
  const status = (state: WorkerStatus['state'], report: BatchReport | null, doneBatchId?: string): WorkerStatus =>
    workerStatus({
      workerId: opts.workerId,
      model: model?.model ?? 'loading',
      vocabSize: model?.vocabSize ?? 1,
      maxPositions: model?.maxPositions ?? 1,
      state,
      sessions: executor?.sessions.size ?? 0,
      kvBytes: executor?.kvBytes ?? 0,
      ...(runner?.passLayout ? { passLayout: runner.passLayout } : {}),
      incarnation,
      ...(doneBatchId ? { doneBatchId } : {}),
      ...(report && report.shapes.length > 0
        ? { lastBatch: { batchId: report.batchId, shapes: report.shapes, actualMs: report.actualMs, predictedMs: report.predictedMs, ...(report.parts ? { parts: report.parts } : {}) } }
        : {}),
      decoding: executor?.decodeActive ?? 0,
      ...(executor?.decodeTpotMs !== undefined ? { decodeTpotMs: executor.decodeTpotMs } : {}),
      ...(curve ? { passCurveMs: curve } : {}),
      sentAtMs: clock.now(),
    });

  const publishStatus = (s: WorkerStatus) =>
    opts.broker.publish(SCHEDULER_QUEUE, s).catch((err: Error) => log.warn({ err: err.message }, 'status not sent'));

  /** The last batch this worker finished: heartbeats repeat it, so a lost status cannot leave the scheduler waiting. */
  let lastDoneBatchId: string | undefined;
  const finish = (batchId: string | undefined) => {
    if (!batchId) return;
    lastDoneBatchId = batchId;
    waiting.get(batchId)?.();
    waiting.delete(batchId);
  };

  const machine = verifierWorkerMachine.provide({
    actors: {
      loadModel: fromPromise(async () => {
        runner ??= await loadDecoder(opts.targetDir, { threads: opts.threads });
        if (opts.wrapRunner) runner = opts.wrapRunner(runner);
        executor = new BatchExecutor({
          workerId: opts.workerId,
          runner,
          ledger: opts.ledger,
          // A reply that cannot be sent (broker away, device queue gone) is not a batch failure:
          // the ledger already holds the round, and the device's retry gets it replayed.
          reply: (queue, message) => opts.broker.publish(queue, message).catch((err: Error) => log.warn({ err: err.message, queue }, 'reply not sent; the device retries')),
          deadLetter: (request, reason) => opts.broker.deadLetter(workerQueue(opts.workerId), request, reason),
          now: () => clock.now(),
          eosTokenId: runner.info.eosTokenId,
          ...(opts.metrics ? { metrics: opts.metrics } : {}),
          ...(opts.onIgnored ? { onIgnored: opts.onIgnored } : {}),
        });
        model = { model: runner.info.name, vocabSize: runner.info.vocabSize, maxPositions: runner.info.maxPositions };
        curve = runner.passCurveMs?.();
        log.info({ model: model.model }, 'model loaded');
        return model;
      }),
      executeBatch: fromPromise(async ({ input }: { input: { batch: VerifyBatch } }) => {
        const contexts = itemTraces.get(input.batch.batchId);
        itemTraces.delete(input.batch.batchId);
        const receivedAtMs = received.get(input.batch.batchId);
        received.delete(input.batch.batchId);
        return executor!.execute(input.batch, contexts, receivedAtMs);
      }),
      decodeStep: fromPromise(async () => {
        const report = await executor!.decodeStep();
        opts.onBatch?.(report);
        return report;
      }),
    },
    actions: {
      reportReady: (_, p) => {
        if (p.report) opts.onBatch?.(p.report);
        finish(p.report?.batchId);
        void publishStatus(status('ready', p.report, p.report?.batchId));
      },
      reportBatchFailed: (_, p) => {
        opts.metrics?.batchFailed(opts.workerId);
        log.error({ batchId: p.batch.batchId, err: p.message }, 'batch failed');
        for (const item of p.batch.items) {
          const r = item.request;
          void opts.broker.publish(r.replyTo, errorMessage('internal', `verification failed: ${p.message}`, { sessionId: r.sessionId, round: r.type === 'open' ? 0 : r.round })).catch(() => {});
        }
        finish(p.batch.batchId);
        void publishStatus(status('ready', null, p.batch.batchId));
      },
      evictIdle: (_, p) => {
        const gone = executor?.evictIdle(p.nowMs, p.idleEvictMs) ?? [];
        if (gone.length) log.info({ sessions: gone.length }, 'evicted idle sessions');
      },
    },
  });

  const actor = createActor(machine, { input: { workerId: opts.workerId, idleEvictMs: opts.idleEvictMs } });
  actor.subscribe({ error: (err) => log.error({ err: (err as Error).message }, 'worker machine failed') });
  actor.start();

  /** Tracing only: each batch's per-member round contexts (from its headers) until it runs. */
  const itemTraces = new Map<string, Context[]>();
  /** When each batch was taken from the queue, on this worker's clock (queue times never mix clocks). */
  const received = new Map<string, number>();
  const untrack = opts.metrics?.track(opts.workerId, () => ({ kvBytes: executor?.kvBytes ?? 0, sessions: executor?.sessions.size ?? 0 }));

  const consumer = await opts.broker.consume(
    workerQueue(opts.workerId),
    VerifyBatchSchema,
    (batch, meta) => {
      // A batch for another worker (misrouted, or forged) is refused, not run: the broker
      // dead-letters it with this reason (a batch names no sender to answer).
      if (batch.workerId !== opts.workerId) throw new HandlerError('not_owner', `batch ${batch.batchId} is addressed to worker ${batch.workerId}, not ${opts.workerId}`);
      received.set(batch.batchId, clock.now());
      return new Promise<void>((resolve) => {
        if (tracingOn()) itemTraces.set(batch.batchId, itemContextsFrom(meta.headers, batch.items.length));
        waiting.set(batch.batchId, resolve);
        actor.send({ type: 'BATCH', batch });
      });
    },
    { prefetch: 1 },
  );

  // Liveness: a status message for the scheduler and (when wired) a Redis key with a TTL.
  const beat = setInterval(() => {
    if (stopped || !model) return;
    const snap = actor.getSnapshot();
    // A worker between or inside decode steps (centralized) takes a batch at once: 'ready'.
    // Reporting 'busy' there made the scheduler hold every new session until decoding ended.
    const s = status(snap.matches('ready') || snap.matches('stepping') ? 'ready' : 'busy', null, lastDoneBatchId);
    void publishStatus(s);
    void opts.heartbeat?.(s).catch((err: Error) => log.warn({ err: err.message }, 'heartbeat not stored'));
    actor.send({ type: 'TICK', nowMs: clock.now() });
  }, opts.heartbeatMs);
  beat.unref();

  return {
    workerId: opts.workerId,
    executor: () => executor,
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(beat);
      untrack?.();
      await consumer.cancel();
      if (model) await publishStatus(status('stopping', null));
      actor.send({ type: 'STOP' });
      for (const resolve of waiting.values()) resolve();
      waiting.clear();
      itemTraces.clear();
      received.clear();
      if (!opts.runner) await runner?.dispose();
    },
  };
}
