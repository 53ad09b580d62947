/**
 * The broker layer against the real RabbitMQ on 127.0.0.1:5672: topology, confirmed publish,
 * validated consume, the refusal path (dead letter + typed error to the sender), throwing
 * handlers and recovery after a lost connection. Every queue is unique to this run and deleted
 * afterwards; refused messages go to a private `wisp.dead.test-<run>` queue.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import { connect, type ChannelModel, type Channel, type GetMessage } from 'amqplib';
import { connectBroker, HandlerError, type BrokerClient, type BrokerLogger, type ConsumerHandle } from '../../broker/connection.ts';
import {
  ClientInboxSchema,
  LIMITS,
  PROTOCOL_VERSION,
  SchedulerInboxSchema,
  VerifyResultSchema,
  type ClientInbox,
  type ErrorMessage,
  type SchedulerInbox,
  type VerifyRequest,
  type VerifyResult,
} from '../../protocol/messages.ts';
import { MessageTooLargeError, UnroutableError } from '../../broker/errors.ts';
import {
  DEAD_QUEUE,
  PROMPTS_QUEUE,
  QUEUE_HEADER,
  REASON_HEADER,
  SCHEDULER_QUEUE,
  TOPOLOGY,
  clientQueue,
  declareTopology,
  deviceQueue,
  queueSpec,
  workerQueue,
} from '../../broker/topology.ts';

const AMQP_URL = process.env.WISP_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

/** Collects warnings instead of printing them (refusals are expected here). */
function quietLogger(): BrokerLogger & { warnings: string[] } {
  const warnings: string[] = [];
  return { warnings, info: () => {}, warn: (m, f) => warnings.push(`${m} ${f ? JSON.stringify(f) : ''}`) };
}

/** Takes `count` messages from `queue` (basic.get), waiting up to `timeoutMs` for them. */
async function take(ch: Channel, queue: string, count: number, timeoutMs = 5_000): Promise<GetMessage[]> {
  const out: GetMessage[] = [];
  const deadline = Date.now() + timeoutMs;
  while (out.length < count && Date.now() < deadline) {
    const m = await ch.get(queue, { noAck: true });
    if (m) out.push(m);
    else await new Promise((r) => setTimeout(r, 20));
  }
  return out;
}

/** A promise with its resolver, for "wait until the handler saw it". */
function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

function verifyRequest(over: Partial<VerifyRequest> = {}): VerifyRequest {
  return {
    v: PROTOCOL_VERSION,
    type: 'verify',
    sessionId: 's-1',
    deviceId: 'd-1',
    round: 3,
    committedLength: 10,
    draftTokens: [5, 6],
    predictedAcceptance: [0.9, 0.5],
    replyTo: 'unused',
    sentAtMs: 1,
    ...over,
  };
}

