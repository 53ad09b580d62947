/**
 * Fault 6, hostile input: property-based fuzzing (fast-check) of every queue a role consumes,
 * 10,000 generated or mutated messages per queue (WISP_FUZZ_COUNT to change), published raw
 * while good sessions run. Each message is one the wire schema refuses: mutations of valid
 * messages of every type the queue carries (fields deleted, retyped, out of range, over the
 * limits, ids with forbidden characters), random JSON, random bytes, truncated JSON, and bodies
 * over the 1 MiB size cap. Checked: every one reaches the dead-letter queue with a reason naming
 * the queue; every one whose body names a reachable sender (replyTo) gets a typed error there;
 * no role crashes; the good sessions produce exactly the target-only tokens.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { connect, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { z } from 'zod';
import {
  ClientInboxSchema,
  DeviceInboxSchema,
  ErrorMessageSchema,
  LIMITS,
  PROTOCOL_VERSION,
  PromptRequestSchema,
  SchedulerInboxSchema,
  VerifyBatchSchema,
  parseMessage,
  type ErrorMessage,
} from '../../protocol/messages.ts';
import { PROMPTS_QUEUE, QUEUE_HEADER, REASON_HEADER, SCHEDULER_QUEUE, clientQueue, deviceQueue, devicePromptQueue, workerQueue } from '../../broker/topology.ts';
import { TEST_PROMPTS, targetTokens } from '../helpers/system.ts';
import { ensureVhost, faultConfig, startFaultSystem, waitFor, type FaultSystem } from './helpers.ts';

const N = Number(process.env.WISP_FUZZ_COUNT ?? 10_000);
const OVERSIZED_PER_QUEUE = 3;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Valid messages of every type, the seeds of the mutations (ids are fake: no live session is hit). */
function templates(sink: string): Record<string, Record<string, Json>> {
  const slo = { ttftMs: 1_000, tpotMs: 100 };
  const sampling = { temperature: 0, topP: 1, seed: 0 };
  const open = {
    v: PROTOCOL_VERSION, type: 'open', sessionId: 'fz-s1', deviceId: 'fz-dev', requestId: 'fz-r1', draftModel: 'draft-1', mode: 'speculative',
    promptTokens: [1, 2, 3], maxNewTokens: 8, slo, sampling, replyTo: sink, sentAtMs: 1, rttMs: 10,
  };
  const verify = {
    v: PROTOCOL_VERSION, type: 'verify', sessionId: 'fz-s1', deviceId: 'fz-dev', round: 2, committedLength: 5, draftTokens: [4, 5],
    predictedAcceptance: [0.5, 0.4], draftDists: [{ ids: [4, 9], probs: [0.7, 0.3] }, { ids: [5], probs: [1] }], replyTo: sink, sentAtMs: 2,
  };
  return {
    prompt: { v: PROTOCOL_VERSION, type: 'prompt', requestId: 'fz-r1', prompt: 'hello', maxNewTokens: 8, slo, sampling, replyTo: sink },
    open,
    verify,
    close: { v: PROTOCOL_VERSION, type: 'close', sessionId: 'fz-s1', deviceId: 'fz-dev', reason: 'done', replyTo: sink },
    worker: {
      v: PROTOCOL_VERSION, type: 'worker', workerId: 'fz-w', model: 'target', vocabSize: 100, maxPositions: 64, state: 'ready', sessions: 0, kvBytes: 0,
      incarnation: 'fz-i', lastBatch: { batchId: 'fz-b', shapes: [{ n: 2, L: 3 }], actualMs: 1, predictedMs: 1 }, sentAtMs: 3, replyTo: sink,
    },
    batch: {
      v: PROTOCOL_VERSION, type: 'batch', batchId: 'fz-b', workerId: 'fz-w', replyTo: sink, predictedMs: 1, dispatchedAtMs: 1, evict: ['fz-s0'],
      items: [{ request: open, verifyTokens: 0, arrivedAtMs: 1 }, { request: verify, verifyTokens: 2, arrivedAtMs: 1, history: [1, 2, 3, 4, 5] }],
    },
    result: {
      v: PROTOCOL_VERSION, type: 'result', sessionId: 'fz-s1', round: 1, accepted: 1, token: 7, verified: 2, committedLength: 6, queueMs: 1, verifyMs: 1,
      batchSize: 1, workerId: 'fz-w', replyTo: sink,
    },
    stream: { v: PROTOCOL_VERSION, type: 'stream', sessionId: 'fz-s1', seq: 0, tokens: [3], committedLength: 4, done: false, workerId: 'fz-w', replyTo: sink },
    error: { v: PROTOCOL_VERSION, type: 'error', code: 'internal', message: 'x', sessionId: 'fz-s1', round: 1, replyTo: sink },
    chunk: { v: PROTOCOL_VERSION, type: 'chunk', requestId: 'fz-r1', sessionId: 'fz-s1', tokens: [1], text: 'a', done: false, replyTo: sink },
  };
}

