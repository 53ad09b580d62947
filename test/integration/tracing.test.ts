/**
 * One session through a scheduler, a verifier worker and an edge device running as three
 * separate processes (`node bin/wisp.js scheduler|verifier|edge`), each exporting OTLP/HTTP
 * (the default protobuf encoding) to a receiver inside this test: the session is one trace
 * holding spans of all three services, linked parent to child as telemetry/spans.ts describes,
 * and the verifier's batch spans link to the rounds they served. The amqplib and ioredis
 * instrumentations run too (the SDK starts before they load, in bin/wisp.js).
 */
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import { connectBroker, type BrokerClient } from '../../broker/connection.ts';
import { deviceQueue, devicePromptQueue, workerQueue } from '../../broker/topology.ts';
import { WispClient, type ClientResult } from '../../actors/client.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { ATTR, SPAN } from '../../telemetry/spans.ts';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.ts';
import { startRoleProcess, type RoleProcess } from '../helpers/processes.ts';
import { AMQP_URL, REDIS_URL, purgeSharedQueues } from '../helpers/system.ts';

describe('tracing across processes (integration)', function () {
  this.timeout(180_000);
  const run = randomUUID().slice(0, 8);
  const workerId = `h7w-${run}`;
  const fleetId = `h7e-${run}`;
  const deviceId = `${fleetId}-0`;
  let rx: OtlpReceiver;
  let broker: BrokerClient;
  let client: WispClient;
  const roles: RoleProcess[] = [];

  before(async () => {
    rx = await startOtlpReceiver();
    await ensureModelPair('tiny'); // forged once here, not raced by the role processes
    broker = await connectBroker(AMQP_URL, { connectionName: `test-tracing-${run}` });
    await purgeSharedQueues(broker);
    const env: Record<string, string> = {
      OTEL_EXPORTER_OTLP_ENDPOINT: rx.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_SERVICE_NAME: '',
      OTEL_TRACES_SAMPLER: '',
      WISP_TRACING: '',
      WISP_AMQP_URL: AMQP_URL,
      WISP_REDIS_URL: REDIS_URL,
      WISP_REDIS_PREFIX: `wisp-test-${run}:`,
      WISP_LOG_LEVEL: 'warn',
      WISP_PRETTY_LOGS: 'false',
      WISP_TIME_SCALE: '0',
      WISP_MODEL_PRESET: 'tiny',
      WISP_MODEL_DIR: '',
      WISP_THREADS: '1',
      WISP_DEVICE_PROFILE: 'raspberry-pi-5',
      WISP_HEARTBEAT_MS: '200',
      WISP_HEARTBEAT_TTL_MS: '3000',
    };
    roles.push(await startRoleProcess('scheduler', ['scheduler'], env));
    roles.push(await startRoleProcess('verifier', ['verifier', '--worker-id', workerId], env));
    roles.push(await startRoleProcess('edge', ['edge', '--devices', '1', '--fleet-id', fleetId], env));
    await Promise.all(roles.map((r) => r.ready(90_000)));
    client = new WispClient(broker);
    await client.start();
  });

  after(async () => {
    await client?.close();
    for (const r of roles.reverse()) await r.stop();
    for (const q of [workerQueue(workerId), deviceQueue(deviceId), devicePromptQueue(deviceId)]) await broker?.deleteQueue(q).catch(() => {});
    await broker?.close();
    await rx?.close();
  });

  /** The nearest ancestor that is one of ours (`wisp.*`), skipping instrumentation spans between. */
  function wispParent(span: ReceivedSpan, byId: Map<string, ReceivedSpan>): ReceivedSpan | undefined {
    let p = byId.get(span.parentSpanId);
    while (p && !p.name.startsWith('wisp.')) p = byId.get(p.parentSpanId);
    return p;
  }

  it('one session is one trace with spans of scheduler, verifier and edge, correctly linked', async () => {
    const result: ClientResult = await client.submit({ prompt: 'once upon a time', maxNewTokens: 12, deviceId }, 60_000);
    expect(result.error, `${JSON.stringify(result.error)}\n${roles.map((r) => `--- ${r.name}\n${r.stderr().slice(-3000)}`).join('\n')}`).to.equal(null);
    expect(result.tokens.length).to.be.greaterThan(0);
    const rounds = result.stats!.rounds; // verify rounds; round 0 is the open
    const sessionId = result.sessionId!;

    // Wait until every process has exported its part of this session.
    const sessionSpan = () => rx.spans.find((s) => s.name === SPAN.session && s.attributes[ATTR.sessionId] === sessionId);
    await rx.waitFor(
      (spans) => {
        const root = sessionSpan();
        if (!root) return false;
        const inTrace = spans.filter((s) => s.traceId === root.traceId);
        const members = inTrace.filter((s) => s.name === SPAN.verify || s.name === SPAN.prefill);
        const ids = new Set(spans.map((s) => s.spanId));
        return (
          inTrace.filter((s) => s.name === SPAN.queue).length === rounds + 1 &&
          members.length === rounds + 1 &&
          members.every((m) => m.links.every((l) => ids.has(l.spanId))) // their batch spans too
        );
      },
      30_000,
      `the spans of session ${sessionId}`,
    );
    const root = sessionSpan()!;
    const trace = rx.spans.filter((s) => s.traceId === root.traceId);
    const byId = new Map(rx.spans.map((s) => [s.spanId, s]));
    const named = (name: string) => trace.filter((s) => s.name === name);

    // The session: the root of its trace, on the edge device.
    expect(root.parentSpanId).to.equal('');
    expect(root.service).to.equal('wisp-edge');
    expect(root.attributes).to.include({ [ATTR.deviceId]: deviceId, [ATTR.generatedTokens]: result.tokens.length, [ATTR.rounds]: rounds });
    expect(new Set(trace.map((s) => s.service))).to.include.members(['wisp-edge', 'wisp-scheduler', 'wisp-verifier']);

    // One round span per round (0 = the open), children of the session.
    const roundSpans = named(SPAN.round);
    expect(roundSpans.map((s) => s.attributes[ATTR.round]).sort((a, b) => Number(a) - Number(b))).to.deep.equal(Array.from({ length: rounds + 1 }, (_, i) => i));
    const roundOf = new Map(roundSpans.map((s) => [s.attributes[ATTR.round] as number, s]));
    for (const r of roundSpans) {
      expect(r.parentSpanId, `round ${r.attributes[ATTR.round]}`).to.equal(root.spanId);
      expect(r.service).to.equal('wisp-edge');
    }

    // Drafting: one child of each verify round, on the device.
    const drafts = named(SPAN.draft);
    expect(drafts).to.have.length(rounds);
    for (const d of drafts) {
      const parent = byId.get(d.parentSpanId)!;
      expect(parent.name).to.equal(SPAN.round);
      expect(parent.attributes[ATTR.round]).to.be.greaterThan(0);
      expect(d.service).to.equal('wisp-edge');
    }

    // Queueing (scheduler) and verification (verifier): children of their round, across the broker.
    for (const [name, service] of [
      [SPAN.queue, 'wisp-scheduler'],
      [SPAN.prefill, 'wisp-verifier'],
      [SPAN.verify, 'wisp-verifier'],
    ] as const) {
      for (const s of named(name)) {
        expect(s.service, name).to.equal(service);
        const round = s.attributes[ATTR.round] as number;
        expect(wispParent(s, byId)?.spanId, `${name} of round ${round}`).to.equal(roundOf.get(round)!.spanId);
      }
    }
    expect(named(SPAN.prefill)).to.have.length(1);
    expect(named(SPAN.prefill)[0].attributes[ATTR.round]).to.equal(0);
    expect(named(SPAN.queue).every((q) => q.attributes[ATTR.outcome] === 'dispatched' && typeof q.attributes[ATTR.slackMs] === 'number')).to.equal(true);
    // Drafted and accepted tokens on the verify spans add up to the session's.
    const verifies = named(SPAN.verify);
    expect(verifies.reduce((a, s) => a + Number(s.attributes[ATTR.accepted]), 0)).to.equal(result.stats!.accepted);

    // Each member span links to its batch; the batch (a trace of its own) links back to the round.
    for (const v of [...verifies, ...named(SPAN.prefill)]) {
      expect(v.links).to.have.length(1);
      const batch = byId.get(v.links[0].spanId);
      expect(batch?.name).to.equal(SPAN.batch);
      expect(batch!.traceId).to.not.equal(root.traceId);
      expect(batch!.parentSpanId).to.equal('');
      // The link names the request as it reached the scheduler: its round, or (amqplib
      // instrumentation on) the publish span of its message, a child of the round.
      const round = roundOf.get(v.attributes[ATTR.round] as number)!;
      const served = batch!.links.map((l) => byId.get(l.spanId)).map((t) => (t && t.name.startsWith('wisp.') ? t : t && wispParent(t, byId)));
      expect(served.map((t) => t?.spanId)).to.include(round.spanId);
      expect(batch!.attributes[ATTR.workerId]).to.equal(workerId);
      expect(batch!.attributes[ATTR.predictedMs]).to.be.a('number');
      expect(batch!.attributes[ATTR.actualMs]).to.be.a('number');
    }

    // The library instrumentations worked in every process (bin/wisp.js starts the SDK first).
    const scopes = new Set(trace.map((s) => `${s.service} ${s.scope}`));
    expect(scopes).to.include('wisp-edge @opentelemetry/instrumentation-amqplib');
    expect(scopes).to.include('wisp-scheduler @opentelemetry/instrumentation-amqplib');
    expect(scopes).to.include('wisp-verifier @opentelemetry/instrumentation-ioredis');
    for (const s of trace) expect(s.endNs >= s.startNs, `${s.name} ends after it starts`).to.equal(true);
    expect(rx.contentTypes).to.include('application/x-protobuf');
  });
});
