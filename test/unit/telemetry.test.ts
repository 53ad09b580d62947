/**
 * telemetry/: span helpers (no-op when off; parent/child links and the per-item batch header
 * when on, with an in-memory exporter), the tracing switch, metric series and the /metrics
 * endpoint, and log lines (trace ids mixed in, the human-readable formatter).
 */
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { context, propagation, ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-node';
import { createLogger, formatLogLine } from '../../telemetry/logger.ts';
import { MetricsEndpointError, openMetricsEndpoint, WispMetrics } from '../../telemetry/metrics.ts';
import {
  ATTR,
  installTracers,
  ITEM_TRACE_HEADER,
  itemContextsFrom,
  itemTraceHeaders,
  NOOP_SPAN,
  SPAN,
  startBatchSpan,
  startDraftSpan,
  startItemSpan,
  startQueueSpan,
  startRoundSpan,
  startSessionSpan,
  tracingOn,
} from '../../telemetry/spans.ts';
import { processServiceName, serviceNameFor, tracingRequested } from '../../telemetry/tracing-switch.ts';
import { otlpProtocol, TracingConfigError } from '../../telemetry/tracing.ts';

/** The value of one series line `name{labels} value` in exposition text (undefined when absent). */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('telemetry', () => {
  describe('spans, tracing off', () => {
    it('every helper returns the shared no-op and batch headers stay empty', () => {
      expect(tracingOn()).to.equal(false);
      const session = startSessionSpan({ sessionId: 's', requestId: 'r', deviceId: 'd' });
      expect(session).to.equal(NOOP_SPAN);
      expect(startRoundSpan(session, 1)).to.equal(NOOP_SPAN);
      expect(startQueueSpan({ sessionId: 's', round: 1, kind: 'verify' })).to.equal(NOOP_SPAN);
      expect(startBatchSpan({ batchId: 'b', workerId: 'w', size: 1, predictedMs: 1 }, [ROOT_CONTEXT], [{ sessionId: 's', round: 1 }])).to.equal(NOOP_SPAN);
      expect(itemTraceHeaders([ROOT_CONTEXT])).to.deep.equal({});
      expect(itemContextsFrom({ [ITEM_TRACE_HEADER]: '["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]' }, 1)).to.deep.equal([ROOT_CONTEXT]);
      expect(NOOP_SPAN.run(() => 42)).to.equal(42);
      NOOP_SPAN.end({ x: 1 }); // no effect, no throw
    });
  });

  describe('spans, tracing on (in-memory exporter)', () => {
    const exporter = new InMemorySpanExporter();
    const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    before(() => {
      provider.register({ propagator: new W3CTraceContextPropagator() });
      installTracers({ tracerFor: (role) => provider.getTracer(`test-${role}`), flush: () => provider.forceFlush() });
    });
    after(async () => {
      installTracers(null);
      await provider.shutdown();
      trace.disable();
      context.disable();
      propagation.disable();
    });

    const byName = (name: string): ReadableSpan[] => exporter.getFinishedSpans().filter((s) => s.name === name);
    const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;

    it('session → round → draft/queue/verify, across a header hop; the batch span links every member', () => {
      const session = startSessionSpan({ sessionId: 'dev-0.1', requestId: 'r1', deviceId: 'dev-0', promptTokens: 5 });
      const round = startRoundSpan(session, 1);
      const draft = startDraftSpan(round);
      draft.end({ [ATTR.drafted]: 4, [ATTR.discarded]: undefined });
      // The device publishes inside the round; the scheduler receives the headers.
      const headers: Record<string, string> = {};
      round.run(() => propagation.inject(context.active(), headers));
      const received = propagation.extract(ROOT_CONTEXT, headers);
      const queue = startQueueSpan({ sessionId: 'dev-0.1', round: 1, kind: 'verify', draftTokens: 4 }, received);
      queue.end({ [ATTR.slackMs]: 12.5 });
      // One batch message for two sessions: a traceparent per item.
      const other = startSessionSpan({ sessionId: 'dev-1.1', requestId: 'r2', deviceId: 'dev-1' });
      const otherRound = startRoundSpan(other, 3);
      const batchHeaders = itemTraceHeaders([received, otherRound.ctx, null]);
      expect(batchHeaders).to.have.property(ITEM_TRACE_HEADER);
      const items = itemContextsFrom(batchHeaders, 3);
      expect(items[2]).to.equal(ROOT_CONTEXT);
      const members = [
        { sessionId: 'dev-0.1', round: 1 },
        { sessionId: 'dev-1.1', round: 3 },
      ];
      const batch = startBatchSpan({ batchId: 'b1', workerId: 'w0', size: 2, predictedMs: 3 }, items.slice(0, 2), members);
      const verify = startItemSpan(batch, items[0], { kind: 'verify', sessionId: 'dev-0.1', round: 1, workerId: 'w0', draftTokens: 4, verifyTokens: 4 });
      const prefill = startItemSpan(batch, items[1], { kind: 'open', sessionId: 'dev-1.1', round: 3, workerId: 'w0' });
      verify.end({ [ATTR.accepted]: 2 });
      prefill.end();
      batch.end({ [ATTR.actualMs]: 2.5, [ATTR.estimatorApe]: 0.2 });
      round.end({ [ATTR.accepted]: 2 });
      otherRound.end();
      session.end();
      other.end();

      const [s] = byName(SPAN.session).filter((x) => x.attributes[ATTR.sessionId] === 'dev-0.1');
      const [r] = byName(SPAN.round).filter((x) => x.attributes[ATTR.round] === 1);
      const [d] = byName(SPAN.draft);
      const [q] = byName(SPAN.queue);
      const [v] = byName(SPAN.verify);
      const [p] = byName(SPAN.prefill);
      const [b] = byName(SPAN.batch);
      expect(parentOf(s)).to.equal(undefined);
      expect(parentOf(r)).to.equal(s.spanContext().spanId);
      expect(parentOf(d)).to.equal(r.spanContext().spanId);
      expect(parentOf(q)).to.equal(r.spanContext().spanId);
      expect(parentOf(v)).to.equal(r.spanContext().spanId);
      for (const x of [r, d, q, v]) expect(x.spanContext().traceId).to.equal(s.spanContext().traceId);
      expect(parentOf(p)).to.equal(otherRound.ctx && trace.getSpanContext(otherRound.ctx)!.spanId);
      // The batch is a trace of its own, linked to both rounds; each item links back to it.
      expect(parentOf(b)).to.equal(undefined);
      expect(b.spanContext().traceId).to.not.equal(s.spanContext().traceId);
      expect(b.links.map((l) => l.context.spanId)).to.deep.equal([r.spanContext().spanId, trace.getSpanContext(otherRound.ctx)!.spanId]);
      expect(b.links[0].attributes).to.deep.equal({ [ATTR.sessionId]: 'dev-0.1', [ATTR.round]: 1 });
      expect(v.links.map((l) => l.context.spanId)).to.deep.equal([b.spanContext().spanId]);
      // Attributes: undefined ones are left out; the rest are recorded.
      expect(d.attributes).to.deep.equal({ [ATTR.drafted]: 4 });
      expect(q.attributes).to.include({ [ATTR.slackMs]: 12.5, [ATTR.drafted]: 4 });
      expect(b.attributes).to.include({ [ATTR.predictedMs]: 3, [ATTR.actualMs]: 2.5, [ATTR.batchSize]: 2 });
      // Every role reports through its own tracer (a service each in the real SDK).
      expect(s.instrumentationScope.name).to.equal('test-edge');
      expect(q.instrumentationScope.name).to.equal('test-scheduler');
      expect(b.instrumentationScope.name).to.equal('test-verifier');
    });

    it('refuses malformed item headers quietly (root context for each bad entry)', () => {
      const good = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
      const ctxs = itemContextsFrom({ [ITEM_TRACE_HEADER]: Buffer.from(JSON.stringify([good, 'nope', 7])) }, 3);
      expect(trace.getSpanContext(ctxs[0])?.spanId).to.equal('b7ad6b7169203331');
      expect(ctxs[1]).to.equal(ROOT_CONTEXT);
      expect(ctxs[2]).to.equal(ROOT_CONTEXT);
      expect(itemContextsFrom({ [ITEM_TRACE_HEADER]: '{not json' }, 2)).to.deep.equal([ROOT_CONTEXT, ROOT_CONTEXT]);
    });

    it('log lines carry trace_id/span_id while a span is active, and not otherwise', () => {
      const lines: string[] = [];
      const sink = new Writable({
        write(chunk, _enc, cb) {
          lines.push(String(chunk));
          cb();
        },
      });
      const log = createLogger('edge', 'info', { destination: sink, pretty: false });
      const span = startSessionSpan({ sessionId: 's9', requestId: 'r9', deviceId: 'd9' });
      span.run(() => log.child({ sessionId: 's9' }).info('inside'));
      log.info('outside');
      span.end();
      const [inside, outside] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
      const sc = trace.getSpanContext(span.ctx)!;
      expect(inside).to.include({ msg: 'inside', sessionId: 's9', role: 'edge', trace_id: sc.traceId, span_id: sc.spanId });
      expect(outside).to.not.have.property('trace_id');
    });
  });

  describe('tracing switch', () => {
    it('turns on with WISP_TRACING or an OTLP endpoint; the standard off switches win', () => {
      expect(tracingRequested({})).to.equal(false);
      expect(tracingRequested({ WISP_TRACING: 'true' })).to.equal(true);
      expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318' })).to.equal(true);
      expect(tracingRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://jaeger:4318/v1/traces' })).to.equal(true);
      expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318', WISP_TRACING: 'false' })).to.equal(false);
      expect(tracingRequested({ WISP_TRACING: 'true', OTEL_SDK_DISABLED: 'true' })).to.equal(false);
      expect(tracingRequested({ WISP_TRACING: 'true', OTEL_TRACES_EXPORTER: 'none' })).to.equal(false);
      expect(tracingRequested({}, true)).to.equal(true);
      expect(tracingRequested({ WISP_TRACING: 'off' }, true)).to.equal(false);
    });

    it('names services per role; OTEL_SERVICE_NAME overrides', () => {
      const argv = (...a: string[]) => ['node', 'bin/wisp.js', ...a];
      expect(processServiceName(argv('edge', '--devices', '4'), {})).to.equal('wisp-edge');
      expect(processServiceName(argv('enqueue', 'hi'), {})).to.equal('wisp-client');
      expect(processServiceName(argv('up'), {})).to.equal('wisp-up');
      expect(processServiceName(argv(), {})).to.equal('wisp');
      expect(processServiceName(argv('verifier'), { OTEL_SERVICE_NAME: 'gpu-pool' })).to.equal('gpu-pool');
      expect(serviceNameFor('scheduler', {})).to.equal('wisp-scheduler');
    });

    it('speaks OTLP over HTTP (protobuf by default, JSON on request) and refuses gRPC with a clear error', () => {
      expect(otlpProtocol({})).to.equal('http/protobuf');
      expect(otlpProtocol({ OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' })).to.equal('http/json');
      expect(otlpProtocol({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/protobuf' })).to.equal('http/protobuf');
      expect(() => otlpProtocol({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' })).to.throw(TracingConfigError, 'OTLP protocol "grpc" is not supported: use http/protobuf (port 4318) or http/json (from OTEL_EXPORTER_OTLP_PROTOCOL)');
    });
  });

  describe('metrics', () => {
    it('edge: TTFT/TPOT, SLO attainment, goodput, acceptance overall and per position', async () => {
      const m = new WispMetrics({ processMetrics: false });
      const edge = m.edge();
      edge.sessionStarted();
      edge.sessionStarted();
      edge.roundVerified({ drafted: 4, verified: 4, accepted: 2 });
      edge.roundVerified({ drafted: 3, verified: 2, accepted: 2 });
      edge.sessionEnded({ ok: true, ttftMs: 120, tpotMs: 40, e2eMs: 900, tokens: 20, sloAttained: true, wastedDraftMs: 30 });
      edge.sessionEnded({ ok: true, ttftMs: 2_000, tpotMs: 300, e2eMs: 5_000, tokens: 10, sloAttained: false, wastedDraftMs: 0 });
      const t = await m.text();
      expect(sample(t, 'wisp_sessions_active')).to.equal(0);
      expect(sample(t, 'wisp_sessions_finished_total{outcome="ok"}')).to.equal(2);
      expect(sample(t, 'wisp_slo_attained_total')).to.equal(1);
      expect(sample(t, 'wisp_slo_attainment_ratio')).to.equal(0.5);
      expect(sample(t, 'wisp_goodput_tokens_total')).to.equal(20);
      expect(sample(t, 'wisp_generation_tokens_total')).to.equal(30);
      expect(sample(t, 'wisp_time_to_first_token_seconds_count')).to.equal(2);
      expect(sample(t, 'wisp_time_to_first_token_seconds_sum')).to.be.closeTo(2.12, 1e-9);
      expect(sample(t, 'wisp_time_per_output_token_seconds_bucket{le="0.04"}')).to.equal(1);
      expect(sample(t, 'wisp_spec_decode_num_drafts_total')).to.equal(2);
      expect(sample(t, 'wisp_spec_decode_num_draft_tokens_total')).to.equal(7);
      expect(sample(t, 'wisp_spec_decode_num_verified_tokens_total')).to.equal(6);
      expect(sample(t, 'wisp_spec_decode_num_accepted_tokens_total')).to.equal(4);
      expect(sample(t, 'wisp_spec_decode_acceptance_rate')).to.be.closeTo(4 / 7, 1e-9);
      expect(sample(t, 'wisp_spec_decode_accepted_by_position_total{position="0"}')).to.equal(2);
      expect(sample(t, 'wisp_spec_decode_accepted_by_position_total{position="1"}')).to.equal(2);
      expect(sample(t, 'wisp_spec_decode_accepted_by_position_total{position="2"}')).to.equal(undefined);
      expect(sample(t, 'wisp_spec_decode_verified_by_position_total{position="3"}')).to.equal(1);
      expect(sample(t, 'wisp_draft_wasted_seconds_total')).to.be.closeTo(0.03, 1e-9);
    });

    it('scheduler and verifier: queue depth, waits, slack, batch size/latency, estimator error, KV-cache bytes', async () => {
      const m = new WispMetrics({ processMetrics: false });
      let depth = 3;
      m.scheduler().observe({ queueDepth: () => depth, workers: () => 2 });
      m.scheduler().dispatched([
        { waitedMs: 4, slackMs: 20 },
        { waitedMs: 8, slackMs: -5 },
      ]);
      m.scheduler().refusedRequest('unknown_session');
      const v = m.verifier();
      const untrack = v.track('w0', () => ({ kvBytes: 4096, sessions: 2 }));
      v.batchExecuted({ workerId: 'w0', size: 2, tokens: 9, modelMs: 10, predictedMs: 12, prefillTokens: 0, verifyTokens: 9 });
      let t = await m.text();
      expect(sample(t, 'wisp_queue_depth')).to.equal(3);
      expect(sample(t, 'wisp_workers')).to.equal(2);
      expect(sample(t, 'wisp_batches_dispatched_total')).to.equal(1);
      expect(sample(t, 'wisp_queue_wait_seconds_count')).to.equal(2);
      expect(sample(t, 'wisp_dispatch_slack_seconds_bucket{le="0"}')).to.equal(1);
      expect(sample(t, 'wisp_requests_refused_total{code="unknown_session"}')).to.equal(1);
      expect(sample(t, 'wisp_batch_size_sum{worker="w0"}')).to.equal(2);
      expect(sample(t, 'wisp_batch_latency_seconds_sum{worker="w0"}')).to.be.closeTo(0.01, 1e-12);
      expect(sample(t, 'wisp_estimator_ape_sum{worker="w0"}')).to.be.closeTo(0.2, 1e-9);
      expect(sample(t, 'wisp_kv_cache_bytes{worker="w0"}')).to.equal(4096);
      expect(sample(t, 'wisp_kv_cache_sessions{worker="w0"}')).to.equal(2);
      depth = 0;
      untrack();
      t = await m.text();
      expect(sample(t, 'wisp_queue_depth')).to.equal(0);
      expect(sample(t, 'wisp_kv_cache_bytes{worker="w0"}')).to.equal(undefined);
    });

    it('serves /metrics over HTTP; one server per port for the roles of a process; a taken port is refused', async () => {
      const m = new WispMetrics();
      m.edge().sessionStarted();
      const a = await openMetricsEndpoint(m, '127.0.0.1', 0);
      try {
        const res = await fetch(a.url);
        expect(res.status).to.equal(200);
        expect(res.headers.get('content-type')).to.match(/^text\/plain; version=0\.0\.4/);
        const body = await res.text();
        expect(sample(body, 'wisp_sessions_active')).to.equal(1);
        expect(body).to.match(/^process_cpu_user_seconds_total /m);
        expect((await fetch(a.url.replace('/metrics', '/nope'))).status).to.equal(404);

        const fixed = a.port; // now taken by `a` (opened with port 0, so not shared)
        const err = await openMetricsEndpoint(m, '127.0.0.1', fixed).then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).to.be.instanceOf(MetricsEndpointError);
        expect((err as Error).message).to.equal(`cannot serve metrics on 127.0.0.1:${fixed}: EADDRINUSE`);
      } finally {
        await a.close();
      }
      // Two roles asking for the same fixed port share the server; it closes with the last one.
      const probe = await openMetricsEndpoint(m, '127.0.0.1', 0);
      const port = probe.port;
      await probe.close();
      const one = await openMetricsEndpoint(m, '127.0.0.1', port);
      const two = await openMetricsEndpoint(m, '127.0.0.1', port);
      await one.close();
      expect((await fetch(two.url)).status).to.equal(200);
      await two.close();
      expect(await fetch(two.url).then(() => 'open', () => 'closed')).to.equal('closed');
    });
  });

  describe('log lines for people', () => {
    it('formats a pino JSON line: time, level, role, message, then the fields', () => {
      const line = JSON.stringify({ level: 40, time: Date.UTC(2026, 0, 2, 3, 4, 5, 678), role: 'verifier', pid: 7, msg: 'batch failed', batchId: 'b1', err: { message: 'boom here' }, size: 3 });
      expect(formatLogLine(line)).to.equal('03:04:05.678 WARN  verifier: batch failed batchId=b1 err="boom here" size=3\n');
      expect(formatLogLine('not json')).to.equal('not json\n');
    });
  });
});
