/**
 * Trace context crosses the broker: publish() injects it into the AMQP headers, consume() runs
 * the handler inside it. No OpenTelemetry SDK is installed, so the test registers the two
 * pieces an SDK would (a W3C `traceparent` propagator and an AsyncLocalStorage context manager),
 * written here in a few lines each, and removes them afterwards.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import {
  context,
  propagation,
  trace,
  ROOT_CONTEXT,
  TraceFlags,
  type Context,
  type ContextManager,
  type TextMapGetter,
  type TextMapPropagator,
  type TextMapSetter,
} from '@opentelemetry/api';
import { connectBroker, type BrokerClient } from '../../broker/connection.ts';
import { VerifyResultSchema, type VerifyResult } from '../../protocol/messages.ts';
import { deviceQueue, DEAD_QUEUE } from '../../broker/topology.ts';
import { extractTraceContext, injectTraceHeaders } from '../../broker/trace-context.ts';

const AMQP_URL = process.env.WISP_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

class AlsContextManager implements ContextManager {
  #als = new AsyncLocalStorage<Context>();
  active(): Context {
    return this.#als.getStore() ?? ROOT_CONTEXT;
  }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(ctx: Context, fn: F, thisArg?: ThisParameterType<F>, ...args: A): ReturnType<F> {
    return this.#als.run(ctx, () => fn.call(thisArg, ...args));
  }
  bind<T>(_ctx: Context, target: T): T {
    return target;
  }
  enable(): this {
    return this;
  }
  disable(): this {
    this.#als.disable();
    return this;
  }
}

class TraceparentPropagator implements TextMapPropagator {
  inject(ctx: Context, carrier: unknown, setter: TextMapSetter): void {
    const sc = trace.getSpanContext(ctx);
    if (sc) setter.set(carrier, 'traceparent', `00-${sc.traceId}-${sc.spanId}-0${sc.traceFlags.toString(16)}`);
  }
  extract(ctx: Context, carrier: unknown, getter: TextMapGetter): Context {
    const header = getter.get(carrier, 'traceparent');
    const m = typeof header === 'string' ? /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(header) : null;
    if (!m) return ctx;
    return trace.setSpanContext(ctx, { traceId: m[1], spanId: m[2], traceFlags: Number.parseInt(m[3], 16), isRemote: true });
  }
  fields(): string[] {
    return ['traceparent'];
  }
}

describe('broker/trace-context (integration)', () => {
  const run = randomUUID().slice(0, 8);
  const q = deviceQueue(`test-${run}-trace`);
  let broker: BrokerClient;

  before(async () => {
    broker = await connectBroker(AMQP_URL, { connectionName: `wisp-test-trace-${run}`, deadLetterQueue: `${DEAD_QUEUE}.test-trace-${run}` });
  });

  after(async () => {
    context.disable();
    propagation.disable();
    await broker?.deleteQueue(q).catch(() => {});
    await broker?.deleteQueue(`${DEAD_QUEUE}.test-trace-${run}`).catch(() => {});
    await broker?.close();
  });

  it('is a no-op without an OpenTelemetry SDK: headers untouched, root context back', () => {
    expect(injectTraceHeaders({ a: 1 })).to.deep.equal({ a: 1 });
    expect(extractTraceContext({ traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' })).to.equal(ROOT_CONTEXT);
  });

  it('carries the publisher trace into the consumer handler, across awaits', async () => {
    context.setGlobalContextManager(new AlsContextManager());
    propagation.setGlobalPropagator(new TraceparentPropagator());
    const sent = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: TraceFlags.SAMPLED };

    let resolveSeen!: (v: { traceId?: string; parentSpanId?: string; header: unknown }) => void;
    const seen = new Promise<{ traceId?: string; parentSpanId?: string; header: unknown }>((r) => (resolveSeen = r));
    const handle = await broker.consume(q, VerifyResultSchema, async (_msg, meta) => {
      await new Promise((r) => setTimeout(r, 5)); // the context must survive an await inside the handler
      const sc = trace.getSpanContext(context.active());
      resolveSeen({ traceId: sc?.traceId, parentSpanId: sc?.spanId, header: meta.headers.traceparent });
    });
    const msg: VerifyResult = {
      v: 1,
      type: 'result',
      sessionId: 's',
      round: 0,
      accepted: 0,
      token: 1,
      verified: 0,
      committedLength: 1,
      queueMs: 0,
      verifyMs: 0,
      batchSize: 1,
      workerId: 'w',
    };
    await context.with(trace.setSpanContext(ROOT_CONTEXT, sent), () => broker.publish(q, msg));
    const r = await seen;
    expect(r.header).to.equal(`00-${sent.traceId}-${sent.spanId}-01`);
    expect(r.traceId).to.equal(sent.traceId);
    expect(r.parentSpanId).to.equal(sent.spanId);
    await handle.cancel();
  });
});
