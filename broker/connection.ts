/**
 * The broker client every role uses: one AMQP connection with amqplib's own recovery, one
 * confirm channel for publishing, one channel per consumer (its own prefetch), and the
 * refusal path of DESIGN.md §3 (dead-letter with a reason header, typed error to the sender).
 *
 * amqplib brings back only what its `setup` callback declares (NOTES.md), so the topology, the
 * publish channel, every consumer and every registered hook are (re)created there.
 */
import { readFileSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import { connect, type Channel, type ChannelModel, type ConfirmChannel, type ConsumeMessage, type RecoveringChannelModel } from 'amqplib';
import type { z } from 'zod';
import { ERROR_CODES, LIMITS, PROTOCOL_VERSION, parseMessage, type ErrorCode, type ErrorMessage } from '../protocol/messages.ts';
import { BrokerClosedError, BrokerConnectError, BrokerUnavailableError, ForbiddenRouteError, MessageTooLargeError, PublishError, UnroutableError, redactUrl } from './errors.ts';
import {
  DEAD_QUEUE,
  DLX_EXCHANGE,
  QUEUE_HEADER,
  REASON_HEADER,
  TOPOLOGY,
  UPLINK_EXCHANGE,
  declareQueue,
  deviceQueue,
  isDurableQueue,
  queueSpec,
  uplinkRoute,
  uplinkSender,
  type BindingSpec,
  type ExchangeSpec,
  type QueueSpec,
} from './topology.ts';
import { injectTraceHeaders, withTraceContext } from './trace-context.ts';

/** Where the client reports what happens to it; default: one line on stderr per warning. */
export interface BrokerLogger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

export interface BrokerConnectOptions {
  /** Shown by `rabbitmqctl list_connections client_properties` and the management UI. */
  connectionName?: string;
  /** First reconnect delay, ms (default 100). */
  initialDelayMs?: number;
  /** Longest reconnect delay, ms (default 2000; amqplib's own default reaches 30 s). */
  maxDelayMs?: number;
  /** Retries before the first connection fails `connectBroker` (default 5); afterwards it retries forever. */
  initialRetries?: number;
  /** AMQP heartbeat, s, added to the URL when it has none (default 10): detects a silent peer. */
  heartbeatS?: number;
  /** TLS (amqps:// URLs): a CA file to trust besides the system's. */
  tls?: { caPath?: string };
  /** Extra queues this role owns (e.g. its per-id queue), declared at every (re)connect. */
  queues?: string[];
  /** Where refused messages go (default `wisp.dead`; tests use a private `wisp.dead.<run>`). */
  deadLetterQueue?: string;
  /** How long publish() waits for a connection and its confirm, ms (default 10 000). */
  publishTimeoutMs?: number;
  /**
   * Publish through the uplink exchange (`wisp.up`, keyed by sender) instead of the default
   * exchange: the edge and client roles, which under per-role credentials may not write to the
   * default exchange. Only scheduler, prompt and client queues are reachable this way.
   */
  uplink?: boolean;
  logger?: BrokerLogger;
}

export interface PublishOptions {
  /** Survives a broker restart; default: true when the target queue is durable. */
  persistent?: boolean;
  headers?: Record<string, unknown>;
  correlationId?: string;
  replyTo?: string;
  /** Per-message TTL; an expired message is dead-lettered by the queue's arguments. */
  expirationMs?: number;
  /** Reject with UnroutableError when no queue takes the message (default true). */
  mandatory?: boolean;
}

/** What a handler learns about a delivery besides its validated body. */
export interface DeliveryMeta {
  queue: string;
  /** Exchange it was published to ('' = default) and its routing key. */
  exchange: string;
  routingKey: string;
  headers: Record<string, unknown>;
  correlationId?: string;
  replyTo?: string;
  messageId?: string;
  redelivered: boolean;
}

export type MessageHandler<T> = (message: T, meta: DeliveryMeta) => void | Promise<void>;

export interface ConsumeOptions {
  /** Unacked deliveries in flight for this consumer (default 1: handled one at a time, in order). */
  prefetch?: number;
}

export interface ConsumerHandle {
  readonly queue: string;
  /** Stops consuming (and does not come back on reconnect). */
  cancel(): Promise<void>;
}

/** Runs at every (re)connect after topology and consumers, for channels that must come back (RPC). */
export type ConnectHook = (model: ChannelModel) => Promise<void>;

export interface DeadLetterEvent {
  queue: string;
  reason: string;
  messageId?: string;
}

/**
 * Thrown by a handler to answer the sender with a specific wire error code (otherwise `internal`).
 * The message is dead-lettered with reason `<code>: <message>`.
 */
export class HandlerError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'HandlerError';
    this.code = code;
  }
}

