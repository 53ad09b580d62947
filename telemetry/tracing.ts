/**
 * The OpenTelemetry SDK for a wisp process: a tracer provider per role (each its own service,
 * `wisp-scheduler`, `wisp-verifier`, `wisp-edge`, so `wisp up` shows three services too), OTLP
 * export over HTTP (protobuf by default, JSON on request) to OTEL_EXPORTER_OTLP_ENDPOINT, the
 * W3C trace-context propagator the broker uses, and the amqplib and ioredis instrumentations.
 *
 * Imported only when tracing is on (telemetry/register.ts, or a role whose config asks for it),
 * so a process without tracing never loads the SDK. The instrumentations only work when the
 * SDK starts before amqplib and ioredis are imported (docs/operations.md, "Tracing"): register.ts does that.
 */
import { register as registerLoaderHook } from 'node:module';
import { readFileSync } from 'node:fs';
import { context, propagation, SpanKind, trace, type Attributes, type Context, type Link } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter as OtlpJsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as OtlpProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { AmqplibInstrumentation } from '@opentelemetry/instrumentation-amqplib';
import { IORedisInstrumentation } from '@opentelemetry/instrumentation-ioredis';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, NodeTracerProvider, ParentBasedSampler, SamplingDecision, type Sampler, type SamplingResult, type SpanExporter } from '@opentelemetry/sdk-trace-node';
import { installTracers, type WispRole } from './spans.ts';
import { serviceNameFor } from './tracing-switch.ts';
import { WispError } from '../common/errors.ts';

type Env = Readonly<Record<string, string | undefined>>;

/** Tracing could not start as configured. */
export class TracingConfigError extends WispError {
  constructor(message: string) {
    super('tracing_config', message);
  }
}

export type OtlpProtocol = 'http/protobuf' | 'http/json';

export interface TracingOptions {
  /** Service of spans no role owns (the instrumentations'): see processServiceName(). */
  serviceName: string;
  /** Patch amqplib and ioredis (only effective before they are imported). Default true. */
  instrument?: boolean;
  env?: Env;
}

export interface TracingHandle {
  readonly serviceName: string;
  readonly protocol: OtlpProtocol;
  /** Whether the amqplib/ioredis instrumentations were registered. */
  readonly instrumented: boolean;
  flush(): Promise<void>;
  shutdown(): Promise<void>;
}

let current: TracingHandle | null = null;

/** The running SDK, or null. */
export function activeTracing(): TracingHandle | null {
  return current;
}

/** OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf (the spec's default). */
export function otlpProtocol(env: Env = process.env): OtlpProtocol {
  const raw = (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL || 'http/protobuf').trim();
  if (raw === 'http/protobuf' || raw === 'http/json') return raw;
  throw new TracingConfigError(
    `OTLP protocol "${raw}" is not supported: use http/protobuf (port 4318) or http/json (from OTEL_EXPORTER_OTLP_${env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ? 'TRACES_' : ''}PROTOCOL)`,
  );
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

/**
 * Root spans of messages that belong to no session (worker heartbeats, status reports, the
 * batch hop itself) would each make a trace of one span: not worth exporting. Everything else
 * follows its parent's decision (ParentBased), so a session's trace is kept whole.
 */
class DropLoneMessagingRoots implements Sampler {
  shouldSample(_ctx: Context, _traceId: string, _name: string, kind: SpanKind, _attrs: Attributes, _links: Link[]): SamplingResult {
    return { decision: kind === SpanKind.PRODUCER || kind === SpanKind.CONSUMER ? SamplingDecision.NOT_RECORD : SamplingDecision.RECORD_AND_SAMPLED };
  }
  toString(): string {
    return 'DropLoneMessagingRoots';
  }
}

function makeExporter(protocol: OtlpProtocol): SpanExporter {
  // Both read OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT/HEADERS/TIMEOUT themselves (default http://localhost:4318).
  return protocol === 'http/json' ? new OtlpJsonExporter() : new OtlpProtoExporter();
}

/**
 * Starts the SDK (idempotent: a second call returns the running one). Registers the global
 * provider, context manager and W3C propagator, installs the role tracers telemetry/spans.ts
 * uses, and (with `instrument`) the amqplib and ioredis instrumentations.
 * @throws TracingConfigError on an unsupported OTLP protocol.
 */
export function startTracing(opts: TracingOptions): TracingHandle {
  if (current) return current;
  const env = opts.env ?? process.env;
  const protocol = otlpProtocol(env);
  const version = packageVersion();
  // OTEL_TRACES_SAMPLER, when set, is honoured by the SDK itself.
  const sampler = env.OTEL_TRACES_SAMPLER ? undefined : new ParentBasedSampler({ root: new DropLoneMessagingRoots() });
  const newProvider = (serviceName: string) =>
    new NodeTracerProvider({
      resource: resourceFromAttributes({ 'service.name': serviceName, 'service.version': version, 'service.namespace': 'wisp', 'process.pid': process.pid }),
      spanProcessors: [new BatchSpanProcessor(makeExporter(protocol))],
      ...(sampler ? { sampler } : {}),
    });

  const main = newProvider(opts.serviceName);
  main.register({ propagator: new W3CTraceContextPropagator() });
  const providers = new Map<string, NodeTracerProvider>([[opts.serviceName, main]]);
  const providerFor = (role: WispRole): NodeTracerProvider => {
    const name = serviceNameFor(role, env);
    let p = providers.get(name);
    if (!p) {
      p = newProvider(name);
      providers.set(name, p);
    }
    return p;
  };

  let instrumented = false;
  let unregister: (() => void) | null = null;
  if (opts.instrument !== false) {
    // ESM imports of these (CommonJS) packages go through import-in-the-middle; their inner
    // require()s through require-in-the-middle. Only these two are intercepted.
    registerLoaderHook('@opentelemetry/instrumentation/hook.mjs', import.meta.url, { data: { include: ['amqplib', 'ioredis'] } });
    unregister = registerInstrumentations({
      tracerProvider: main,
      instrumentations: [new AmqplibInstrumentation(), new IORedisInstrumentation({ requireParentSpan: true })],
    });
    instrumented = true;
  }

  const tracers = new Map<WispRole, ReturnType<NodeTracerProvider['getTracer']>>();
  installTracers({
    tracerFor: (role) => {
      let t = tracers.get(role);
      if (!t) {
        t = providerFor(role).getTracer('wisp', version);
        tracers.set(role, t);
      }
      return t;
    },
    flush: async () => {
      await Promise.all([...providers.values()].map((p) => p.forceFlush()));
    },
  });

  const handle: TracingHandle = {
    serviceName: opts.serviceName,
    protocol,
    instrumented,
    flush: async () => {
      await Promise.all([...providers.values()].map((p) => p.forceFlush()));
    },
    shutdown: async () => {
      installTracers(null);
      unregister?.();
      await Promise.all([...providers.values()].map((p) => p.shutdown().catch(() => {})));
      trace.disable();
      context.disable();
      propagation.disable();
      current = null;
    },
  };
  current = handle;
  return handle;
}

/** Flushes and stops the SDK, if running. */
export async function shutdownTracing(): Promise<void> {
  await current?.shutdown();
}
