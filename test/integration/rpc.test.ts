/**
 * RPC over direct reply-to against the real RabbitMQ on 127.0.0.1:5672. Every queue is unique
 * to this run and deleted afterwards.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import { z } from 'zod';
import { connectBroker, HandlerError, type BrokerClient, type ConsumerHandle } from '../../broker/connection.ts';
import { createRpcClient, serveRpc, type RpcClient } from '../../broker/rpc.ts';
import { RpcClosedError, RpcDisconnectedError, RpcRemoteError, RpcTimeoutError, UnroutableError } from '../../broker/errors.ts';

const AMQP_URL = process.env.WISP_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
/** Refusals and the simulated disconnect are expected here: keep the test output clean. */
const logger = { info: () => {}, warn: () => {} };
/** Closes one named connection server-side (as a broker failover would); false without rabbitmqctl. */
function closeConnectionByName(name: string): boolean {
  let list: string;
  try {
    list = execFileSync('rabbitmqctl', ['-q', 'list_connections', 'pid', 'client_properties'], { encoding: 'utf8' });
  } catch {
    return false;
  }
  const pid = list.split('\n').find((line) => line.includes(name))?.split('\t')[0];
  if (!pid) throw new Error(`connection ${name} not listed by rabbitmqctl`);
  execFileSync('rabbitmqctl', ['-q', 'close_connection', pid, 'wisp test: simulated loss'], { stdio: 'ignore' });
  return true;
}

const EchoRequest = z.object({ n: z.number().int(), delayMs: z.number().int().min(0).default(0) });
const EchoReply = z.object({ n: z.number().int(), doubled: z.number().int() });

describe('broker/rpc (integration)', () => {
  const run = randomUUID().slice(0, 8);
  const echoQueue = `wisp.test.rpc-echo.${run}`;
  const silentQueue = `wisp.test.rpc-silent.${run}`;
  const deadQueue = `wisp.dead.test-rpc-${run}`;
  let server: BrokerClient;
  let caller: BrokerClient;
  let rpc: RpcClient;
  const handles: ConsumerHandle[] = [];

  before(async () => {
    server = await connectBroker(AMQP_URL, { connectionName: `wisp-test-rpc-server-${run}`, deadLetterQueue: deadQueue, logger });
    caller = await connectBroker(AMQP_URL, { connectionName: `wisp-test-rpc-caller-${run}`, deadLetterQueue: deadQueue, logger });
    handles.push(
      await serveRpc(
        server,
        echoQueue,
        EchoRequest,
        async (req) => {
          if (req.n < 0) throw new HandlerError('unknown_session', `no session for n=${req.n}`);
          await new Promise((r) => setTimeout(r, req.delayMs));
          return { n: req.n, doubled: req.n * 2 };
        },
        { prefetch: 16 },
      ),
    );
    // Takes requests and never answers.
    handles.push(await server.consume(silentQueue, EchoRequest, () => {}, { prefetch: 100 }));
    rpc = await createRpcClient(caller, { timeoutMs: 5_000 });
  });

  after(async () => {
    await rpc?.close();
    for (const h of handles) await h.cancel();
    for (const q of [echoQueue, silentQueue, deadQueue]) await server?.deleteQueue(q).catch(() => {});
    await caller?.close();
    await server?.close();
  });

  it('matches each reply to its request by correlation id, out of order', async () => {
    // Later requests finish first (shorter delays), so replies arrive in reverse order.
    const ns = Array.from({ length: 12 }, (_, i) => i);
    const replies = await Promise.all(ns.map((n) => rpc.request(echoQueue, { n, delayMs: (12 - n) * 5 }, EchoReply)));
    expect(replies).to.deep.equal(ns.map((n) => ({ n, doubled: n * 2 })));
    expect(rpc.pendingCount).to.equal(0);
  });

  it('rejects with RpcTimeoutError when no reply comes in time', async () => {
    const err = await rpc.request(silentQueue, { n: 1 }, EchoReply, { timeoutMs: 200 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(RpcTimeoutError);
    expect((err as RpcTimeoutError).code).to.equal('rpc_timeout');
    expect((err as Error).message).to.equal(`rpc: request to ${silentQueue} got no reply within 200 ms`);
    // The stack points at this test (the error is made where the request starts).
    expect((err as Error).stack).to.contain('rpc.test.ts');
    expect(rpc.pendingCount).to.equal(0);
  });

  it('turns a typed ErrorMessage reply into RpcRemoteError with the remote code', async () => {
    const err = await rpc.request(echoQueue, { n: -3 }, EchoReply).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(RpcRemoteError);
    expect((err as RpcRemoteError).remoteCode).to.equal('unknown_session');
    expect((err as Error).message).to.equal(`rpc: ${echoQueue} answered unknown_session: unknown_session: no session for n=-3`);
  });

  it('rejects with UnroutableError when the queue does not exist', async () => {
    const missing = `wisp.test.rpc-missing.${run}`;
    const err = await rpc.request(missing, { n: 1 }, EchoReply).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(UnroutableError);
    expect((err as Error).message).to.equal(`broker: publish to ${missing}: no such queue (message returned unroutable)`);
  });

  it('fails requests in flight with RpcDisconnectedError on a lost connection, and works again after recovery', async function () {
    const name = `wisp-test-rpc-reconnect-${run}`;
    const client = await connectBroker(AMQP_URL, { connectionName: name, initialDelayMs: 50, maxDelayMs: 500, deadLetterQueue: deadQueue, logger });
    const own = await createRpcClient(client);
    try {
      expect(await own.request(echoQueue, { n: 4 }, EchoReply)).to.deep.equal({ n: 4, doubled: 8 });
      const inFlight = own.request(silentQueue, { n: 5 }, EchoReply, { timeoutMs: 30_000 }).then(
        () => null,
        (e: unknown) => e,
      );
      const reconnected = new Promise<void>((r) => client.once('connect', r));
      if (!closeConnectionByName(name)) this.skip(); // needs rabbitmqctl on this host
      const err = await inFlight;
      expect(err).to.be.instanceOf(RpcDisconnectedError);
      expect((err as Error).message).to.equal(`rpc: request to ${silentQueue} lost: connection dropped before the reply`);
      await reconnected;
      expect(await own.request(echoQueue, { n: 6 }, EchoReply)).to.deep.equal({ n: 6, doubled: 12 });
    } finally {
      await own.close();
      await client.close();
    }
  });

  it('close() rejects every pending request with RpcClosedError', async () => {
    const own = await createRpcClient(caller);
    const pending = [1, 2, 3].map((n) =>
      own.request(silentQueue, { n }, EchoReply, { timeoutMs: 30_000 }).then(
        () => null,
        (e: unknown) => e,
      ),
    );
    expect(own.pendingCount).to.equal(3);
    await own.close();
    const errs = await Promise.all(pending);
    for (const e of errs) {
      expect(e).to.be.instanceOf(RpcClosedError);
      expect((e as Error).message).to.equal(`rpc: request to ${silentQueue} cancelled: rpc client closed`);
    }
    const after = await own.request(echoQueue, { n: 1 }, EchoReply).then(
      () => null,
      (e: unknown) => e,
    );
    expect(after).to.be.instanceOf(RpcClosedError);
  });
});
