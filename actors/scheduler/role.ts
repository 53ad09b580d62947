/**
 * Composition root of the scheduler: the Scheduler machine fed from `wisp.scheduler`, batches
 * published to worker queues, refusals answered to devices, the wake-up timer, lost-worker
 * detection, and estimator statistics persisted (per worker and model) so a restart continues.
 *
 * A request's delivery is acknowledged only once its batch has been published (or the request
 * was refused or superseded): a scheduler that dies loses nothing, the broker redelivers.
 */
import { context as otelContext, ROOT_CONTEXT, type Context } from '@opentelemetry/api';
import { createActor } from 'xstate';
import { SchedulerInboxSchema, type SchedulerInbox } from '../../protocol/messages.ts';
import { errorMessage, requestKey, requestKeyOf } from '../../protocol/builders.ts';
import { HandlerError } from '../../broker/refusals.ts';
import type { BrokerTransport, DeliveryMeta } from '../../broker/transport.ts';
import { UnroutableError } from '../../broker/errors.ts';
import { SCHEDULER_QUEUE, UPLINK_EXCHANGE, deviceQueue, uplinkSender, workerQueue } from '../../broker/topology.ts';
import { schedulerMachine, type SchedulerEvent, type SchedulerSettings } from '../../machines/scheduler.ts';
import type { EstimatorState } from '../../policies/estimator.ts';
import type { Logger } from '../../telemetry/logger.ts';
import type { SchedulerMetrics } from '../../telemetry/metrics.ts';
import { ATTR, itemTraceHeaders, startQueueSpan, tracingOn, type SpanHandle } from '../../telemetry/spans.ts';
import { wallClock, type Clock } from '../clock.ts';
import { writeThrottle } from '../write-throttle.ts';

export interface EstimatorStore {
  load(model: string, workerId: string): Promise<EstimatorState | null>;
  save(model: string, workerId: string, state: EstimatorState): Promise<void>;
}

/** Who owns a session, from Redis (the verifier's ledger): checked before adopting an unknown one. */
export interface SessionOwners {
  lookup(sessionId: string): Promise<{ deviceId: string; workerId: string } | null>;
  /** Deletes a closed session's record (its history and metadata). */
  forget(sessionId: string): Promise<void>;
}

export interface SchedulerRoleOptions {
  broker: BrokerTransport;
  settings: SchedulerSettings;
  estimators?: EstimatorStore;
  /** Session owners in Redis; without it an unknown session is adopted on the sender's word. */
  owners?: SessionOwners;
  /** A worker silent for longer than this is lost: its sessions move, ms. */
  workerTimeoutMs: number;
  /** Sessions with no request for longer than this are forgotten (their device vanished), ms. */
  sessionIdleMs?: number;
  logger: Logger;
  clock?: Clock;
  /** Deliveries held unacked at once (pending requests); the broker keeps the rest. */
  prefetch?: number;
  /** Prometheus series of the scheduler role; none when absent. */
  metrics?: SchedulerMetrics;
  /** Counts a message let go on purpose (wisp_ignored_messages_total). */
  onIgnored?: (reason: string) => void;
  /** Called with the time the machine took for each event (reduction + batch decision), ms. */
  onDecision?: (event: SchedulerEvent['type'], ms: number) => void;
}

export interface SchedulerRole {
  snapshot(): ReturnType<ReturnType<typeof createActor<typeof schedulerMachine>>['getSnapshot']>;
  stop(): Promise<void>;
}

/**
 * Least privilege: a message that came through the uplink exchange was published by the device
 * its routing key names (topic permissions guard the key), so it must speak for that device
 * only and ask for answers on that device's own queue; worker statuses never come that way.
 * The default exchange is writable by the server roles alone (ops/rabbitmq/definitions.json).
 * @throws HandlerError not_owner (the broker dead-letters the message and tells the sender)
 */