interface ConsumerRecord {
  queue: string;
  prefetch: number;
  deliver: (channel: Channel, msg: ConsumeMessage) => void;
  cancelled: boolean;
  /** Open channels consuming for this record (normally one; two briefly around a reconnect). */
  channels: Set<Channel>;
  startedOn: ChannelModel | null;
}

interface ReadyWaiter {
  resolve: (pub: ConfirmChannel) => void;
  reject: (err: Error) => void;
}

const defaultLogger: BrokerLogger = {
  info: () => {},
  warn: (message, fields) => process.stderr.write(`broker: ${message}${fields ? ` ${JSON.stringify(fields)}` : ''}\n`),
};

/**
 * The broker client. Make one with `connectBroker`.
 *
 * Events: `connect` (), `disconnect` (err), `reconnect-scheduled` ({ attempt, delayMs }),
 * `dead-letter` (DeadLetterEvent), `consumer-cancelled` ({ queue }) and `error` (err; only
 * emitted when someone listens, otherwise logged: a broker problem never crashes the process).
 */
export class BrokerClient extends EventEmitter {
  readonly url: string;
  readonly deadLetterQueue: string;
  #options: BrokerConnectOptions;
  #logger: BrokerLogger;
  #conn: RecoveringChannelModel | null = null;
  #model: ChannelModel | null = null;
  #pub: ConfirmChannel | null = null;
  #returned = new Set<string>();
  #consumers = new Set<ConsumerRecord>();
  #hooks = new Set<ConnectHook>();
  #queues = new Set<string>();
  #waiters: ReadyWaiter[] = [];
  #inFlight = new Set<Promise<void>>();
  #closed = false;
  #seq = 0;
  readonly #idPrefix = randomUUID().slice(0, 8);

  /** @internal use connectBroker */
  constructor(url: string, options: BrokerConnectOptions) {
    super();
    this.url = url;
    this.#options = options;
    this.#logger = options.logger ?? defaultLogger;
    this.deadLetterQueue = options.deadLetterQueue ?? DEAD_QUEUE;
    for (const q of options.queues ?? []) this.#queues.add(q);
  }

  /** True while a connection is up and set up. */
  get connected(): boolean {
    return this.#pub !== null;
  }

