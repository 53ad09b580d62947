/**
 * The narrow view of the broker that the roles (actors/) use: publish, consume, dead-letter,
 * declare their own queue, close. Types only; BrokerClient (connection.ts) implements it and
 * tapBroker (tap.ts) wraps it. Roles are typed against this interface rather than the class,
 * so they do not depend on how connections, channels and recovery are managed.
 */
import type { z } from 'zod';

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

/** What a role may do with the broker. */
export interface BrokerTransport {
  /**
   * Publishes `message` as JSON to `queue` and resolves once the broker has confirmed it
   * (waiting out a reconnect up to the client's publish timeout).
   */
  publish(queue: string, message: unknown, options?: PublishOptions): Promise<void>;
  /**
   * Consumes `queue` with manual acks: each body is size-checked and validated with `schema`;
   * a refused body or a throwing handler (HandlerError for a specific code) is dead-lettered
   * and its sender told. Comes back after every reconnect.
   */
  consume<T>(queue: string, schema: z.ZodType<T>, handler: MessageHandler<T>, options?: ConsumeOptions): Promise<ConsumerHandle>;
  /** Dead-letters a validated message the role's own logic refused, with a one-line `reason`. */
  deadLetter(fromQueue: string, message: unknown, reason: string): Promise<void>;
  /** Declares a queue the role owns, now and at every reconnect. */
  declareQueue(queue: string): Promise<void>;
  /** Deletes a queue the role owns (and stops declaring it). */
  deleteQueue(queue: string): Promise<void>;
  /** Waits for running handlers (up to `graceMs`), then closes. */
  close(graceMs?: number): Promise<void>;
}
