/**
 * The spans wisp records, their names and attribute names, in one place. Actors call these
 * helpers; the OpenTelemetry SDK (telemetry/tracing.ts) installs tracers only when tracing is
 * on. Off, every helper returns the shared NOOP handle without touching the OpenTelemetry API
 * (one branch per call), so tracing off costs nothing measurable.
 *
 * One session is one trace across processes:
 *
 *   wisp.session (edge; root of the session's trace)
 *   ├─ wisp.round round=0 (edge: SessionOpen → first token)
 *   │   ├─ wisp.queue (scheduler: arrival → batch dispatched)
 *   │   └─ wisp.prefill (verifier)
 *   └─ wisp.round round=n (edge: drafting → result received)
 *       ├─ wisp.draft (edge)
 *       ├─ wisp.queue (scheduler)
 *       └─ wisp.verify (verifier)
 *   wisp.batch (verifier; a trace of its own) ─ links → the wisp.round of every member
 *
 * The round's context crosses AMQP in the message headers (broker/trace-context.ts). A batch
 * carries one context per member in the ITEM_TRACE_HEADER header (one message, many sessions).
 */
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  TraceFlags,
  type Attributes,
  type Context,
  type Link,
  type Span,
  type TextMapGetter,
  type Tracer,
} from '@opentelemetry/api';

/** The process roles that record spans; each reports as its own service (`wisp-<role>`). */
export type WispRole = 'scheduler' | 'verifier' | 'edge' | 'client';

/** Span names. */
export const SPAN = {
  session: 'wisp.session',
  round: 'wisp.round',
  draft: 'wisp.draft',
  queue: 'wisp.queue',
  prefill: 'wisp.prefill',
  verify: 'wisp.verify',
  batch: 'wisp.batch',
} as const;

/** Attribute names (the `wisp.` namespace; units in the name). */
export const ATTR = {
  sessionId: 'wisp.session.id',
  requestId: 'wisp.request.id',
  deviceId: 'wisp.device.id',
  deviceProfile: 'wisp.device.profile',
  workerId: 'wisp.worker.id',
  policy: 'wisp.policy',
  draftModel: 'wisp.model.draft',
  targetModel: 'wisp.model.target',
  round: 'wisp.round',
  /** Rounds a session took. */
  rounds: 'wisp.rounds',
  attempt: 'wisp.attempt',
  promptTokens: 'wisp.tokens.prompt',
  maxNewTokens: 'wisp.tokens.max_new',
  generatedTokens: 'wisp.tokens.generated',
  drafted: 'wisp.tokens.drafted',
  verified: 'wisp.tokens.verified',
  accepted: 'wisp.tokens.accepted',
  /** Draft tokens the controller dropped (predicted rejections). */
  discarded: 'wisp.tokens.discarded',
  predictedAcceptance: 'wisp.controller.predicted_acceptance',
  contextTokens: 'wisp.tokens.context',
  draftMs: 'wisp.draft_ms',
  queueMs: 'wisp.queue_ms',
  verifyMs: 'wisp.verify_ms',
  /** Deadline of the request minus the time it was dispatched (negative: late). */
  slackMs: 'wisp.slack_ms',
  deadlineMs: 'wisp.deadline_ms',
  batchId: 'wisp.batch.id',
  batchSize: 'wisp.batch.size',
  batchTokens: 'wisp.batch.tokens',
  /** The estimator's prediction of the batch's model time, and what it took. */
  predictedMs: 'wisp.estimator.predicted_ms',
  actualMs: 'wisp.estimator.actual_ms',
  estimatorApe: 'wisp.estimator.ape',
  kvBytes: 'wisp.kv_cache.bytes',
  sessions: 'wisp.sessions',
  ttftMs: 'wisp.ttft_ms',
  tpotMs: 'wisp.tpot_ms',
  sloAttained: 'wisp.slo.attained',
  outcome: 'wisp.outcome',
  errorCode: 'wisp.error.code',
} as const;

/** AMQP header of a VerifyBatch: a JSON array with one `traceparent` (or "") per item. */
export const ITEM_TRACE_HEADER = 'x-wisp-item-traceparents';

/** Attribute values as callers hand them; undefined and null ones are left out. */
export type AttrInput = Record<string, string | number | boolean | string[] | number[] | undefined | null>;

/** One started span (or the no-op stand-in). */
export interface SpanHandle {
  /** The context with this span active (ROOT_CONTEXT for the no-op). */
  readonly ctx: Context;
  /** False for the no-op. */
  readonly recording: boolean;
  set(attrs: AttrInput): void;
  /** Marks the span failed; `code` goes to `wisp.error.code`. */
  fail(message: string, code?: string): void;
  /** Ends the span (once; later calls do nothing), after setting `attrs`. */
  end(attrs?: AttrInput): void;
  /** Runs `fn` with this span active (publishes inside carry it); the no-op just calls `fn`. */
  run<T>(fn: () => T): T;
}

