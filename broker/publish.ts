/**
 * Confirmed publishing: the client's one confirm channel, reopened when a channel-level error
 * closes it; publish() waits for a usable channel (while a connection is recovered) and then for
 * the broker's confirm, both within the publish timeout, and turns a returned mandatory message
 * into UnroutableError. In uplink mode (edge and client roles) messages go through the uplink
 * exchange keyed by sender (topology.ts `uplinkRoute`) instead of the default exchange.
 */
import { randomUUID } from 'node:crypto';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { LIMITS } from '../protocol/messages.ts';
import { BrokerClosedError, BrokerUnavailableError, ForbiddenRouteError, MessageTooLargeError, PublishError, UnroutableError } from './errors.ts';
import type { ConnectionState } from './lifecycle.ts';
import type { BrokerReport } from './report.ts';
import { isDurableQueue, uplinkRoute } from './topology.ts';
import { injectTraceHeaders } from './trace-context.ts';
import type { PublishOptions } from './transport.ts';

export interface PublisherOptions {
  /** How long a publish waits for a channel and its confirm, ms. */
  publishTimeoutMs: number;
  /** Publish through the uplink exchange (see BrokerConnectOptions.uplink in connection.ts). */
  uplink: boolean;
}

interface ReadyWaiter {
  resolve: (pub: ConfirmChannel) => void;
  reject: (err: Error) => void;
}

export class ConfirmedPublisher {
  #state: ConnectionState;
  #report: BrokerReport;
  #options: PublisherOptions;
  #pub: ConfirmChannel | null = null;
  #returned = new Set<string>();
  #waiters: ReadyWaiter[] = [];
  #seq = 0;
  readonly #idPrefix = randomUUID().slice(0, 8);

  constructor(state: ConnectionState, report: BrokerReport, options: PublisherOptions) {
    this.#state = state;
    this.#report = report;
    this.#options = options;
  }

  /** True while a confirm channel is usable. */
  get usable(): boolean {
    return this.#pub !== null;
  }

  /** Opens a confirm channel on `model`; `use` makes it the publishing one. */
  async open(model: ChannelModel): Promise<ConfirmChannel> {
    const pub = await model.createConfirmChannel();
    pub.on('error', (err: Error) => this.#report.error(err));
    pub.on('return', (msg: { properties: { messageId?: string } }) => {
      // RabbitMQ sends basic.return before the confirm of the same message: mark it, the confirm callback checks.
      if (msg.properties.messageId) this.#returned.add(msg.properties.messageId);
    });
    pub.on('close', () => {
      // A channel-level error closed the publisher while the connection stays: open a new one.
      if (this.#state.closed || this.#state.model !== model || this.#pub !== pub) return;
      this.#pub = null;
      this.open(model).then(
        (next) => {
          if (this.#state.model !== model) return;
          this.use(next);
        },
        (err: Error) => this.#report.error(err),
      );
    });
    return pub;
  }

  /** Publishes on `pub` from now on; publishes waiting for a channel go ahead. */
  use(pub: ConfirmChannel): void {
    this.#pub = pub;
    for (const w of this.#waiters.splice(0)) w.resolve(pub);
  }

  /** The connection is gone: publishes wait for the next `use`. */
  drop(): void {
    this.#pub = null;
  }

  /** The client closes: publishes waiting for a channel fail with BrokerClosedError. */
  rejectWaiters(): void {
    for (const w of this.#waiters.splice(0)) w.reject(new BrokerClosedError('publish'));
  }

  /**
   * Publishes `message` as JSON to `queue` (default exchange, or the uplink route) and resolves
   * once the broker has confirmed it.
   */
  async publish(queue: string, message: unknown, options: PublishOptions = {}): Promise<void> {
    const body = Buffer.from(JSON.stringify(message));
    if (body.length > LIMITS.messageBytes) throw new MessageTooLargeError(queue, body.length, LIMITS.messageBytes);
    if (!this.#options.uplink) return this.publishRaw('', queue, body, options, queue);
    const route = uplinkRoute(queue, message);
    if (!route) throw new ForbiddenRouteError(queue);
    await this.publishRaw(route.exchange, route.routingKey, body, { ...options, persistent: options.persistent ?? isDurableQueue(queue) }, queue);
  }

  /** Publishes `body` as is to `exchange`/`routingKey`; `label` names the target in errors. */
  async publishRaw(exchange: string, routingKey: string, body: Buffer, options: PublishOptions, label: string): Promise<void> {
    const timeoutMs = this.#options.publishTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    const pub = await this.ready(label, timeoutMs);
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
        // The channel died between ready() and publish (IllegalOperationError).
        clearTimeout(timer);
        reject(new PublishError(label, err));
      }
    });
  }

  /** The usable confirm channel, waiting up to `timeoutMs` for one (BrokerUnavailableError). */
  ready(label: string, timeoutMs = this.#options.publishTimeoutMs): Promise<ConfirmChannel> {
    if (this.#state.closed) return Promise.reject(new BrokerClosedError(`publish to ${label}`));
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
}
