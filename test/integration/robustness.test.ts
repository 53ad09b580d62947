/**
 * Malformed messages on every queue while good sessions run (real broker, Redis, tiny models):
 * bad JSON, wrong schema, an unknown session, token ids outside the vocabulary, a request from
 * a device that does not own the session. Each is dead-lettered with a reason (the roles here
 * use a private dead-letter queue), its sender — when it can be known — gets a typed error,
 * every role keeps running, and the good sessions produce exactly the target-only tokens.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { connect, type ChannelModel, type ConfirmChannel, type GetMessage } from 'amqplib';
import { z } from 'zod';
import { connectBroker, type BrokerClient, type ConsumerHandle } from '../../broker/connection.ts';
import { processMetrics } from '../../telemetry/metrics.ts';
import { ErrorMessageSchema, PROTOCOL_VERSION, type ErrorMessage, type SessionOpen, type VerifyBatch, type VerifyRequest, type VerifyResult } from '../../protocol/messages.ts';
import {
  PROMPTS_QUEUE,
  QUEUE_HEADER,
  REASON_HEADER,
  SCHEDULER_QUEUE,
  clientQueue,
  deviceQueue,
  devicePromptQueue,
  workerQueue,
} from '../../broker/topology.ts';
import { WispClient } from '../../actors/client.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { AMQP_URL, ScriptedDevice, TEST_PROMPTS, startTestSystem, targetTokens, type TestSystem } from '../helpers/system.ts';

interface DeadLetter {
  body: string;
  reason: string;
  queue: string;
}

describe('robustness: malformed messages on every queue while good sessions run', function () {
  this.timeout(60_000);
  const run = randomUUID().slice(0, 8);
  const deadQueue = `wisp.dead.test-${run}`;
  const probeQueue = clientQueue(`probe-${run}`);
  let sys: TestSystem;
  let broker: BrokerClient;
  let client: WispClient;
  let amqp: ChannelModel;
  let raw: ConfirmChannel;
  let probe: ConsumerHandle;
  const probed: ErrorMessage[] = [];
  const stray: unknown[] = [];
  const maxNewTokens = 16;

  before(async () => {
    sys = await startTestSystem({ devices: 3, workers: 1, hooks: { deadLetterQueue: deadQueue } });
    broker = await connectBroker(AMQP_URL, { connectionName: `robustness-${run}`, deadLetterQueue: deadQueue, queues: [probeQueue], logger: { info: () => {}, warn: () => {} } });
    client = new WispClient(broker, `robust-${run}`);
    await client.start();
    probe = await broker.consume(probeQueue, z.unknown(), (m) => {
      const e = ErrorMessageSchema.safeParse(m);
      if (e.success) probed.push(e.data);
      else stray.push(m);
    }, { prefetch: 256 });
    amqp = await connect(AMQP_URL);
    raw = await amqp.createConfirmChannel();
  });
  after(async () => {
    await probe?.cancel();
    await client?.close();
    await raw?.deleteQueue(deadQueue).catch(() => {});
    await raw?.deleteQueue(probeQueue).catch(() => {});
    await amqp?.close().catch(() => {});
    await broker?.close();
    await sys?.stop();
  });

  /** Publishes a body as is (it may not be JSON), with the AMQP replyTo set to the probe queue. */
  async function sendRaw(queue: string, body: string): Promise<void> {
    raw.sendToQueue(queue, Buffer.from(body), { replyTo: probeQueue, contentType: 'application/json' });
    await raw.waitForConfirms();
  }

  /** Reads the private dead-letter queue until `want` returns true (or 10 s pass). */
  async function deadLetters(want: (all: DeadLetter[]) => boolean): Promise<DeadLetter[]> {
    const all: DeadLetter[] = [];
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const m: GetMessage | false = await raw.get(deadQueue, { noAck: true });
      if (m) {
        all.push({ body: m.content.toString('utf8'), reason: String(m.properties.headers?.[REASON_HEADER]), queue: String(m.properties.headers?.[QUEUE_HEADER]) });
        continue;
      }
      if (want(all)) return all;
      await new Promise((r) => setTimeout(r, 50));
    }
    return all;
  }

  async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  it('refuses each with a reason and a typed error, keeps every role up, and serves the good sessions exactly', async () => {
    const prompts = TEST_PROMPTS.slice(0, 6);
    const expected = await targetTokens(prompts, maxNewTokens);
    const device = sys.up.fleet.devices[0];
    const worker = sys.up.workers[0];
    const queues = {
      prompts: PROMPTS_QUEUE,
      devicePrompts: devicePromptQueue(device.id),
      scheduler: SCHEDULER_QUEUE,
      worker: workerQueue(worker.workerId),
      device: deviceQueue(device.id),
      client: client.replyQueue,
    };

    // Good sessions first; the garbage arrives while they run.
    const good = Promise.all(prompts.map((prompt) => client.submit({ prompt, maxNewTokens }, 40_000)));

    // 1. Bad JSON and wrong schema on every queue. Ids in the bodies name the sender's request.
    const wrongSchema: Record<keyof typeof queues, Record<string, unknown>> = {
      prompts: { v: 1, type: 'prompt', requestId: `bad-${run}-prompts`, prompt: 'x', maxNewTokens: -1 },
      devicePrompts: { v: 1, type: 'prompt', requestId: `bad-${run}-devicePrompts`, maxNewTokens: 4 },
      scheduler: { v: 1, type: 'verify', sessionId: `bad-${run}-scheduler`, round: 'one' },
      worker: { v: 1, type: 'batch', batchId: `bad-${run}-worker`, items: [] },
      device: { v: 1, type: 'result', sessionId: `bad-${run}-device`, accepted: -3 },
      client: { v: 2, type: 'chunk', requestId: `bad-${run}-client` },
    };
    for (const [name, queue] of Object.entries(queues) as [keyof typeof queues, string][]) {
      await sendRaw(queue, `{"v":1,"marker":"json-${run}-${name}",`);
      await broker.publish(queue, { ...wrongSchema[name], marker: `schema-${run}-${name}`, replyTo: probeQueue }, { mandatory: false });
    }

    // 2. Well-formed messages the roles must refuse on their merits.
    const ghost: VerifyRequest = {
      v: PROTOCOL_VERSION,
      type: 'verify',
      sessionId: `ghost-${run}`,
      deviceId: `ghost-${run}`,
      round: 3,
      committedLength: 9,
      draftTokens: [1, 2],
      predictedAcceptance: [0.5, 0.5],
      replyTo: probeQueue,
      sentAtMs: Date.now(),
    };
    await broker.publish(SCHEDULER_QUEUE, ghost);
    const oovOpen: SessionOpen = {
      v: PROTOCOL_VERSION,
      type: 'open',
      sessionId: `oov-open-${run}`,
      deviceId: `oov-${run}`,
      requestId: `oov-open-${run}`,
      draftModel: 'draft-1',
      mode: 'speculative',
      promptTokens: [5, 70_000],
      maxNewTokens: 4,
      slo: { ttftMs: 10_000, tpotMs: 10_000 },
      sampling: { temperature: 0, topP: 1, seed: 0 },
      replyTo: probeQueue,
      sentAtMs: Date.now(),
    };
    await broker.publish(SCHEDULER_QUEUE, oovOpen);
    const stray1: VerifyBatch = {
      v: PROTOCOL_VERSION,
      type: 'batch',
      batchId: `stray-${run}`,
      workerId: worker.workerId,
      items: [{ request: { ...ghost, sessionId: `ghost2-${run}`, deviceId: `ghost2-${run}` }, verifyTokens: 2, arrivedAtMs: Date.now() }],
      predictedMs: 1,
      dispatchedAtMs: Date.now(),
      evict: [],
    };
    await broker.publish(queues.worker, stray1);
    // A batch addressed to another worker, in this worker's queue: refused, not run.
    await broker.publish(queues.worker, { ...stray1, batchId: `misrouted-${run}`, workerId: `other-worker-${run}` });
    // A late result and a late chunk for things nobody waits for: ignored, not fatal.
    await broker.publish(queues.device, { v: 1, type: 'result', sessionId: `late-${run}`, round: 2, accepted: 0, token: 1, verified: 0, committedLength: 3, queueMs: 0, verifyMs: 0, batchSize: 1, workerId: 'w' });
    await broker.publish(queues.client, { v: 1, type: 'chunk', requestId: `late-${run}`, sessionId: `late-${run}`, tokens: [1], text: 'x', done: true, stopReason: 'length' });
    // A prompt whose tokens are outside the vocabulary: the device answers the client.
    const oovPrompt = client.submit({ promptTokens: [3, 99_999], maxNewTokens: 4 }, 20_000);

    // 3. A real session, played at the wire level, hit with out-of-vocabulary drafts and an intruder.
    const tok = await loadTokenizer((await ensureModelPair('tiny')).targetDir);
    const scriptedPrompt = tok.encode(TEST_PROMPTS[6]);
    const [scriptedRef] = await targetTokens([TEST_PROMPTS[6]], 4);
    const dev = new ScriptedDevice(broker, `scripted-${run}`);
    await dev.start();
    const sid = `scripted-${run}`;
    await dev.send({ ...oovOpen, sessionId: sid, deviceId: dev.deviceId, requestId: sid, promptTokens: scriptedPrompt, replyTo: dev.queue });
    const r0 = await dev.next(0);
    expect(r0?.type, JSON.stringify(r0)).to.equal('result');
    const verify = (over: Partial<VerifyRequest>): VerifyRequest => ({
      ...ghost,
      sessionId: sid,
      deviceId: dev.deviceId,
      round: 1,
      committedLength: scriptedPrompt.length + 1,
      draftTokens: [],
      predictedAcceptance: [],
      replyTo: dev.queue,
      ...over,
    });
    await dev.send(verify({ draftTokens: [scriptedRef[1], 4_096], predictedAcceptance: [0.5, 0.5] }));
    const oovReply = await dev.next(1);
    expect(oovReply, JSON.stringify(oovReply)).to.include({ type: 'error', code: 'token_out_of_vocab', sessionId: sid, round: 1 });
    await dev.send(verify({ deviceId: `intruder-${run}`, replyTo: probeQueue, draftTokens: [scriptedRef[1]], predictedAcceptance: [0.9] }));
    await until(() => probed.some((e) => e.code === 'not_owner'), 'the intruder\'s not_owner error');
    // The refused rounds changed nothing: round 1 still runs, on the same committed length.
    await dev.send(verify({ draftTokens: [scriptedRef[1]], predictedAcceptance: [0.9] }));
    const r1 = await dev.next(2);
    expect(r1, JSON.stringify(r1)).to.include({ type: 'result', round: 1, accepted: 1, token: scriptedRef[2], committedLength: scriptedPrompt.length + 3 });
    // A batch from a scheduler whose clock is far from this worker's (here: 1970): the queue time
    // is its wait there (5 ms) plus its wait here, not a difference of the two clocks.
    await broker.publish(queues.worker, {
      v: PROTOCOL_VERSION,
      type: 'batch',
      batchId: `farclock-${run}`,
      workerId: worker.workerId,
      items: [{ request: verify({ round: 2, committedLength: scriptedPrompt.length + 3, draftTokens: [scriptedRef[3]], predictedAcceptance: [0.9] }), verifyTokens: 1, arrivedAtMs: 1_000 }],
      predictedMs: 1,
      dispatchedAtMs: 1_005,
      evict: [],
    } satisfies VerifyBatch);
    const r2 = await dev.next(3);
    expect(r2, JSON.stringify(r2)).to.include({ type: 'result', round: 2, accepted: 1 });
    expect((r2 as VerifyResult).queueMs, 'queue time on one clock at a time').to.be.within(5, 5_000);
    await dev.send({ v: PROTOCOL_VERSION, type: 'close', sessionId: sid, deviceId: dev.deviceId, reason: 'done' });
    await dev.stop();

    // The good sessions: exactly the target-only tokens.
    const results = await good;
    results.forEach((r, i) => {
      expect(r.error, `prompt ${i}: ${JSON.stringify(r.error)}`).to.equal(null);
      expect(r.tokens, `prompt ${i} "${prompts[i]}"`).to.deep.equal(expected[i]);
    });
    const oov = await oovPrompt;
    expect(oov.error?.code, JSON.stringify(oov.error)).to.equal('malformed');
    expect(oov.error?.message).to.include('99999');

    // Dead letters: every malformed body with its queue and reason, and the refused requests.
    const names = Object.keys(queues) as (keyof typeof queues)[];
    // Markers end at their closing quote, so "device" does not match "devicePrompts".
    const has = (all: DeadLetter[], marker: string) => all.find((d) => d.body.includes(marker.endsWith('"') ? marker : `${marker}"`));
    const dead = await deadLetters((all) =>
      names.every((n) => has(all, `json-${run}-${n}`) && has(all, `schema-${run}-${n}`)) &&
      ['ghost-', 'ghost2-', 'oov-open-'].every((p) => has(all, `"${p}${run}"`)) &&
      has(all, `misrouted-${run}`) !== undefined &&
      all.filter((d) => d.body.includes(sid)).length >= 2,
    );
    for (const n of names) {
      const json = has(dead, `json-${run}-${n}`);
      expect(json, `bad JSON on ${n} dead-lettered`).to.not.equal(undefined);
      expect(json!.queue).to.equal(queues[n]);
      expect(json!.reason).to.match(/^malformed: invalid JSON/);
      const schema = has(dead, `schema-${run}-${n}`);
      expect(schema, `wrong schema on ${n} dead-lettered`).to.not.equal(undefined);
      expect(schema!.queue).to.equal(queues[n]);
      expect(schema!.reason).to.match(/^malformed: /);
    }
    const reasonOf = (marker: string) => has(dead, marker)?.reason ?? '(not dead-lettered)';
    expect(reasonOf(`"ghost-${run}"`)).to.match(/^unknown_session: session ghost-/);
    expect(reasonOf(`"ghost2-${run}"`)).to.match(/^unknown_session: session ghost2-/);
    expect(reasonOf(`"oov-open-${run}"`)).to.match(/^token_out_of_vocab: prompt token 70000/);
    expect(reasonOf(`misrouted-${run}`)).to.equal(`not_owner: batch misrouted-${run} is addressed to worker other-worker-${run}, not ${worker.workerId}`);
    // Each refusal is counted by queue kind and reason code.
    const series = await processMetrics().text();
    const count = (queue: string, reason: string) => Number(new RegExp(`^wisp_refused_messages_total\\{queue="${queue}",reason="${reason}"\\} (\\d+)`, 'm').exec(series)?.[1] ?? 0);
    expect(count('worker', 'not_owner'), 'the misrouted batch').to.be.at.least(1);
    expect(count('worker', 'malformed') + count('scheduler', 'malformed'), 'the malformed bodies').to.be.at.least(2);
    // And the late result for a session nobody serves: let go, but counted.
    expect(Number(/^wisp_ignored_messages_total\{role="edge",reason="no_session"\} (\d+)/m.exec(series)?.[1] ?? 0), 'the late result').to.be.at.least(1);
    const scriptedDead = dead.filter((d) => d.body.includes(sid)).map((d) => d.reason);
    expect(scriptedDead.some((r) => /^token_out_of_vocab: draft token 4096/.test(r)), scriptedDead.join(' | ')).to.equal(true);
    expect(scriptedDead.some((r) => /^not_owner: /.test(r)), scriptedDead.join(' | ')).to.equal(true);
    // Refused on their merits by the worker (unknown session, vocabulary) or the scheduler (owner).
    for (const d of dead.filter((x) => /ghost|oov-open|scripted/.test(x.body))) expect([queues.worker, queues.scheduler]).to.include(d.queue);

    // Typed errors to the probe (the sender): the ids came back where the body had them.
    const codeFor = (key: 'sessionId' | 'requestId', id: string) => probed.find((e) => e[key] === id)?.code;
    await until(() => codeFor('sessionId', `ghost2-${run}`) !== undefined && codeFor('sessionId', `oov-open-${run}`) !== undefined, 'typed errors');
    expect(codeFor('requestId', `bad-${run}-prompts`)).to.equal('malformed');
    expect(codeFor('requestId', `bad-${run}-devicePrompts`)).to.equal('malformed');
    expect(codeFor('sessionId', `bad-${run}-scheduler`)).to.equal('malformed');
    expect(codeFor('sessionId', `bad-${run}-device`)).to.equal('malformed');
    expect(codeFor('requestId', `bad-${run}-client`)).to.equal('malformed');
    expect(codeFor('sessionId', `ghost-${run}`)).to.equal('unknown_session');
    expect(codeFor('sessionId', `ghost2-${run}`)).to.equal('unknown_session');
    expect(codeFor('sessionId', `oov-open-${run}`)).to.equal('token_out_of_vocab');
    expect(codeFor('sessionId', sid)).to.equal('not_owner');
    // Bad JSON names no ids; its sender is the AMQP replyTo: one malformed error per queue.
    expect(probed.filter((e) => e.code === 'malformed' && e.message.includes('invalid JSON')).length).to.be.at.least(names.length);
    expect(stray, 'only typed errors reach the sender').to.deep.equal([]);

    // Every role still runs: the scheduler's machine, and a session served by the device that got
    // the garbage, through the worker that got it, to the client that got it.
    expect(sys.up.scheduler.snapshot().status).to.equal('active');
    const [again] = await targetTokens([TEST_PROMPTS[7]], maxNewTokens);
    const last = await client.submit({ prompt: TEST_PROMPTS[7], maxNewTokens, deviceId: device.id }, 20_000);
    expect(last.error, JSON.stringify(last.error)).to.equal(null);
    expect(last.tokens).to.deep.equal(again);
    expect(worker.executor()).to.not.equal(null);
  });

  it('a batch member whose device queue is gone does not fail the other members of its batch', async () => {
    const worker = sys.up.workers[0];
    const tok = await loadTokenizer((await ensureModelPair('tiny')).targetDir);
    const prompt = tok.encode(TEST_PROMPTS[5]);
    const [ref] = await targetTokens([TEST_PROMPTS[5]], 4);
    const gone = new ScriptedDevice(broker, `gone-${run}`);
    const stays = new ScriptedDevice(broker, `stays-${run}`);
    const open = (d: ScriptedDevice): SessionOpen => ({
      v: PROTOCOL_VERSION,
      type: 'open',
      sessionId: `s-${d.deviceId}`,
      deviceId: d.deviceId,
      requestId: `s-${d.deviceId}`,
      draftModel: 'draft-1',
      mode: 'speculative',
      promptTokens: prompt,
      maxNewTokens: 4,
      slo: { ttftMs: 10_000, tpotMs: 10_000 },
      sampling: { temperature: 0, topP: 1, seed: 0 },
      replyTo: d.queue,
      sentAtMs: Date.now(),
    });
    for (const d of [gone, stays]) {
      await d.start();
      await d.send(open(d));
      expect((await d.next(0))?.type).to.equal('result');
    }
    await gone.stop(); // its queue is deleted: a reply to it is unroutable
    const item = (d: ScriptedDevice) => ({
      request: {
        v: PROTOCOL_VERSION,
        type: 'verify' as const,
        sessionId: `s-${d.deviceId}`,
        deviceId: d.deviceId,
        round: 1,
        committedLength: prompt.length + 1,
        draftTokens: [ref[1]],
        predictedAcceptance: [0.9],
        replyTo: d.queue,
        sentAtMs: Date.now(),
      },
      verifyTokens: 1,
      arrivedAtMs: Date.now(),
    });
    const batch: VerifyBatch = { v: PROTOCOL_VERSION, type: 'batch', batchId: `gone-${run}`, workerId: worker.workerId, items: [item(gone), item(stays)], predictedMs: 1, dispatchedAtMs: Date.now(), evict: [] };
    await broker.publish(workerQueue(worker.workerId), batch);
    const r = await stays.next(1);
    expect(r, JSON.stringify(r)).to.include({ type: 'result', round: 1, accepted: 1, token: ref[2] });
    // …and no error after it (a failed batch would tell every member 'verification failed').
    const after = await stays.next(2, 700);
    expect(after, JSON.stringify(after)).to.equal(null);
    await stays.stop();
  });
});