/** Shared by every helper while tracing is off. */
export const NOOP_SPAN: SpanHandle = Object.freeze({
  ctx: ROOT_CONTEXT,
  recording: false,
  set() {},
  fail() {},
  end() {},
  run: <T>(fn: () => T): T => fn(),
});

interface Installed {
  tracerFor: (role: WispRole) => Tracer;
  flush: () => Promise<void>;
}

let installed: Installed | null = null;

/** Called by telemetry/tracing.ts when the SDK starts (null when it stops). */
export function installTracers(tracers: Installed | null): void {
  installed = tracers;
}

/** True while an SDK is installed and spans are recorded. */
export function tracingOn(): boolean {
  return installed !== null;
}

/** Exports the spans recorded so far (a role calls it when it stops); no-op when off. */
export async function flushTraces(): Promise<void> {
  await installed?.flush().catch(() => {});
}

function clean(attrs: AttrInput | undefined): Attributes {
  const out: Attributes = {};
  if (!attrs) return out;
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null && !(typeof v === 'number' && !Number.isFinite(v))) out[k] = v;
  return out;
}

class LiveSpan implements SpanHandle {
  readonly recording = true;
  #ended = false;
  readonly ctx: Context;
  constructor(readonly span: Span, parent: Context) {
    this.ctx = trace.setSpan(parent, span);
  }
  set(attrs: AttrInput): void {
    this.span.setAttributes(clean(attrs));
  }
  fail(message: string, code?: string): void {
    this.span.setStatus({ code: SpanStatusCode.ERROR, message });
    if (code) this.span.setAttribute(ATTR.errorCode, code);
  }
  end(attrs?: AttrInput): void {
    if (this.#ended) return;
    this.#ended = true;
    if (attrs) this.set(attrs);
    this.span.end();
  }
  run<T>(fn: () => T): T {
    return context.with(this.ctx, fn);
  }
}

export interface StartSpanOptions {
  /** Parent: a handle, a context, or (default) the active context. */
  parent?: SpanHandle | Context;
  /** Start a new trace (the parent, if any, becomes a link). */
  root?: boolean;
  /** Spans this one relates to without being their child (e.g. the requests a batch served). */
  links?: Array<{ ctx: Context; attrs?: AttrInput }>;
  kind?: SpanKind;
  attrs?: AttrInput;
}

function contextOf(parent: SpanHandle | Context | undefined): Context {
  if (parent === undefined) return context.active();
  return 'recording' in parent && 'ctx' in parent ? (parent as SpanHandle).ctx : (parent as Context);
}

/**
 * Starts a span for `role` (its service's tracer). The building block of the helpers below.
 * @example const s = startSpan('edge', SPAN.draft, { parent: round }); … s.end({ [ATTR.drafted]: 4 });
 */
export function startSpan(role: WispRole, name: string, opts: StartSpanOptions = {}): SpanHandle {
  if (installed === null) return NOOP_SPAN;
  const parentCtx = contextOf(opts.parent);
  const links: Link[] = [];
  // Links only to spans that are recorded somewhere (sampled); others would dangle.
  for (const l of opts.links ?? []) {
    const sc = trace.getSpanContext(l.ctx);
    if (sc && sc.traceFlags & TraceFlags.SAMPLED) links.push({ context: sc, attributes: clean(l.attrs) });
  }
  if (opts.root) {
    const sc = trace.getSpanContext(parentCtx);
    if (sc && sc.traceFlags & TraceFlags.SAMPLED && opts.parent !== undefined) links.push({ context: sc });
  }
  const span = installed.tracerFor(role).startSpan(
    name,
    { kind: opts.kind ?? SpanKind.INTERNAL, attributes: clean(opts.attrs), links, root: opts.root === true },
    parentCtx,
  );
  return new LiveSpan(span, opts.root ? ROOT_CONTEXT : parentCtx);
}

// ---- edge ----

/** The root span of one session on its edge device (the prompt's delivery, if traced, is linked). */
export function startSessionSpan(a: {
  sessionId: string;
  requestId: string;
  deviceId: string;
  deviceProfile?: string;
  draftModel?: string;
  policy?: string;
  promptTokens?: number;
  maxNewTokens?: number;
}): SpanHandle {
  if (installed === null) return NOOP_SPAN;
  const active = context.active();
  return startSpan('edge', SPAN.session, {
    parent: ROOT_CONTEXT,
    root: true,
    links: trace.getSpanContext(active) ? [{ ctx: active }] : [],
    kind: SpanKind.SERVER,
    attrs: {
      [ATTR.sessionId]: a.sessionId,
      [ATTR.requestId]: a.requestId,
      [ATTR.deviceId]: a.deviceId,
      [ATTR.deviceProfile]: a.deviceProfile,
      [ATTR.draftModel]: a.draftModel,
      [ATTR.policy]: a.policy,
      [ATTR.promptTokens]: a.promptTokens,
      [ATTR.maxNewTokens]: a.maxNewTokens,
    },
  });
}

/** One round of a session: round 0 is the open (prefill → first token), then draft+verify rounds. */
export function startRoundSpan(session: SpanHandle, round: number): SpanHandle {
  if (installed === null) return NOOP_SPAN;
  return startSpan('edge', SPAN.round, { parent: session, attrs: { [ATTR.round]: round } });
}

/** Drafting within a round, on the device. */
export function startDraftSpan(round: SpanHandle): SpanHandle {
  if (installed === null) return NOOP_SPAN;
  return startSpan('edge', SPAN.draft, { parent: round });
}

// ---- scheduler ----

/** A request waiting in the scheduler; the parent is the round context its message carried. */
export function startQueueSpan(a: { sessionId: string; round: number; kind: 'open' | 'verify'; draftTokens?: number }, parent: Context = context.active()): SpanHandle {
  if (installed === null) return NOOP_SPAN;
  return startSpan('scheduler', SPAN.queue, {
    parent,
    kind: SpanKind.CONSUMER,
    attrs: { [ATTR.sessionId]: a.sessionId, [ATTR.round]: a.round, [ATTR.drafted]: a.draftTokens },
  });
}

const TRACEPARENT_RE = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

/**
 * Headers for a VerifyBatch: one traceparent per item (the round each came from), so the
 * verifier can parent its per-request spans. Empty when tracing is off.
 */
export function itemTraceHeaders(itemContexts: ReadonlyArray<Context | null | undefined>): Record<string, string> {
  if (installed === null) return {};
  const list = itemContexts.map((ctx) => {
    if (!ctx) return '';
    const carrier: Record<string, string> = {};
    propagation.inject(ctx, carrier);
    return carrier.traceparent ?? '';
  });
  return list.some((t) => t !== '') ? { [ITEM_TRACE_HEADER]: JSON.stringify(list) } : {};
}

const stringGetter: TextMapGetter<Record<string, string>> = {
  keys: (c) => Object.keys(c),
  get: (c, k) => c[k],
};

/** Reads ITEM_TRACE_HEADER back: one context per item (ROOT_CONTEXT where none or malformed). */
export function itemContextsFrom(headers: Record<string, unknown> | undefined, count: number): Context[] {
  const out: Context[] = new Array(count).fill(ROOT_CONTEXT);
  if (installed === null || !headers) return out;
  let raw = headers[ITEM_TRACE_HEADER];
  if (Buffer.isBuffer(raw)) raw = raw.toString('utf8');
  if (typeof raw !== 'string' || raw.length > 100 * count + 16) return out;
  let list: unknown;
  try {
    list = JSON.parse(raw);
  } catch {
    return out;
  }
  if (!Array.isArray(list)) return out;
  for (let i = 0; i < Math.min(count, list.length); i++) {
    const tp = list[i];
    if (typeof tp === 'string' && TRACEPARENT_RE.test(tp)) out[i] = propagation.extract(ROOT_CONTEXT, { traceparent: tp }, stringGetter);
  }
  return out;
}

// ---- verifier ----

/** One VerifyBatch on a worker: a root span linked to the round of every member it served. */
export function startBatchSpan(a: { batchId: string; workerId: string; size: number; predictedMs: number }, itemContexts: readonly Context[], members: ReadonlyArray<{ sessionId: string; round: number }>): SpanHandle {
  if (installed === null) return NOOP_SPAN;
  return startSpan('verifier', SPAN.batch, {
    parent: ROOT_CONTEXT,
    root: true,
    // Not CONSUMER: the SDK's sampler drops lone messaging roots (telemetry/tracing.ts).
    kind: SpanKind.INTERNAL,
    links: itemContexts.map((ctx, i) => ({ ctx, attrs: { [ATTR.sessionId]: members[i]?.sessionId, [ATTR.round]: members[i]?.round } })),
    attrs: { [ATTR.batchId]: a.batchId, [ATTR.workerId]: a.workerId, [ATTR.batchSize]: a.size, [ATTR.predictedMs]: a.predictedMs },
  });
}

/** One member's prefill or verification inside a batch; child of the member's round, linked to the batch. */
export function startItemSpan(batch: SpanHandle, itemContext: Context, a: { kind: 'open' | 'verify'; sessionId: string; round: number; workerId: string; draftTokens?: number; verifyTokens?: number; contextTokens?: number }): SpanHandle {
  if (installed === null) return NOOP_SPAN;
  return startSpan('verifier', a.kind === 'open' ? SPAN.prefill : SPAN.verify, {
    parent: itemContext,
    links: [{ ctx: batch.ctx }],
    attrs: {
      [ATTR.sessionId]: a.sessionId,
      [ATTR.round]: a.round,
      [ATTR.workerId]: a.workerId,
      [ATTR.drafted]: a.draftTokens,
      [ATTR.verified]: a.verifyTokens,
      [ATTR.contextTokens]: a.contextTokens,
    },
  });
}

/** The trace id of the active span (for log lines), or undefined. */
export function activeTraceIds(): { traceId: string; spanId: string } | undefined {
  if (installed === null) return undefined;
  const sc = trace.getSpanContext(context.active());
  return sc ? { traceId: sc.traceId, spanId: sc.spanId } : undefined;
}