  /** @internal opens the connection; called once by connectBroker. */
  async start(): Promise<void> {
    const o = this.#options;
    const socketOptions: Record<string, unknown> = {
      noDelay: true, // without it a request/reply round trip costs ~41 ms (Nagle), NOTES.md
      timeout: 5_000,
      clientProperties: { connection_name: o.connectionName ?? `wisp-${process.pid}` },
    };
    if (o.tls?.caPath) socketOptions.ca = [readFileSync(o.tls.caPath)];
    const conn = await connect(withHeartbeat(this.url, o.heartbeatS ?? 10), {
      ...socketOptions,
      recovery: {
        initialDelay: o.initialDelayMs ?? 100,
        maxDelay: o.maxDelayMs ?? 2_000,
        initialMaxRetries: o.initialRetries ?? 5,
        maxRetries: Infinity,
        waitForConnect: false,
        setup: (model: ChannelModel) => this.#setup(model),
      },
    });
    this.#conn = conn;
    conn.on('error', (err: Error) => this.#reportError(err)); // a socket error must never crash the process
    conn.on('handler-error', (err: Error, event: string) => this.#reportError(new Error(`listener of ${event} threw: ${err.message}`)));
    conn.on('disconnect', (err: Error) => {
      this.#model = null;
      this.#pub = null;
      this.#logger.warn('disconnected', { reason: err.message });
      this.emit('disconnect', err);
    });
    conn.on('reconnect-scheduled', (info: { attempt: number; delay: number }) =>
      this.emit('reconnect-scheduled', { attempt: info.attempt, delayMs: info.delay }),
    );
    conn.on('connect-failed', (err: Error) => this.#logger.warn('connect attempt failed', { reason: err.message }));
    try {
      await conn.waitForConnect();
    } catch (err) {
      this.#closed = true;
      throw new BrokerConnectError(this.url, err);
    }
  }

  /** (Re)creates everything on a fresh connection; amqplib calls it after every connect. */
  async #setup(model: ChannelModel): Promise<void> {
    // amqplib binds its own listener only after setup; until then an 'error' without one would crash.
    model.on('error', () => {});
    const pub = await this.#openPublisher(model);
    const queues = [...TOPOLOGY.queues, ...[...this.#queues].map(queueSpec)];
    if (this.deadLetterQueue !== DEAD_QUEUE) queues.push(queueSpec(this.deadLetterQueue));
    const bindings = [...TOPOLOGY.bindings];
    if (this.deadLetterQueue !== DEAD_QUEUE) bindings.push({ queue: this.deadLetterQueue, exchange: DLX_EXCHANGE, routingKey: this.deadLetterQueue });
    await ensureTopology(model, TOPOLOGY.exchanges, queues, bindings);
    // Loop until every consumer is on this model: consume() calls made meanwhile join the set.
    for (;;) {
      const pending = [...this.#consumers].filter((r) => !r.cancelled && r.startedOn !== model);
      if (pending.length === 0) break;
      for (const record of pending) {
        try {
          await this.#startConsumer(record, model);
        } catch (err) {
          // One bad queue must not keep the whole client offline (setup failure = reconnect loop).
          record.startedOn = model;
          this.#reportError(new Error(`consumer on ${record.queue} did not restart: ${(err as Error).message}`));
        }
      }
    }
    for (const hook of this.#hooks) {
      try {
        await hook(model);
      } catch (err) {
        this.#reportError(new Error(`connect hook failed: ${(err as Error).message}`));
      }
    }
    this.#model = model;
    this.#pub = pub;
    for (const w of this.#waiters.splice(0)) w.resolve(pub);
    this.#logger.info('connected', { url: redactUrl(this.url) });
    this.emit('connect');
  }

  async #openPublisher(model: ChannelModel): Promise<ConfirmChannel> {
    const pub = await model.createConfirmChannel();
    pub.on('error', (err: Error) => this.#reportError(err));
    pub.on('return', (msg: { properties: { messageId?: string } }) => {
      // RabbitMQ sends basic.return before the confirm of the same message: mark it, the confirm callback checks.
      if (msg.properties.messageId) this.#returned.add(msg.properties.messageId);
    });
    pub.on('close', () => {
      // A channel-level error closed the publisher while the connection stays: open a new one.
      if (this.#closed || this.#model !== model || this.#pub !== pub) return;
      this.#pub = null;
      this.#openPublisher(model).then(
        (next) => {
          if (this.#model !== model) return;
          this.#pub = next;
          for (const w of this.#waiters.splice(0)) w.resolve(next);
        },
        (err: Error) => this.#reportError(err),
      );
    });
    return pub;
  }

  async #startConsumer(record: ConsumerRecord, model: ChannelModel): Promise<void> {
    const ch = await declaredChannel(model, queueSpec(record.queue));
    ch.on('error', (err: Error) => this.#reportError(new Error(`consumer channel of ${record.queue}: ${err.message}`)));
    ch.on('close', () => {
      record.channels.delete(ch);
      // Closed by a channel-level error while the connection lives: one restart attempt, else wait for reconnect.
      if (record.cancelled || this.#closed || this.#model !== model || record.channels.size > 0) return;
      setTimeout(() => {
        if (record.cancelled || this.#closed || this.#model !== model || record.channels.size > 0) return;
        this.#startConsumer(record, model).catch((err: Error) =>
          this.#reportError(new Error(`consumer on ${record.queue} stopped: ${err.message}`)),
        );
      }, 500).unref();
    });
    try {
      await ch.prefetch(record.prefetch);
      await ch.consume(
        record.queue,
        (msg) => {
          // null: the server cancelled the consumer (queue deleted); it comes back at the next reconnect.
          if (msg === null) this.emit('consumer-cancelled', { queue: record.queue });
          else record.deliver(ch, msg);
        },
        { noAck: false },
      );
      if (record.cancelled) {
        await ch.close().catch(() => {});
        return;
      }
      record.channels.add(ch);
      record.startedOn = model;
    } catch (err) {
      ch.close().catch(() => {});
      throw err;
    }
  }

  /**
   * Declares a queue now and at every reconnect (a role's own per-id queue, e.g. `workerQueue(id)`).
   * Publishers rely on it: a mandatory publish to a missing queue fails with UnroutableError.
   */
  async declareQueue(queue: string): Promise<void> {
    this.#queues.add(queue);
    const pub = await this.#ready(queue);
    await declareQueue(pub, queueSpec(queue));
  }

  /** Drops every ready message in `queue` (tests and operators clearing leftovers). */
  async purgeQueue(queue: string): Promise<number> {
    const pub = await this.#ready(queue);
    await declareQueue(pub, queueSpec(queue));
    return (await pub.purgeQueue(queue)).messageCount;
  }

  /** Deletes a queue and forgets it (tests and cleanup). */
  async deleteQueue(queue: string): Promise<void> {
    this.#queues.delete(queue);
    const pub = await this.#ready(queue);
    await pub.deleteQueue(queue);
  }

  /** Registers a hook that runs now (if connected) and after every reconnect. Returns its removal. */
  async addConnectHook(hook: ConnectHook): Promise<() => void> {
    this.#hooks.add(hook);
    if (this.#model) await hook(this.#model);
    return () => this.#hooks.delete(hook);
  }

  /**
   * Publishes `message` as JSON to `queue` (default exchange) and resolves once the broker has
   * confirmed it. Waits for a connection while one is being recovered (up to publishTimeoutMs).
   * @example await broker.publish(SCHEDULER_QUEUE, verifyRequest, { replyTo: deviceQueue(id) });
   */
  async publish(queue: string, message: unknown, options: PublishOptions = {}): Promise<void> {
    const body = Buffer.from(JSON.stringify(message));
    if (body.length > LIMITS.messageBytes) throw new MessageTooLargeError(queue, body.length, LIMITS.messageBytes);
    if (!this.#options.uplink) return this.#publishRaw('', queue, body, options, queue);
    const route = uplinkRoute(queue, message);
    if (!route) throw new ForbiddenRouteError(queue);
    await this.#publishRaw(route.exchange, route.routingKey, body, { ...options, persistent: options.persistent ?? isDurableQueue(queue) }, queue);
  }

  async #publishRaw(exchange: string, routingKey: string, body: Buffer, options: PublishOptions, label: string): Promise<void> {
    const timeoutMs = this.#options.publishTimeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    const pub = await this.#ready(label, timeoutMs);
    const messageId = `${this.#idPrefix}-${++this.#seq}`;
    const headers = injectTraceHeaders({ ...(options.headers ?? {}) });
    const persistent = options.persistent ?? (exchange === '' ? isDurableQueue(routingKey) : true);
    const mandatory = options.mandatory ?? true;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new BrokerUnavailableError(label, timeoutMs)), Math.max(1, deadline - Date.now()));
      const settle = (err: unknown) => {
        clearTimeout(timer);
        const returned = this.#returned.delete(messageId);
        if (err) reject(new PublishError(label, err));
        else if (returned && mandatory) reject(new UnroutableError(label));
        else resolve();
      };
      try {
        pub.publish(
          exchange,
          routingKey,
          body,
          {
            persistent,
            mandatory,
            headers,
            messageId,
            contentType: 'application/json',
            timestamp: Date.now(),
            correlationId: options.correlationId,
            replyTo: options.replyTo,
            expiration: options.expirationMs === undefined ? undefined : String(Math.max(0, Math.round(options.expirationMs))),
          },
          settle,
        );
      } catch (err) {
        // The channel died between #ready and publish (IllegalOperationError).
        clearTimeout(timer);
        reject(new PublishError(label, err));
      }
    });
  }

  #ready(label: string, timeoutMs = this.#options.publishTimeoutMs ?? 10_000): Promise<ConfirmChannel> {
    if (this.#closed) return Promise.reject(new BrokerClosedError(`publish to ${label}`));
    if (this.#pub) return Promise.resolve(this.#pub);
    return new Promise<ConfirmChannel>((resolve, reject) => {
      const waiter: ReadyWaiter = {
        resolve: (pub) => {
          clearTimeout(timer);
          resolve(pub);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new BrokerUnavailableError(label, timeoutMs));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  /**
   * Consumes `queue` (declared first, with its topology arguments) with manual acks. Each body is
   * size-checked and validated with `schema`; a refused body or a throwing handler is
   * dead-lettered with an `x-wisp-reason` header, the sender (when known) gets a typed
   * ErrorMessage, and the delivery is acked. The handler runs inside the message's trace
   * context; the ack follows its promise. Comes back after every reconnect.
   */
  async consume<T>(queue: string, schema: z.ZodType<T>, handler: MessageHandler<T>, options: ConsumeOptions = {}): Promise<ConsumerHandle> {
    if (this.#closed) throw new BrokerClosedError(`consume ${queue}`);
    const record: ConsumerRecord = {
      queue,
      prefetch: options.prefetch ?? 1,
      cancelled: false,
      channels: new Set(),
      startedOn: null,
      deliver: (ch, msg) => {
        const done = this.#handle(queue, schema, handler, ch, msg);
        this.#inFlight.add(done);
        void done.finally(() => this.#inFlight.delete(done));
      },
    };
    this.#consumers.add(record);
    if (this.#model) {
      try {
        await this.#startConsumer(record, this.#model);
      } catch (err) {
        // Lost connection meanwhile: setup restarts it. Any other failure is the caller's to see.
        if (this.#model && record.startedOn !== this.#model) {
          this.#consumers.delete(record);
          throw err;
        }
      }
    }
    return {
      queue,
      cancel: async () => {
        record.cancelled = true;
        this.#consumers.delete(record);
        const channels = [...record.channels];
        record.channels.clear();
        await Promise.all(channels.map((ch) => ch.close().catch(() => {})));
      },
    };
  }

  async #handle<T>(queue: string, schema: z.ZodType<T>, handler: MessageHandler<T>, ch: Channel, msg: ConsumeMessage): Promise<void> {
    const parsed = parseMessage(schema, msg.content);
    let refusal: { reason: string; code: ErrorCode; raw: unknown } | null = null;
    if (!parsed.ok) {
      refusal = { reason: parsed.reason, code: parsed.reason.startsWith('too_large') ? 'too_large' : 'malformed', raw: parsed.raw };
    } else {
      const props = msg.properties;
      const meta: DeliveryMeta = {
        queue,
        exchange: msg.fields.exchange,
        routingKey: msg.fields.routingKey,
        headers: (props.headers ?? {}) as Record<string, unknown>,
        correlationId: props.correlationId,
        replyTo: props.replyTo,
        messageId: props.messageId,
        redelivered: msg.fields.redelivered,
      };
      try {
        await withTraceContext(meta.headers, () => handler(parsed.value, meta));
      } catch (err) {
        const code = handlerErrorCode(err);
        refusal = { reason: `${code}: ${(err as Error)?.message ?? String(err)}`, code, raw: safeJson(msg.content) };
      }
    }
    if (refusal) {
      try {
        await this.#refuse(queue, msg, refusal.reason, refusal.code, refusal.raw);
      } catch (err) {
        // Could not dead-letter with a reason: let the queue's DLX arguments take it instead of losing it.
        this.#reportError(new Error(`dead-letter from ${queue} failed (${(err as Error).message}); nacking`));
        try {
          ch.nack(msg, false, false);
        } catch {
          // Channel gone: the broker redelivers the message after the reconnect.
        }
        return;
      }
    }
    try {
      ch.ack(msg);
    } catch {
      // Channel gone mid-handler: the broker redelivers it (redelivered=true); the protocol tolerates duplicates.
    }
  }

  /**
   * Dead-letters a message that passed validation but was refused by the role's own logic (an
   * item of a batch naming an unknown session, say): the JSON of `message` goes to the
   * dead-letter queue with `reason` (one line) and `fromQueue` in its headers. Answering the
   * sender stays the caller's job.
   * @example await broker.deadLetter(workerQueue(id), request, 'unknown_session: session s-1 is not open');
   */
  async deadLetter(fromQueue: string, message: unknown, reason: string): Promise<void> {
    await this.#deadLetterBody(fromQueue, Buffer.from(JSON.stringify(message)), reason, {});
  }

  async #deadLetterBody(queue: string, body: Buffer, reason: string, props: { headers?: Record<string, unknown>; correlationId?: string; replyTo?: string; messageId?: string }): Promise<string> {
    const oneLine = reason.replace(/\s+/g, ' ').slice(0, 1_000);
    const headers = { ...(props.headers ?? {}), [REASON_HEADER]: oneLine, [QUEUE_HEADER]: queue };
    await this.#publishRaw(
      DLX_EXCHANGE,
      this.deadLetterQueue,
      body,
      { persistent: true, mandatory: false, headers, correlationId: props.correlationId, replyTo: props.replyTo },
      `${DLX_EXCHANGE}/${this.deadLetterQueue}`,
    );
    this.#logger.warn('message dead-lettered', { queue, reason: oneLine });
    this.emit('dead-letter', { queue, reason: oneLine, messageId: props.messageId } satisfies DeadLetterEvent);
    return oneLine;
  }

  /** Dead-letters the original body with the reason, then tells the sender (best effort). */
  async #refuse(queue: string, msg: ConsumeMessage, reason: string, code: ErrorCode, raw: unknown): Promise<void> {
    const p = msg.properties;
    const deadLettered = this.#deadLetterBody(queue, msg.content, reason, {
      headers: (p.headers ?? {}) as Record<string, unknown>,
      correlationId: p.correlationId,
      replyTo: p.replyTo,
      messageId: p.messageId,
    });

    // A device authenticated by its uplink routing key hears about its own refusals only.
    const sender = uplinkSender(msg.fields.exchange, msg.fields.routingKey);
    const target = sender !== null ? deviceQueue(sender) : replyTarget(raw, msg.properties.replyTo);
    if (!target || target === queue || (isObject(raw) && raw.type === 'error')) return void (await deadLettered);
    const oneLine = reason.replace(/\s+/g, ' ').slice(0, 1_000);
    const error: ErrorMessage = { v: PROTOCOL_VERSION, type: 'error', code, message: oneLine, ...idsOf(raw) };
    // The typed error goes out alongside the dead letter (not after it): half the latency per refusal.
    const replied = this.publish(target, error, { correlationId: msg.properties.correlationId, mandatory: false }).catch((err: Error) =>
      this.#logger.warn('error reply not sent', { to: target, reason: err.message }),
    );
    try {
      await deadLettered;
    } finally {
      await replied;
    }
  }

  #reportError(err: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
    else this.#logger.warn(err.message);
  }

  /** Waits for running handlers (up to `graceMs`), then closes the connection; pending publishes fail. */
  async close(graceMs = 2_000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w.reject(new BrokerClosedError('publish'));
    for (const r of this.#consumers) r.cancelled = true;
    if (this.#inFlight.size > 0) {
      await Promise.race([Promise.allSettled([...this.#inFlight]), new Promise((r) => setTimeout(r, graceMs).unref())]);
    }
    this.#model = null;
    this.#pub = null;
    await this.#conn?.close().catch(() => {});
  }
}

/**
 * Connects to RabbitMQ and declares the topology (plus `options.queues`). Resolves once the
 * first connection is set up; afterwards the client reconnects by itself.
 * @example const broker = await connectBroker(config.amqpUrl, { connectionName: 'scheduler' });
 */
export async function connectBroker(url: string, options: BrokerConnectOptions = {}): Promise<BrokerClient> {
  const client = new BrokerClient(url, options);
  await client.start();
  return client;
}

/** AMQP reply code of a refused access (the credential lacks the permission). */
const ACCESS_REFUSED = 403;

function isAccessRefused(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  return e?.code === ACCESS_REFUSED || (typeof e?.message === 'string' && e.message.includes('ACCESS_REFUSED'));
}

async function scratchChannel(model: ChannelModel): Promise<Channel> {
  const ch = await model.createChannel();
  ch.on('error', () => {}); // a refused declaration closes the channel with an error event
  return ch;
}

/**
 * Declares exchanges, queues (with their uplink bindings) and bindings on a scratch channel.
 * A declaration the credential may not make (403: per-role users, whose shared topology comes
 * from ops/rabbitmq/definitions.json) becomes a passive check that the thing exists; a binding
 * it may not make is left to the definitions.
 */
async function ensureTopology(model: ChannelModel, exchanges: readonly ExchangeSpec[], queues: readonly QueueSpec[], bindings: readonly BindingSpec[]): Promise<void> {
  let ch = await scratchChannel(model);
  const attempt = async (what: string, declare: (c: Channel) => Promise<unknown>, check?: (c: Channel) => Promise<unknown>) => {
    try {
      await declare(ch);
    } catch (err) {
      if (!isAccessRefused(err)) throw err;
      ch = await scratchChannel(model);
      if (!check) return;
      try {
        await check(ch);
      } catch (checkErr) {
        ch = await scratchChannel(model);
        throw new Error(`${what} does not exist and this credential may not declare it (apply ops/rabbitmq/definitions.json): ${(checkErr as Error).message}`);
      }
    }
  };
  try {
    for (const ex of exchanges) {
      await attempt(`exchange ${ex.name}`, (c) => c.assertExchange(ex.name, ex.type, { durable: ex.durable }), (c) => c.checkExchange(ex.name));
    }
    for (const q of queues) {
      await attempt(`queue ${q.name}`, (c) => c.assertQueue(q.name, { durable: q.durable, arguments: q.arguments }), (c) => c.checkQueue(q.name));
      const key = q.uplinkKey;
      if (key !== undefined) await attempt(`binding of ${q.name}`, (c) => c.bindQueue(q.name, UPLINK_EXCHANGE, key));
    }
    for (const b of bindings) await attempt(`binding of ${b.queue}`, (c) => c.bindQueue(b.queue, b.exchange, b.routingKey));
  } finally {
    await ch.close().catch(() => {});
  }
}

/**
 * A channel on which `spec`'s queue is declared (with its uplink binding), or, when this
 * credential may not declare it, a fresh channel on which the queue was checked to exist.
 */
async function declaredChannel(model: ChannelModel, spec: QueueSpec): Promise<Channel> {
  const ch = await scratchChannel(model);
  try {
    await declareQueue(ch, spec);
    return ch;
  } catch (err) {
    if (!isAccessRefused(err)) {
      await ch.close().catch(() => {});
      throw err;
    }
  }
  const checked = await scratchChannel(model);
  try {
    await checked.checkQueue(spec.name);
  } catch (err) {
    throw new Error(`queue ${spec.name} does not exist and this credential may not declare it (apply ops/rabbitmq/definitions.json): ${(err as Error).message}`);
  }
  return checked;
}

function withHeartbeat(url: string, heartbeatS: number): string {
  try {
    const u = new URL(url);
    if (!u.searchParams.has('heartbeat')) u.searchParams.set('heartbeat', String(heartbeatS));
    return u.toString();
  } catch {
    return url;
  }
}

function handlerErrorCode(err: unknown): ErrorCode {
  return err instanceof HandlerError && (ERROR_CODES as readonly string[]).includes(err.code) ? err.code : 'internal';
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function safeJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}

const SAFE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const SAFE_QUEUE = /^[A-Za-z0-9._:\-/+=]{1,255}$/;

/** Where a refused message's sender listens: body.replyTo, else the AMQP replyTo, else its device queue. */
function replyTarget(raw: unknown, propsReplyTo: string | undefined): string | null {
  if (isObject(raw) && typeof raw.replyTo === 'string' && SAFE_QUEUE.test(raw.replyTo)) return raw.replyTo;
  if (propsReplyTo && SAFE_QUEUE.test(propsReplyTo)) return propsReplyTo;
  if (isObject(raw) && typeof raw.deviceId === 'string' && SAFE_ID.test(raw.deviceId)) return deviceQueue(raw.deviceId);
  return null;
}

/** The ids of a refused message that the ErrorMessage schema accepts (invalid ones are left out). */
function idsOf(raw: unknown): Pick<ErrorMessage, 'sessionId' | 'requestId' | 'round'> {
  if (!isObject(raw)) return {};
  const out: Pick<ErrorMessage, 'sessionId' | 'requestId' | 'round'> = {};
  if (typeof raw.sessionId === 'string' && SAFE_ID.test(raw.sessionId)) out.sessionId = raw.sessionId;
  if (typeof raw.requestId === 'string' && SAFE_ID.test(raw.requestId)) out.requestId = raw.requestId;
  if (typeof raw.round === 'number' && Number.isSafeInteger(raw.round) && raw.round >= 0) out.round = raw.round;
  return out;
}