/** Every path (object keys and array indexes, up to depth 4) of a JSON value. */
function pathsOf(v: Json, prefix: (string | number)[] = [], depth = 0): (string | number)[][] {
  if (depth > 4 || v === null || typeof v !== 'object') return [];
  const entries: [string | number, Json][] = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v);
  return entries.flatMap(([k, x]) => [[...prefix, k], ...pathsOf(x, [...prefix, k], depth + 1)]);
}

function setAt(root: Json, path: (string | number)[], value: Json | undefined): void {
  let cur = root as Record<string | number, Json>;
  for (const k of path.slice(0, -1)) cur = cur[k] as Record<string | number, Json>;
  const last = path[path.length - 1];
  if (value === undefined) {
    if (Array.isArray(cur)) cur.splice(Number(last), 1);
    else delete cur[last];
  } else cur[last] = value;
}

/** Values that break a field: wrong types, out of range, over the limits, forbidden characters. */
const badValue: fc.Arbitrary<Json | undefined> = fc.oneof(
  fc.constant(undefined), // delete the field
  fc.jsonValue({ maxDepth: 2 }) as fc.Arbitrary<Json>,
  fc.constantFrom<Json>(-1, -0.5, 1e308, 2 ** 53 + 2, 0.5, '', 'NaN', true, null, [], {}, 'x'.repeat(300), 'a b/c', 'é€', '\u0000'),
  fc.integer({ min: 65, max: 1_100 }).map((n) => Array.from({ length: n }, (_, i) => i) as Json),
);

/** A valid template with 1–3 fields broken, or garbage; its body as bytes. */
function bodies(kinds: string[], tpl: Record<string, Record<string, Json>>): fc.Arbitrary<Buffer> {
  const mutant = fc
    .tuple(fc.constantFrom(...kinds), fc.array(fc.tuple(fc.nat(), badValue), { minLength: 1, maxLength: 3 }))
    .map(([kind, edits]) => {
      const msg = structuredClone(tpl[kind]) as Json;
      for (const [pick, value] of edits) {
        const paths = pathsOf(msg);
        if (paths.length === 0) break;
        setAt(msg, paths[pick % paths.length], value);
      }
      return Buffer.from(JSON.stringify(msg));
    });
  const garbage = fc.oneof(
    fc.uint8Array({ minLength: 0, maxLength: 300 }).map((b) => Buffer.from(b)),
    (fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json>).map((j) => Buffer.from(JSON.stringify(j))),
    fc.tuple(fc.constantFrom(...kinds), fc.nat()).map(([kind, cut]) => {
      const full = JSON.stringify(tpl[kind]);
      return Buffer.from(full.slice(0, 1 + (cut % (full.length - 1)))); // truncated JSON
    }),
    fc.string({ maxLength: 200 }).map((s) => Buffer.from(s)),
  );
  return fc.oneof({ weight: 8, arbitrary: mutant }, { weight: 2, arbitrary: garbage });
}

const SAFE_QUEUE = /^[A-Za-z0-9._:\-/+=]{1,255}$/;