describe('broker/connection (integration)', () => {
  const run = randomUUID().slice(0, 8);
  const deadQueue = `${DEAD_QUEUE}.test-${run}`;
  const replyQueue = clientQueue(`test-${run}`);
  const created = new Set<string>([deadQueue, replyQueue]);
  const logger = quietLogger();
  let broker: BrokerClient;
  let raw: ChannelModel;
  let inspect: Channel;

  before(async () => {
    broker = await connectBroker(AMQP_URL, { connectionName: `wisp-test-broker-${run}`, deadLetterQueue: deadQueue, logger, queues: [replyQueue] });
    raw = await connect(AMQP_URL);
    raw.on('error', () => {});
    inspect = await raw.createChannel();
  });

  after(async () => {
    for (const q of created) await inspect?.deleteQueue(q).catch(() => {});
    await raw?.close().catch(() => {});
    await broker?.close();
  });

  it('declares the topology idempotently: twice in a row, from two connections', async () => {
    const other = await connectBroker(AMQP_URL, { connectionName: `wisp-test-topology-${run}`, logger: quietLogger() });
    try {
      const own = workerQueue(`test-${run}-topo`);
      created.add(own);
      const ch = await raw.createChannel();
      let closedWith: unknown = null;
      ch.on('error', (e) => (closedWith = e));
      await declareTopology(ch, [queueSpec(own)]);
      await declareTopology(ch, [queueSpec(own)]);
      await other.declareQueue(own);
      await broker.declareQueue(own);
      for (const q of [...TOPOLOGY.queues.map((q) => q.name), own]) {
        const ok = await ch.checkQueue(q);
        expect(ok.queue).to.equal(q);
      }
      expect(TOPOLOGY.queues.map((q) => q.name)).to.include.members([DEAD_QUEUE, PROMPTS_QUEUE, SCHEDULER_QUEUE]);
      expect(closedWith).to.equal(null); // a 406 (arguments differ) would have closed the channel
      await ch.close();
    } finally {
      await other.close();
    }
  });

  it('names per-id queues in one place and refuses unsafe ids', () => {
    expect(workerQueue('w1')).to.equal('wisp.worker.w1');
    expect(deviceQueue('d1')).to.equal('wisp.device.d1');
    expect(clientQueue('c1')).to.equal('wisp.client.c1');
    expect(() => workerQueue('a b')).to.throw('topology: worker id "a b" is not an id ([A-Za-z0-9._:-], 1-128 chars)');
    expect(queueSpec(workerQueue('w1')).arguments).to.include({ 'x-dead-letter-exchange': 'wisp.dlx' });
  });

  it('round-trips a confirmed publish to a validated consumer', async () => {
    const q = deviceQueue(`test-${run}-rt`);
    created.add(q);
    const got = deferred<{ msg: VerifyResult; headers: Record<string, unknown>; correlationId?: string }>();
    const handle = await broker.consume(q, VerifyResultSchema, (msg, meta) => {
      got.resolve({ msg, headers: meta.headers, correlationId: meta.correlationId });
    });
    const sent: VerifyResult = {
      v: 1,
      type: 'result',
      sessionId: 's-rt',
      round: 2,
      accepted: 3,
      token: 42,
      verified: 4,
      committedLength: 17,
      queueMs: 1.5,
      verifyMs: 3,
      batchSize: 2,
      workerId: 'w-1',
    };
    await broker.publish(q, sent, { correlationId: 'c-1', headers: { 'x-test': 'yes' } });
    const r = await got.promise;
    expect(r.msg).to.deep.equal(sent);
    expect(r.correlationId).to.equal('c-1');
    expect(r.headers['x-test']).to.equal('yes');
    await handle.cancel();
  });

  it('refuses bad JSON, wrong schema and oversized bodies: dead letter with reason, typed error to the sender, good message still handled', async () => {
    const q = workerQueue(`test-${run}-refuse`);
    created.add(q);
    const handled: SchedulerInbox[] = [];
    const goodSeen = deferred<void>();
    const handle = await broker.consume(
      q,
      SchedulerInboxSchema,
      (msg) => {
        handled.push(msg);
        goodSeen.resolve();
      },
      { prefetch: 4 },
    );
    const ch = await raw.createConfirmChannel();
    const send = (body: Buffer, replyTo?: string) =>
      new Promise<void>((res, rej) => ch.sendToQueue(q, body, { replyTo }, (err) => (err ? rej(err) : res())));
    await send(Buffer.from('{"v":1, "type": "verify", '), replyQueue); // bad JSON, sender known from AMQP replyTo
    const wrong = { ...verifyRequest({ sessionId: 's-9', round: 4, replyTo: replyQueue }), draftTokens: 'nope' };
    await send(Buffer.from(JSON.stringify(wrong))); // schema error, sender known from body.replyTo
    await send(Buffer.alloc(LIMITS.messageBytes + 1, 0x20), replyQueue); // oversized
    await send(Buffer.from(JSON.stringify(verifyRequest({ sessionId: 's-good', replyTo: replyQueue }))));
    await ch.close();
    await goodSeen.promise;

    // Refusals run concurrently (prefetch 4): compare without relying on their order.
    const dead = await take(inspect, deadQueue, 3);
    expect(dead).to.have.length(3);
    const reasonOf = (m: GetMessage) => String(m.properties.headers?.[REASON_HEADER]);
    const reasons = dead.map(reasonOf).sort();
    expect(reasons[0]).to.equal('malformed: draftTokens: Invalid input: expected array, received string');
    expect(reasons[1]).to.match(/^malformed: invalid JSON \(/);
    expect(reasons[2]).to.equal(`too_large: ${LIMITS.messageBytes + 1} bytes > ${LIMITS.messageBytes}`);
    for (const m of dead) expect(m.properties.headers?.[QUEUE_HEADER]).to.equal(q);
    const schemaRefused = dead.find((m) => reasonOf(m).startsWith('malformed: draftTokens'));
    expect(schemaRefused?.content.toString()).to.equal(JSON.stringify(wrong)); // the original body is kept

    const replies = (await take(inspect, replyQueue, 3)).map((m) => ClientInboxSchema.parse(JSON.parse(m.content.toString())) as ErrorMessage);
    expect(replies.map((r) => r.code).sort()).to.deep.equal(['malformed', 'malformed', 'too_large']);
    expect(replies.find((r) => r.sessionId !== undefined)).to.deep.equal({
      v: 1,
      type: 'error',
      code: 'malformed',
      message: 'malformed: draftTokens: Invalid input: expected array, received string',
      sessionId: 's-9',
      round: 4,
    } satisfies ClientInbox);

    expect(handled).to.have.length(1);
    expect(handled[0]).to.include({ type: 'verify', sessionId: 's-good' });
    await handle.cancel();
  });

  it('keeps consuming after a handler throws: internal reason, typed error, HandlerError codes pass through', async () => {
    const q = workerQueue(`test-${run}-throw`);
    created.add(q);
    const seen: number[] = [];
    const third = deferred<void>();
    const handle = await broker.consume(q, SchedulerInboxSchema, (msg) => {
      if (msg.type !== 'verify') return;
      seen.push(msg.round);
      if (msg.round === 1) throw new Error('boom');
      if (msg.round === 2) return Promise.reject(new HandlerError('unknown_session', `no session ${msg.sessionId}`));
      third.resolve();
    });
    for (const round of [1, 2, 3]) await broker.publish(q, verifyRequest({ round, sessionId: `s-${round}`, replyTo: replyQueue }));
    await third.promise;
    expect(seen).to.deep.equal([1, 2, 3]);

    const dead = await take(inspect, deadQueue, 2);
    expect(dead.map((m) => m.properties.headers?.[REASON_HEADER])).to.deep.equal(['internal: boom', 'unknown_session: no session s-2']);
    const replies = (await take(inspect, replyQueue, 2)).map((m) => JSON.parse(m.content.toString()) as ErrorMessage);
    expect(replies.map((r) => [r.code, r.sessionId, r.round])).to.deep.equal([
      ['internal', 's-1', 1],
      ['unknown_session', 's-2', 2],
    ]);
    await handle.cancel();
  });

  it('refuses to publish to a missing queue (UnroutableError) and oversized messages (MessageTooLargeError)', async () => {
    const missing = deviceQueue(`test-${run}-missing`);
    const err = await broker.publish(missing, { v: 1 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(UnroutableError);
    expect((err as UnroutableError).code).to.equal('unroutable');
    const big = await broker.publish(replyQueue, { pad: 'x'.repeat(LIMITS.messageBytes) }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(big).to.be.instanceOf(MessageTooLargeError);
    expect((big as Error).message).to.equal(`broker: publish to ${replyQueue}: body is ${LIMITS.messageBytes + 10} bytes, limit ${LIMITS.messageBytes}`);
  });

  it('a wrong password or an unknown virtual host is one clear error, not retried; an unreachable broker one line per attempt', async () => {
    const attempts: string[] = [];
    const logger: BrokerLogger = { info: () => {}, warn: (m, f) => void (m === 'connect attempt failed' && attempts.push(String(f?.reason))) };
    const refusal = async (url: string) => connectBroker(url, { connectionName: `refused-${run}`, logger, initialDelayMs: 20, maxDelayMs: 50 }).then(
      (b) => (void b.close(), null),
      (e: unknown) => e as Error & { code?: string },
    );
    const u = new URL(AMQP_URL);
    u.password = 'not-the-password';
    const login = await refusal(u.toString());
    expect(login?.code).to.equal('broker_refused');
    expect(login?.message).to.equal(`broker: amqp://${u.username}:***@${u.host} refused the login of user "${u.username}" (wrong user name or password)`);
    expect(attempts, 'a refused login is not retried').to.deep.equal([]);
    const v = new URL(AMQP_URL);
    v.pathname = `/no-such-vhost-${run}`;
    const vhost = await refusal(v.toString());
    expect(vhost?.code).to.equal('broker_refused');
    expect(vhost?.message).to.equal(`broker: amqp://${v.username}:***@${v.host}/no-such-vhost-${run} refused virtual host "no-such-vhost-${run}": it does not exist, or user "${v.username}" may not use it`);
    expect(attempts.length, 'a refused virtual host is tried twice at most (a broker may still be starting it)').to.be.at.most(1);
    attempts.length = 0;
    const down = await refusal('amqp://guest:guest@127.0.0.1:1');
    expect(down?.code).to.equal('broker_unreachable');
    expect(down?.message).to.match(/^broker: cannot connect to amqp:\/\/guest:\*\*\*@127\.0\.0\.1:1: connect ECONNREFUSED/);
    expect(attempts.length, 'one line per attempt').to.be.within(1, 6);
    expect(new Set(attempts).size).to.equal(1);
  });

  it('comes back after the broker closes the connection: consumers resume, publishing works', async function () {
    let rabbitmqctl = true;
    try {
      execFileSync('rabbitmqctl', ['-q', 'list_connections', 'pid'], { stdio: 'ignore' });
    } catch {
      rabbitmqctl = false;
    }
    if (!rabbitmqctl) this.skip(); // needs rabbitmqctl on this host to close the connection server-side

    const name = `wisp-test-reconnect-${run}`;
    const client = await connectBroker(AMQP_URL, { connectionName: name, initialDelayMs: 50, maxDelayMs: 500, logger: quietLogger() });
    try {
      const q = deviceQueue(`test-${run}-reconnect`);
      created.add(q);
      const received: number[] = [];
      /** Deliveries of a round already received: allowed only as redeliveries (at-least-once). */
      const copies: { round: number; redelivered: boolean }[] = [];
      let onReceive: (() => void) | null = null;
      await client.consume(q, VerifyResultSchema, (m, meta) => {
        // The connection may close after round 1 was handled but before its ack reached the broker:
        // the broker then delivers it again, marked redelivered (the protocol tolerates duplicates).
        if (received.includes(m.round)) copies.push({ round: m.round, redelivered: meta.redelivered });
        else received.push(m.round);
        onReceive?.();
      });
      const result = (round: number): VerifyResult => ({
        v: 1,
        type: 'result',
        sessionId: 's-rc',
        round,
        accepted: 0,
        token: 1,
        verified: 0,
        committedLength: 2,
        queueMs: 0,
        verifyMs: 0,
        batchSize: 1,
        workerId: 'w',
      });
      const waitFor = (n: number) =>
        new Promise<void>((res) => {
          onReceive = () => received.length >= n && res();
          onReceive();
        });
      await client.publish(q, result(1));
      await waitFor(1);

      const disconnected = new Promise<Error>((res) => client.once('disconnect', res));
      const reconnected = new Promise<void>((res) => client.once('connect', res));
      const list = execFileSync('rabbitmqctl', ['-q', 'list_connections', 'pid', 'client_properties'], { encoding: 'utf8' });
      const pid = list.split('\n').find((line) => line.includes(name))?.split('\t')[0];
      expect(pid, 'connection listed by rabbitmqctl').to.be.a('string');
      execFileSync('rabbitmqctl', ['-q', 'close_connection', pid as string, 'wisp test: simulated loss'], { stdio: 'ignore' });

      const err = await disconnected;
      expect(err.message).to.contain('CONNECTION_FORCED');
      // Published while the connection is down: waits for the recovery, then is confirmed.
      const duringOutage = client.publish(q, result(2));
      await reconnected;
      await duringOutage;
      await client.publish(q, result(3));
      await waitFor(3);
      expect(received).to.deep.equal([1, 2, 3]);
      expect(copies.every((c) => c.round === 1 && c.redelivered), JSON.stringify(copies)).to.equal(true);
      expect(client.connected).to.equal(true);
    } finally {
      await client.close();
    }
  });
});
