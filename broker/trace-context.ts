/**
 * The one place where trace context crosses AMQP headers. Uses the global OpenTelemetry
 * propagator: without an SDK it is a no-op (headers untouched, ROOT_CONTEXT back), so tracing
 * costs nothing when off; with the SDK's W3C propagator it writes/reads `traceparent`.
 */
import { context, propagation, ROOT_CONTEXT, type Context, type TextMapGetter } from '@opentelemetry/api';

/** AMQP header values may arrive as Buffers (long strings) or other field types. */
const amqpHeaderGetter: TextMapGetter<Record<string, unknown>> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => {
    const value = carrier[key];
    if (typeof value === 'string') return value;
    if (Buffer.isBuffer(value)) return value.toString('utf8');
    return undefined;
  },
};

/**
 * Writes the active trace context into `headers` (mutated and returned).
 * @example publishOptions.headers = injectTraceHeaders({ ...headers });
 */
export function injectTraceHeaders(headers: Record<string, unknown>, ctx: Context = context.active()): Record<string, unknown> {
  propagation.inject(ctx, headers);
  return headers;
}

/** Reads a trace context out of received headers; ROOT_CONTEXT when there is none. */
export function extractTraceContext(headers: Record<string, unknown> | undefined): Context {
  if (!headers) return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, headers, amqpHeaderGetter);
}

/** Runs `fn` inside the trace context carried by `headers` (the consumer side of a hop). */
export function withTraceContext<T>(headers: Record<string, unknown> | undefined, fn: () => T): T {
  return context.with(extractTraceContext(headers), fn);
}
