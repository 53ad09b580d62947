/**
 * The broker client every role gets: the composition of the broker layer's parts, each in its
 * own module: the connection and its recovery (lifecycle.ts), the topology it declares at every
 * connect (topology.ts), confirmed publishing (publish.ts), the consumer registry
 * (consumers.ts), what one delivery goes through (delivery.ts) and the refusal path
 * (refusals.ts). Roles see it through the narrow BrokerTransport (transport.ts); tests, tools and
 * actors/launch.ts use the rest (events, `connected`, queue administration).
 *
 * The names the rest of the code imports from here (connectBroker, BrokerClient, HandlerError,
 * the option and delivery types) stay here, re-exported where they now live elsewhere.
 */
import { EventEmitter } from 'node:events';
import type { ChannelModel } from 'amqplib';
import type { z } from 'zod';
import { ConsumerRegistry } from './consumers.ts';
import { deliveryHandler } from './delivery.ts';
import { BrokerLifecycle, type LifecycleOptions } from './lifecycle.ts';
import { ConfirmedPublisher } from './publish.ts';
import { Refusals } from './refusals.ts';
import { defaultLogger, type BrokerLogger, type BrokerReport } from './report.ts';
import { DEAD_QUEUE, clientTopology, declareQueue, ensureTopology, queueSpec } from './topology.ts';
import type { BrokerTransport, ConsumeOptions, ConsumerHandle, MessageHandler, PublishOptions } from './transport.ts';

export type { BrokerLogger } from './report.ts';
export { HandlerError, type DeadLetterEvent } from './refusals.ts';
export type { BrokerTransport, ConsumeOptions, ConsumerHandle, DeliveryMeta, MessageHandler, PublishOptions } from './transport.ts';

export interface BrokerConnectOptions extends LifecycleOptions {
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

const DEFAULT_PUBLISH_TIMEOUT_MS = 10_000;
/** How long close() waits for running handlers by default, ms. */
const DEFAULT_CLOSE_GRACE_MS = 2_000;

/**
 * The broker client. Make one with `connectBroker`.
 *
 * Events: `connect` (), `disconnect` (err), `reconnect-scheduled` ({ attempt, delayMs }),
 * `dead-letter` (DeadLetterEvent), `consumer-cancelled` ({ queue }) and `error` (err; only
 * emitted when someone listens, otherwise logged: a broker problem never crashes the process).
 */
export class BrokerClient extends EventEmitter implements BrokerTransport {
  readonly url: string;
  readonly deadLetterQueue: string;
  #report: BrokerReport;
  #lifecycle: BrokerLifecycle;
  #publisher: ConfirmedPublisher;
  #consumers: ConsumerRegistry;
  #refusals: Refusals;
  #queues = new Set<string>();

  /** @internal use connectBroker */
  constructor(url: string, options: BrokerConnectOptions) {
    super();
    this.url = url;
    this.deadLetterQueue = options.deadLetterQueue ?? DEAD_QUEUE;
    for (const q of options.queues ?? []) this.#queues.add(q);
    const logger = options.logger ?? defaultLogger;
    this.#report = {
      logger,
      error: (err) => {
        if (this.listenerCount('error') > 0) this.emit('error', err);
        else logger.warn(err.message);
      },
      emit: (event, ...args) => void this.emit(event, ...args),
    };
    this.#lifecycle = new BrokerLifecycle(url, options, this.#report);
    this.#publisher = new ConfirmedPublisher(this.#lifecycle, this.#report, {
      publishTimeoutMs: options.publishTimeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS,
      uplink: options.uplink ?? false,
    });
    this.#consumers = new ConsumerRegistry(this.#lifecycle, this.#report);
    this.#refusals = new Refusals(this.#publisher, this.deadLetterQueue, this.#report);
  }

  /** True while a connection is up and set up. */
  get connected(): boolean {
    return this.#publisher.usable;
  }

  /** @internal opens the connection; called once by connectBroker. */
  async start(): Promise<void> {
    await this.#lifecycle.open({ setup: (model) => this.#setup(model), onDisconnect: () => this.#publisher.drop() });
  }

  /** (Re)creates everything on a fresh connection; amqplib calls it after every connect. */
  async #setup(model: ChannelModel): Promise<void> {
    const pub = await this.#publisher.open(model);
    await ensureTopology(model, clientTopology(this.#queues, this.deadLetterQueue));
    await this.#consumers.startAll(model);
    this.#lifecycle.markUp(model);
    this.#publisher.use(pub);
  }

  /**
   * Declares a queue now and at every reconnect (a role's own per-id queue, e.g. `workerQueue(id)`).
   * Publishers rely on it: a mandatory publish to a missing queue fails with UnroutableError.
   */
  async declareQueue(queue: string): Promise<void> {
    this.#queues.add(queue);
    const pub = await this.#publisher.ready(queue);
    await declareQueue(pub, queueSpec(queue));
  }

  /** Drops every ready message in `queue` (tests and operators clearing leftovers). */
  async purgeQueue(queue: string): Promise<number> {
    const pub = await this.#publisher.ready(queue);
    await declareQueue(pub, queueSpec(queue));
    return (await pub.purgeQueue(queue)).messageCount;
  }

  /** Deletes a queue and forgets it (tests and cleanup). */
  async deleteQueue(queue: string): Promise<void> {
    this.#queues.delete(queue);
    const pub = await this.#publisher.ready(queue);
    await pub.deleteQueue(queue);
  }

  /**
   * Publishes `message` as JSON to `queue` (default exchange) and resolves once the broker has
   * confirmed it. Waits for a connection while one is being recovered (up to publishTimeoutMs).
   * @example await broker.publish(SCHEDULER_QUEUE, verifyRequest, { replyTo: deviceQueue(id) });
   */
  publish(queue: string, message: unknown, options: PublishOptions = {}): Promise<void> {
    return this.#publisher.publish(queue, message, options);
  }

  /**
   * Consumes `queue` (declared first, with its topology arguments) with manual acks. Each body is
   * size-checked and validated with `schema`; a refused body or a throwing handler is
   * dead-lettered with an `x-wisp-reason` header, the sender (when known) gets a typed
   * ErrorMessage, and the delivery is acked. The handler runs inside the message's trace
   * context; the ack follows its promise. Comes back after every reconnect.
   */
  consume<T>(queue: string, schema: z.ZodType<T>, handler: MessageHandler<T>, options: ConsumeOptions = {}): Promise<ConsumerHandle> {
    return this.#consumers.add(queue, options.prefetch ?? 1, deliveryHandler(queue, schema, handler, this.#refusals, this.#report));
  }

  /**
   * Dead-letters a message that passed validation but was refused by the role's own logic (an
   * item of a batch naming an unknown session, say): the JSON of `message` goes to the
   * dead-letter queue with `reason` (one line) and `fromQueue` in its headers. Answering the
   * sender stays the caller's job.
   * @example await broker.deadLetter(workerQueue(id), request, 'unknown_session: session s-1 is not open');
   */
  deadLetter(fromQueue: string, message: unknown, reason: string): Promise<void> {
    return this.#refusals.deadLetter(fromQueue, message, reason);
  }

  /** Waits for running handlers (up to `graceMs`), then closes the connection; pending publishes fail. */
  async close(graceMs = DEFAULT_CLOSE_GRACE_MS): Promise<void> {
    if (this.#lifecycle.closed) return;
    this.#lifecycle.markClosed();
    this.#publisher.rejectWaiters();
    this.#consumers.stopAll();
    await this.#consumers.drain(graceMs);
    this.#publisher.drop();
    await this.#lifecycle.shutDown();
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
