/**
 * A broker client seen through a tap: what a role publishes and receives passes the tap first.
 * Tests inject faults with it (drop, duplicate, reroute); the overhead benchmark stamps times.
 */
import type { BrokerClient } from './connection.ts';

/** What a tap may do to a role's broker traffic (fault injection in tests, stamps in the overhead benchmark). */
export interface BrokerTap {
  /**
   * Sees every publish; returns the (queue, message) pairs to publish instead, in order
   * (e.g. the original twice for a duplicate). Returning nothing publishes the original.
   */
  publish?: (queue: string, message: unknown) => Array<[string, unknown]> | void;
  /** Sees every validated delivery before the role's handler does. */
  deliver?: (queue: string, message: unknown) => void;
}

/**
 * Wraps a broker client so `tap` sees (and may multiply) what the role publishes and receives;
 * everything else goes straight to the client. Pass it as `hooks.wrapBroker` to runUp.
 */
export function tapBroker(broker: BrokerClient, tap: BrokerTap): BrokerClient {
  const publish: BrokerClient['publish'] = async (queue, message, options) => {
    const out = tap.publish?.(queue, message) ?? [[queue, message]];
    // One after another, so copies reach the queue in the order the tap listed them.
    for (const [q, m] of out) await broker.publish(q, m, options);
  };
  const consume: BrokerClient['consume'] = (queue, schema, handler, options) =>
    broker.consume(queue, schema, (m, meta) => {
      tap.deliver?.(queue, m);
      return handler(m, meta);
    }, options);
  return new Proxy(broker, {
    get(target, prop) {
      if (prop === 'publish') return publish;
      if (prop === 'consume') return consume;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