/** The error reply the broker layer owes for this body (same rule as broker/connection.ts), when it names the sink. */
function expectsErrorAt(body: Buffer, queue: string, sink: string): boolean {
  if (body.length > LIMITS.messageBytes) return false; // refused unread: its sender is unknown
  let raw: unknown;
  try {
    raw = JSON.parse(body.toString('utf8'));
  } catch {
    return false;
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return false;
  const o = raw as Record<string, unknown>;
  if (o.type === 'error') return false;
  const target = typeof o.replyTo === 'string' && SAFE_QUEUE.test(o.replyTo) ? o.replyTo : null;
  return target === sink && target !== queue;
}

const VHOST = 'wisp-faults-fuzz';

describe('faults 6: hostile input on every consumed queue', function () {
  this.timeout(600_000);
  const run = randomUUID().slice(0, 8);
  const deadQueue = `wisp.dead.fuzz-${run}`;
  /** One sink per fuzzed queue (a client queue, so the uplink roles can answer there too). */
  const sinkOf = (name: string) => clientQueue(`fuzzsink-${run}-${name.replace(/\W/g, '')}`);
  const NAMES = ['prompts', 'device prompts', 'scheduler', 'worker', 'device', 'client'];
  let sys: FaultSystem;
  let amqp: ChannelModel;
  let raw: ConfirmChannel;
  const errorsAtSink = new Map<string, ErrorMessage[]>(NAMES.map((n) => [sinkOf(n), []]));
  const deadByQueue = new Map<string, number>();
  const badReasons: string[] = [];
  const tooLarge = new Map<string, number>();
  /** When each queue's last dead letter arrived (for the report). */
  const doneAt = new Map<string, number>();

  before(async () => {
    await ensureVhost(VHOST);
    // Good requests queue behind thousands of hostile ones on the same queues (FIFO): they are
    // slowed down, not lost, so the devices wait long before resending.
    sys = await startFaultSystem(faultConfig(VHOST, { edge: { verifyTimeoutMs: 120_000, maxRetries: 2 } }), { workers: 1, devices: 2, hooks: { deadLetterQueue: deadQueue } });
    for (const n of NAMES) {
      const sink = sinkOf(n);
      await sys.broker.declareQueue(sink);
      await sys.broker.consume(sink, z.unknown(), (m) => {
        const e = ErrorMessageSchema.safeParse(m);
        if (e.success) errorsAtSink.get(sink)!.push(e.data);
      }, { prefetch: 1_000 });
    }
    amqp = await connect(sys.config.amqpUrl);
    raw = await amqp.createConfirmChannel();
    const dlq = await amqp.createChannel();
    await dlq.prefetch(1_000);
    await dlq.consume(deadQueue, (msg) => {
      if (!msg) return;
      const h = msg.properties.headers ?? {};
      const q = String(h[QUEUE_HEADER] ?? '');
      const reason = String(h[REASON_HEADER] ?? '');
      deadByQueue.set(q, (deadByQueue.get(q) ?? 0) + 1);
      doneAt.set(q, Date.now());
      if (!/^(malformed|too_large): ./.test(reason)) badReasons.push(`${q}: ${reason}`);
      if (reason.startsWith('too_large')) tooLarge.set(q, (tooLarge.get(q) ?? 0) + 1);
      dlq.ack(msg);
    });
  });

  after(async () => {
    await sys?.stop();
    await amqp?.close().catch(() => {});
    const cleanup = await connect(sys?.config.amqpUrl ?? '').catch(() => null);
    if (cleanup) {
      const ch = await cleanup.createChannel();
      for (const q of [deadQueue, ...NAMES.map(sinkOf)]) await ch.deleteQueue(q).catch(() => {});
      await cleanup.close().catch(() => {});
    }
  });

  it(`refuses ${N.toLocaleString('en')} hostile messages per queue with a reason and a typed error; good sessions unaffected`, async () => {
    const device = sys.edge.fleet.devices[0];
    const targets: { name: string; queue: string; schema: z.ZodType<unknown>; kinds: string[] }[] = [
      { name: 'prompts', queue: PROMPTS_QUEUE, schema: PromptRequestSchema, kinds: ['prompt', 'open', 'chunk'] },
      { name: 'device prompts', queue: devicePromptQueue(device.id), schema: PromptRequestSchema, kinds: ['prompt', 'verify'] },
      { name: 'scheduler', queue: SCHEDULER_QUEUE, schema: SchedulerInboxSchema, kinds: ['open', 'verify', 'close', 'worker', 'result'] },
      { name: 'worker', queue: workerQueue(sys.workers[0].role.workerId), schema: VerifyBatchSchema, kinds: ['batch', 'open'] },
      { name: 'device', queue: deviceQueue(device.id), schema: DeviceInboxSchema, kinds: ['result', 'stream', 'error', 'verify'] },
      { name: 'client', queue: sys.client.replyQueue, schema: ClientInboxSchema, kinds: ['chunk', 'error', 'prompt'] },
    ];
    for (const [kind, m] of Object.entries(templates('x'))) {
      const schemas = targets.filter((t) => t.kinds.includes(kind)).map((t) => t.schema);
      expect(schemas.some((s) => parseMessage(s, JSON.stringify(m)).ok), `template ${kind} is valid somewhere`).to.equal(true);
    }

    // The hostile bodies, generated up front (deterministic seed), each one refused by its queue's schema.
    let seed = 7;
    const plan = targets.map((t) => {
      const sink = sinkOf(t.name);
      const tpl = templates(sink);
      const arb = bodies(t.kinds, tpl).filter((b) => !parseMessage(t.schema, b).ok);
      const list = fc.sample(arb, { numRuns: N, seed: seed++ });
      const pad = 'x'.repeat(LIMITS.messageBytes + 1_000);
      for (let i = 0; i < OVERSIZED_PER_QUEUE; i++) list.push(Buffer.from(JSON.stringify({ ...tpl[t.kinds[0]], pad })));
      return { ...t, sink, list, expectErrors: list.filter((b) => expectsErrorAt(b, t.queue, sink)).length };
    });

    // Good sessions keep running the whole time.
    const maxNewTokens = 12;
    const expected = await targetTokens(TEST_PROMPTS, maxNewTokens);
    let fuzzing = true;
    const goodRuns: Promise<{ tokens: number[]; error: unknown; i: number; elapsedMs: number }[]>[] = [];
    const goodLoop = (async () => {
      while (fuzzing) {
        const batch = Promise.all(TEST_PROMPTS.map(async (prompt, i) => ({ ...(await sys.client.submit({ prompt, maxNewTokens }, 400_000)), i })));
        goodRuns.push(batch);
        await batch;
      }
    })();

    const startedMs = Date.now();
    // Interleave the queues so every role is under fire at once.
    for (let i = 0; i < N + OVERSIZED_PER_QUEUE; i++) {
      for (const p of plan) if (i < p.list.length) raw.sendToQueue(p.queue, p.list[i], { persistent: false });
      if (i % 250 === 249) await raw.waitForConfirms();
    }
    await raw.waitForConfirms();
    const sentMs = Date.now() - startedMs;

    await waitFor(
      () => plan.every((p) => (deadByQueue.get(p.queue) ?? 0) >= p.list.length),
      `dead letters (${plan.map((p) => `${p.name} ${deadByQueue.get(p.queue) ?? 0}/${p.list.length}`).join(', ')})`,
      420_000,
      250,
    );
    const expectedErrors = plan.reduce((a, p) => a + p.expectErrors, 0);
    const errorsOf = (p: (typeof plan)[number]) => errorsAtSink.get(p.sink)!;
    await waitFor(
      () => plan.every((p) => errorsOf(p).length >= p.expectErrors),
      `typed errors at the senders (${plan.map((p) => `${p.name} ${errorsOf(p).length}/${p.expectErrors}`).join(', ')})`,
      60_000,
      100,
    );
    const refusedMs = Date.now() - startedMs;
    fuzzing = false;
    await goodLoop;

    for (const p of plan) {
      expect(deadByQueue.get(p.queue), `${p.name}: every hostile message dead-lettered, none twice`).to.equal(p.list.length);
      expect(tooLarge.get(p.queue), `${p.name}: oversized bodies refused by the size cap`).to.equal(OVERSIZED_PER_QUEUE);
      expect(errorsOf(p).length, `${p.name}: one typed error per refused message that named its sender`).to.equal(p.expectErrors);
      expect(errorsOf(p).every((e) => e.code === 'malformed'), `${p.name}: typed errors are 'malformed'`).to.equal(true);
    }
    expect(badReasons, 'every dead letter carries a reason').to.deep.equal([]);

    const good = (await Promise.all(goodRuns)).flat();
    expect(good.length).to.be.greaterThan(0);
    for (const r of good) {
      expect(r.error, JSON.stringify(r.error)).to.equal(null);
      expect(r.tokens, `good prompt ${r.i}`).to.deep.equal(expected[r.i]);
    }
    const total = plan.reduce((a, p) => a + p.list.length, 0);
    console.log(
      `      [faults 6] ${total} hostile messages on ${plan.length} queues (${N} + ${OVERSIZED_PER_QUEUE} oversized each): sent in ${sentMs} ms, ` +
        `all refused in ${refusedMs} ms (${Math.round((total / refusedMs) * 1000)}/s), ${expectedErrors} typed errors to the sender; ` +
        `${good.length} good sessions alongside, all exact (slowest ${Math.round(Math.max(...good.map((g) => g.elapsedMs)))} ms: they wait behind the flood); per queue done after ${plan.map((p) => `${p.name} ${(doneAt.get(p.queue) ?? 0) - startedMs} ms`).join(', ')}`,
    );
  });
});
