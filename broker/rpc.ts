/**
 * Request/reply over RabbitMQ direct reply-to (`amq.rabbitmq.reply-to`): no reply queue to
 * declare or clean up. Modelled on nats.js request.ts: one shared inbox, a correlation-id →
 * pending map, a timeout per request, and close() rejecting everything still pending.
 *
 * RabbitMQ's rule (NOTES.md): the requester must consume `amq.rabbitmq.reply-to` with
 * noAck on the same channel it publishes from, so this client owns one channel, recreated
 * at every reconnect. A reconnect loses replies in flight (the pseudo-queue is per channel):
 * those requests fail at once with RpcDisconnectedError instead of waiting for their timeout.
 */
import { randomUUID } from 'node:crypto';
import type { ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib';
import type { z } from 'zod';
import { ErrorMessageSchema, parseMessage } from '../protocol/messages.ts';
import type { BrokerClient, ConsumeOptions, ConsumerHandle, DeliveryMeta } from './connection.ts';
import {
  PublishError,
  RpcBadReplyError,
  RpcClosedError,
  RpcDisconnectedError,
  RpcRemoteError,
  RpcTimeoutError,
  UnroutableError,
} from './errors.ts';
import { injectTraceHeaders } from './trace-context.ts';

const REPLY_TO = 'amq.rabbitmq.reply-to';

export interface RpcClientOptions {
  /** Default per-request timeout, ms (default 5000). */
  timeoutMs?: number;
}

export interface RequestOptions {
  timeoutMs?: number;
  headers?: Record<string, unknown>;
}

interface Pending {
  queue: string;
  schema: z.ZodType<unknown>;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  /** Errors made where the request starts, so their stacks point at the caller. */
  errors: { timeout: RpcTimeoutError; closed: RpcClosedError; disconnected: RpcDisconnectedError };
}

/** Make one with `createRpcClient`. */
export class RpcClient {
  #broker: BrokerClient;
  #timeoutMs: number;
  #channel: ConfirmChannel | null = null;
  #channelWaiters: Array<(ch: ConfirmChannel) => void> = [];
  #pending = new Map<string, Pending>();
  #closed = false;
  #seq = 0;
  #prefix = randomUUID().slice(0, 8);
  #removeHook: (() => void) | null = null;
  #onDisconnect = () => this.#dropChannel();

  /** @internal use createRpcClient */
  constructor(broker: BrokerClient, options: RpcClientOptions) {
    this.#broker = broker;
    this.#timeoutMs = options.timeoutMs ?? 5_000;
  }

  /** Requests waiting for a reply. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /** @internal */
  async start(): Promise<void> {
    this.#broker.on('disconnect', this.#onDisconnect);
    this.#removeHook = await this.#broker.addConnectHook((model) => this.#openChannel(model));
  }

  async #openChannel(model: ChannelModel): Promise<void> {
    if (this.#closed) return;
    const ch = await model.createConfirmChannel();
    ch.on('error', () => {}); // reported by the broker client's connection listener
    ch.on('close', () => {
      if (this.#channel === ch) this.#dropChannel();
    });
    ch.on('return', (msg: ConsumeMessage) => {
      const id = msg.properties.correlationId;
      const p = id ? this.#pending.get(id) : undefined;
      if (p && id) this.#settle(id, () => p.reject(new UnroutableError(p.queue)));
    });
    await ch.consume(REPLY_TO, (msg) => msg && this.#onReply(msg), { noAck: true });
    this.#channel = ch;
    for (const w of this.#channelWaiters.splice(0)) w(ch);
  }

  #dropChannel(): void {
    this.#channel = null;
    for (const [id, p] of this.#pending) this.#settle(id, () => p.reject(p.errors.disconnected));
  }

  #onReply(msg: ConsumeMessage): void {
    const id = msg.properties.correlationId;
    const p = id ? this.#pending.get(id) : undefined;
    if (!p || !id) return; // late reply after a timeout: nobody waits for it
    const asError = parseMessage(ErrorMessageSchema, msg.content);
    if (asError.ok) {
      this.#settle(id, () => p.reject(new RpcRemoteError(p.queue, asError.value.code, asError.value.message)));
      return;
    }
    const parsed = parseMessage(p.schema, msg.content);
    this.#settle(id, () => (parsed.ok ? p.resolve(parsed.value) : p.reject(new RpcBadReplyError(p.queue, parsed.reason))));
  }

  #settle(id: string, fn: () => void): void {
    const p = this.#pending.get(id);
    if (!p) return;
    this.#pending.delete(id);
    clearTimeout(p.timer);
    fn();
  }

  /**
   * Sends `message` to `queue` and resolves with the reply validated by `replySchema`.
   * Rejects with RpcTimeoutError, RpcRemoteError (the responder sent an ErrorMessage),
   * RpcBadReplyError, UnroutableError (no such queue), RpcDisconnectedError or RpcClosedError.
   * @example const status = await rpc.request(SCHEDULER_QUEUE, query, StatusSchema, { timeoutMs: 1000 });
   */
  request<T>(queue: string, message: unknown, replySchema: z.ZodType<T>, options: RequestOptions = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
    const errors = { timeout: new RpcTimeoutError(queue, timeoutMs), closed: new RpcClosedError(queue), disconnected: new RpcDisconnectedError(queue) };
    if (this.#closed) return Promise.reject(errors.closed);
    const correlationId = `${this.#prefix}-${++this.#seq}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => this.#settle(correlationId, () => reject(errors.timeout)), timeoutMs);
      this.#pending.set(correlationId, { queue, schema: replySchema as z.ZodType<unknown>, resolve: resolve as (v: unknown) => void, reject, timer, errors });
      void this.#send(queue, message, correlationId, options).catch((err: Error) => this.#settle(correlationId, () => reject(err)));
    });
  }

  async #send(queue: string, message: unknown, correlationId: string, options: RequestOptions): Promise<void> {
    const ch = this.#channel ?? (await new Promise<ConfirmChannel>((resolve) => this.#channelWaiters.push(resolve)));
    if (!this.#pending.has(correlationId)) return; // timed out or closed while waiting for a channel
    const body = Buffer.from(JSON.stringify(message));
    await new Promise<void>((resolve, reject) => {
      try {
        ch.publish(
          '',
          queue,
          body,
          {
            replyTo: REPLY_TO,
            correlationId,
            mandatory: true,
            contentType: 'application/json',
            headers: injectTraceHeaders({ ...(options.headers ?? {}) }),
          },
          (err: unknown) => (err ? reject(new PublishError(queue, err)) : resolve()),
        );
      } catch (err) {
        reject(new PublishError(queue, err));
      }
    });
  }

  /** Rejects every pending request with RpcClosedError and releases the channel. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const [id, p] of this.#pending) this.#settle(id, () => p.reject(p.errors.closed));
    this.#broker.off('disconnect', this.#onDisconnect);
    this.#removeHook?.();
    const ch = this.#channel;
    this.#channel = null;
    if (ch) await ch.close().catch(() => {});
  }
}

/** Opens an RPC client on `broker` (its channel comes back after every reconnect). */
export async function createRpcClient(broker: BrokerClient, options: RpcClientOptions = {}): Promise<RpcClient> {
  const client = new RpcClient(broker, options);
  await client.start();
  return client;
}

/**
 * Answers requests arriving on `queue`: validates each with `requestSchema`, calls `handler`,
 * and sends its result to the request's replyTo with the same correlation id. A throwing
 * handler answers a typed ErrorMessage (code `internal`, or a HandlerError's code).
 */
export function serveRpc<Req, Res>(
  broker: BrokerClient,
  queue: string,
  requestSchema: z.ZodType<Req>,
  handler: (request: Req, meta: DeliveryMeta) => Res | Promise<Res>,
  options: ConsumeOptions = {},
): Promise<ConsumerHandle> {
  return broker.consume(
    queue,
    requestSchema,
    async (request, meta) => {
      const reply = await handler(request, meta);
      if (!meta.replyTo) return; // fire-and-forget sender
      await broker.publish(meta.replyTo, reply, { correlationId: meta.correlationId, mandatory: false });
    },
    options,
  );
}