export function checkSender(m: SchedulerInbox, meta: Pick<DeliveryMeta, 'exchange' | 'routingKey'>): void {
  if (meta.exchange !== UPLINK_EXCHANGE) return;
  const sender = uplinkSender(meta.exchange, meta.routingKey);
  if (m.type === 'worker') throw new HandlerError('not_owner', `worker status for ${m.workerId} refused: it came through the device uplink (from ${sender ?? 'an unknown sender'})`);
  if (sender !== m.deviceId) throw new HandlerError('not_owner', `device ${sender ?? '(unknown)'} may not send ${m.type} requests for device ${m.deviceId}`);
  if (m.type !== 'close' && m.replyTo !== deviceQueue(m.deviceId)) {
    throw new HandlerError('not_owner', `device ${m.deviceId} asked for answers on ${m.replyTo}; only its own queue ${deviceQueue(m.deviceId)} is allowed`);
  }
}

/**
 * The deadline the machine gave a dispatched item (machines/scheduler.ts computes it the same
 * way, from the session entry, with policies/deadline.ts); null when the session is gone.
 */
function keyOf(m: SchedulerInbox): string | null {
  return m.type === 'open' || m.type === 'verify' ? requestKeyOf(m) : null;
}

export async function startScheduler(opts: SchedulerRoleOptions): Promise<SchedulerRole> {
  const clock = opts.clock ?? wallClock;
  const log = opts.logger;
  /** Unacked deliveries by request id; released when dispatched, refused or superseded. */
  const held = new Map<string, () => void>();
  /** Tracing only: the queue span of each waiting request and the round context it came with. */
  const queued = new Map<string, { span: SpanHandle; parent: Context }>();
  const endQueued = (key: string, attrs: Parameters<SpanHandle['end']>[0], failure?: { message: string; code: string }) => {
    const q = queued.get(key);
    if (!q) return;
    queued.delete(key);
    if (failure) q.span.fail(failure.message, failure.code);
    q.span.end(attrs);
  };
  const release = (key: string) => {
    held.get(key)?.();
    held.delete(key);
    if (queued.size > 0) endQueued(key, { [ATTR.outcome]: 'released' });
  };
  /** Requests whose batch is being published (released when the broker confirms). */
  const publishing = new Set<string>();
  let wake: NodeJS.Timeout | null = null;
  // At most one estimator write per worker per second: the statistics move slowly. The last
  // write is deferred, not skipped, so it always reaches Redis (after a FLUSHDB, a run's last
  // batches may all fall within one second).
  const persist = writeThrottle(1_000, () => clock.now());

  const machine = schedulerMachine.provide({
    actions: {
      dispatchBatch: (_, { batch }) => {
        const keys = batch.items.map((i) => requestKeyOf(i.request));
        for (const k of keys) publishing.add(k);
        let publish: Promise<void>;
        if (opts.metrics || tracingOn()) {
          const now = clock.now();
          const members = batch.items.map((item) => ({ waitedMs: now - item.arrivedAtMs, slackMs: item.deadlineMs === undefined ? null : item.deadlineMs - now }));
          opts.metrics?.dispatched(members);
          // Each member's queue span ends here; the worker gets each member's round context.
          const parents = keys.map((k) => queued.get(k)?.parent ?? null);
          keys.forEach((k, i) =>
            endQueued(k, {
              [ATTR.outcome]: 'dispatched',
              [ATTR.batchId]: batch.batchId,
              [ATTR.batchSize]: batch.items.length,
              [ATTR.workerId]: batch.workerId,
              [ATTR.predictedMs]: batch.predictedMs,
              [ATTR.verified]: batch.items[i].request.type === 'verify' ? batch.items[i].verifyTokens : undefined,
              [ATTR.slackMs]: members[i].slackMs,
              [ATTR.queueMs]: members[i].waitedMs,
            }),
          );
          const headers = itemTraceHeaders(parents);
          // The batch message itself belongs to no one session's trace.
          publish = otelContext.with(ROOT_CONTEXT, () => opts.broker.publish(workerQueue(batch.workerId), batch, { headers }));
        } else {
          publish = opts.broker.publish(workerQueue(batch.workerId), batch);
        }
        void publish.then(
          () => {
            for (const k of keys) {
              publishing.delete(k);
              release(k);
            }
          },
          (err: Error) => {
            // Not acked: the requests stay held (the broker redelivers them if this connection
            // dropped) and wait again here; the worker is free again. A worker whose queue is gone
            // is lost: its sessions move.
            for (const k of keys) publishing.delete(k);
            log.error({ err: err.message, batchId: batch.batchId }, 'batch not published');
            if (err instanceof UnroutableError) send({ type: 'WORKER_LOST', workerId: batch.workerId, atMs: clock.now() });
            send({ type: 'DISPATCH_FAILED', batch, atMs: clock.now() });
            releaseDropped();
          },
        );
      },
      refuseRequest: (_, p) => {
        opts.metrics?.refusedRequest(p.code);
        if (queued.size > 0) endQueued(requestKey(p.sessionId, p.round ?? 0), { [ATTR.outcome]: 'refused' }, { message: p.message, code: p.code });
        void opts.broker.publish(p.replyTo, errorMessage(p.code, p.message, { sessionId: p.sessionId, ...(p.round !== undefined ? { round: p.round } : {}) })).catch(() => {});
        // Refused requests are kept with their reason, like malformed ones (docs/design.md §3).
        if (p.request) void opts.broker.deadLetter(SCHEDULER_QUEUE, p.request, `${p.code}: ${p.message}`).catch((err: Error) => log.warn({ err: err.message }, 'refused request not dead-lettered'));
        release(requestKey(p.sessionId, p.round ?? 0));
      },
      persistEstimator: (_, p) => {
        const estimators = opts.estimators;
        if (!estimators) return;
        persist.write(`${p.model}/${p.workerId}`, () =>
          estimators.save(p.model, p.workerId, p.estimator).catch((err: Error) => log.warn({ err: err.message }, 'estimator not saved')),
        );
      },
      countIgnored: (_, { reason }) => opts.onIgnored?.(reason),
      forgetSession: (_, { sessionId }) => {
        void opts.owners?.forget(sessionId).catch((err: Error) => log.warn({ err: err.message, sessionId }, 'closed session record not deleted (it expires by its TTL)'));
      },
      scheduleWake: (_, { atMs }) => {
        if (wake) clearTimeout(wake);
        wake = setTimeout(() => {
          wake = null;
          // A timer may fire a hair early on our clock: it still means "the time asked for".
          send({ type: 'WAKE', atMs: Math.max(clock.now(), atMs) });
        }, Math.max(0, atMs - clock.now()));
      },
    },
  });

  const actor = createActor(machine, { input: opts.settings });
  actor.subscribe({ error: (err) => log.error({ err: (err as Error).message }, 'scheduler machine failed') });
  actor.start();
  opts.metrics?.observe({
    queueDepth: () => {
      const ctx = actor.getSnapshot().context;
      let n = ctx.unplaced.length;
      for (const list of Object.values(ctx.pending)) n += list.length;
      return n;
    },
    workers: () => Object.keys(actor.getSnapshot().context.workers).length,
  });
  const send = (e: SchedulerEvent) => {
    if (!opts.onDecision) return actor.send(e);
    const t0 = performance.now();
    actor.send(e);
    opts.onDecision(e.type, performance.now() - t0);
  };

  /** Releases held deliveries the machine no longer keeps (refused, superseded, closed). */
  const releaseDropped = () => {
    const ctx = actor.getSnapshot().context;
    const kept = new Set<string>();
    for (const list of Object.values(ctx.pending)) for (const p of list) kept.add(p.request.requestId);
    for (const u of ctx.unplaced) kept.add(requestKeyOf(u.message));
    // Opens waiting for KV-cache memory are still the scheduler's: their deliveries stay unacknowledged.
    for (const list of Object.values(ctx.memoryWait)) for (const q of list) kept.add(requestKeyOf(q.message));
    for (const key of [...held.keys()]) if (!kept.has(key) && !publishing.has(key)) release(key);
  };

  const consumer = await opts.broker.consume(
    SCHEDULER_QUEUE,
    SchedulerInboxSchema,
    async (m, meta) => {
      checkSender(m, meta);
      const atMs = clock.now();
      switch (m.type) {
        case 'open':
        case 'verify': {
          // A session this scheduler does not know (new, or known before a restart): Redis says
          // who owns it and which worker holds it; nobody takes over another device's session.
          let workerHint: string | undefined;
          const ctx = actor.getSnapshot().context;
          if (opts.owners && !ctx.sessions[m.sessionId] && ctx.closed[m.sessionId] === undefined) {
            const owner = await opts.owners.lookup(m.sessionId).catch(() => null);
            if (owner && owner.deviceId !== m.deviceId) throw new HandlerError('not_owner', `session ${m.sessionId} belongs to another device`);
            if (owner) workerHint = owner.workerId;
          }
          const key = keyOf(m)!;
          release(key); // a redelivered or retried copy supersedes the one held
          const done = new Promise<void>((resolve) => held.set(key, resolve));
          if (tracingOn()) {
            // The handler runs in the context the message carried: the device's round.
            const parent = otelContext.active();
            queued.set(key, { span: startQueueSpan({ sessionId: m.sessionId, round: m.type === 'open' ? 0 : m.round, kind: m.type, draftTokens: m.type === 'verify' ? m.draftTokens.length : undefined }, parent), parent });
          }
          send(m.type === 'open' ? { type: 'OPEN', message: m, atMs } : { type: 'VERIFY', message: m, atMs, ...(workerHint ? { workerHint } : {}) });
          releaseDropped();
          return done;
        }
        case 'close':
          send({ type: 'CLOSE', message: m, atMs });
          releaseDropped();
          return;
        case 'worker': {
          const known = actor.getSnapshot().context.workers[m.workerId] !== undefined;
          send({ type: 'WORKER_STATUS', message: m, atMs });
          releaseDropped();
          if (!known && opts.estimators && m.model !== 'loading') {
            const saved = await opts.estimators.load(m.model, m.workerId).catch(() => null);
            if (saved) send({ type: 'RESTORE_ESTIMATOR', workerId: m.workerId, estimator: saved });
          }
          return;
        }
      }
    },
    { prefetch: opts.prefetch ?? 4_096 },
  );

  const watchdog = setInterval(() => {
    const now = clock.now();
    for (const w of Object.values(actor.getSnapshot().context.workers)) {
      if (now - w.lastSeenMs > opts.workerTimeoutMs) {
        log.warn({ workerId: w.workerId }, 'worker lost: moving its sessions');
        send({ type: 'WORKER_LOST', workerId: w.workerId, atMs: now });
        releaseDropped();
      }
    }
    if (opts.sessionIdleMs !== undefined) send({ type: 'EXPIRE_IDLE', atMs: now, idleMs: opts.sessionIdleMs });
  }, Math.max(100, Math.floor(opts.workerTimeoutMs / 4)));
  watchdog.unref();

  return {
    snapshot: () => actor.getSnapshot(),
    async stop() {
      clearInterval(watchdog);
      if (wake) clearTimeout(wake);
      // The deferred estimator writes go now (a restarted scheduler starts from them); not
      // awaited, so a Redis that is away cannot hold the stop up: they are queued ahead of the
      // store's QUIT.
      void persist.flush();
      await consumer.cancel();
      actor.stop();
      for (const key of [...queued.keys()]) endQueued(key, { [ATTR.outcome]: 'stopped' });
    },
  };
}
