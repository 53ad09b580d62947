/**
 * The Redis store against the real Redis on 127.0.0.1:6379. Every key lives under a prefix
 * unique to this run; all of them are deleted afterwards.
 */
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import {
  HistoryConflictError,
  SessionClosedError,
  StoreUnavailableError,
  UnknownSessionError,
  openRedisStore,
  type RedisStore,
  type WorkerHeartbeat,
} from '../../store/redis-store.ts';

const REDIS_URL = process.env.WISP_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** Polls `fn` until it returns true (Redis expiry is lazy plus a 100 ms active cycle). */
async function eventually(fn: () => Promise<boolean>, timeoutMs = 3_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fn()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return fn();
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => null,
    (e: unknown) => e,
  );
}

describe('store/redis-store (integration)', () => {
  const prefix = `wisp-test-${randomUUID().slice(0, 8)}:`;
  let store: RedisStore;
  let shortLived: RedisStore;
  const open = (id: string, prompt: number[] = [1, 2, 3]) =>
    store.openSession(id, { deviceId: 'd-1', model: 'tiny-target', workerId: 'w-1', promptTokens: prompt, nowMs: 1_000 });

  before(async () => {
    store = await openRedisStore({ url: REDIS_URL, keyPrefix: prefix, sessionTtlMs: 60_000 });
    shortLived = await openRedisStore({ url: REDIS_URL, keyPrefix: prefix, sessionTtlMs: 50 });
  });

  after(async () => {
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await store.client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      keys.push(...batch);
    } while (cursor !== '0');
    if (keys.length > 0) await store.client.del(...keys);
    await shortLived?.close();
    await store?.close();
  });

  it('opens a session with its prompt as committed history, idempotently', async () => {
    expect(await open('s-open')).to.deep.equal({ created: true, committedLength: 3 });
    expect(await open('s-open', [9, 9])).to.deep.equal({ created: false, committedLength: 3 });
    expect(await store.getHistory('s-open')).to.deep.equal([1, 2, 3]);
    expect(await store.getSession('s-open')).to.deep.equal({
      sessionId: 's-open',
      workerId: 'w-1',
      deviceId: 'd-1',
      model: 'tiny-target',
      committedLength: 3,
      kvBytes: 0,
      lastAccessMs: 1_000,
      attrs: '',
      lastRound: -1,
      lastResult: '',
      handedBackAt: -1,
    });
  });

  it('appends committed tokens and metadata atomically; a redelivered commit is a no-op; a different one conflicts', async () => {
    await open('s-commit');
    expect(await store.commitTokens('s-commit', { fromLength: 3, tokens: [4, 5], kvBytes: 4096, nowMs: 2_000 })).to.deep.equal({
      committedLength: 5,
      applied: true,
    });
    // The same round again (redelivery): nothing changes.
    expect(await store.commitTokens('s-commit', { fromLength: 3, tokens: [4, 5], nowMs: 3_000 })).to.deep.equal({ committedLength: 5, applied: false });
    const conflict = await rejection(store.commitTokens('s-commit', { fromLength: 3, tokens: [4, 7] }));
    expect(conflict).to.be.instanceOf(HistoryConflictError);
    expect((conflict as Error).message).to.equal('store: session s-commit: commit of 2 token(s) at 3 conflicts with the stored history (length 5)');
    const gap = await rejection(store.commitTokens('s-commit', { fromLength: 7, tokens: [8] }));
    expect(gap).to.be.instanceOf(HistoryConflictError);
    expect((gap as HistoryConflictError).storedLength).to.equal(5);

    expect(await store.commitTokens('s-commit', { fromLength: 5, tokens: [6], workerId: 'w-2', nowMs: 4_000 })).to.deep.equal({
      committedLength: 6,
      applied: true,
    });
    expect(await store.getHistory('s-commit')).to.deep.equal([1, 2, 3, 4, 5, 6]);
    expect(await store.getHistory('s-commit', 4)).to.deep.equal([5, 6]);
    expect(await store.getSession('s-commit')).to.include({ committedLength: 6, kvBytes: 4096, workerId: 'w-2', lastAccessMs: 4_000, handedBackAt: -1 });
    // A hand-back (adaptive serving) records where the server's decoding ended.
    await store.commitTokens('s-commit', { fromLength: 6, tokens: [7, 8], handBack: true });
    expect(await store.getSession('s-commit')).to.include({ committedLength: 8, handedBackAt: 8 });

    const unknown = await rejection(store.commitTokens('s-none', { fromLength: 1, tokens: [1] }));
    expect(unknown).to.be.instanceOf(UnknownSessionError);
    expect((unknown as Error).message).to.equal('store: session s-none does not exist (closed or expired)');
  });

  it('lets exactly one of two racing commits at the same position win', async () => {
    await open('s-race');
    const results = await Promise.allSettled([
      store.commitTokens('s-race', { fromLength: 3, tokens: [10, 11] }),
      store.commitTokens('s-race', { fromLength: 3, tokens: [20] }),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r) => r.status === 'rejected');
    expect(won).to.have.length(1);
    expect(lost).to.have.length(1);
    expect((lost[0] as PromiseRejectedResult).reason).to.be.instanceOf(HistoryConflictError);
    const history = await store.getHistory('s-race');
    expect([[1, 2, 3, 10, 11].join(), [1, 2, 3, 20].join()]).to.include(history?.join());
  });

  it('stores long prompts (beyond one Lua unpack) in order', async () => {
    const prompt = Array.from({ length: 10_000 }, (_, i) => i % 2048);
    expect(await open('s-long', prompt)).to.deep.equal({ created: true, committedLength: 10_000 });
    expect(await store.getHistory('s-long')).to.deep.equal(prompt);
  });

  it('refreshes the TTL on every access and lets untouched sessions expire', async () => {
    await open('s-ttl');
    const metaKey = `${prefix}session:{s-ttl}`;
    const tokensKey = `${prefix}session:{s-ttl}:tokens`;
    await store.client.pexpire(metaKey, 1_000);
    await store.client.pexpire(tokensKey, 1_000);
    await store.getSession('s-ttl');
    expect(await store.client.pttl(metaKey)).to.be.greaterThan(1_000);
    expect(await store.client.pttl(tokensKey)).to.be.greaterThan(1_000);

    await shortLived.openSession('s-expire', { deviceId: 'd', model: 'm', workerId: 'w', promptTokens: [1] });
    // Polled with EXISTS: reading through the store would refresh the TTL and keep it alive.
    const keys = [`${prefix}session:{s-expire}`, `${prefix}session:{s-expire}:tokens`];
    expect(await eventually(async () => (await store.client.exists(...keys)) === 0)).to.equal(true);
    expect(await store.getSession('s-expire')).to.equal(null);
    expect(await store.getHistory('s-expire')).to.equal(null);
  });

  it('moves a session to another worker and deletes it on close', async () => {
    await open('s-move');
    expect(await store.moveSession('s-move', 'w-9', 0, 5_000)).to.equal(true);
    expect(await store.getSession('s-move')).to.include({ workerId: 'w-9', kvBytes: 0, lastAccessMs: 5_000 });
    expect(await store.deleteSession('s-move')).to.equal(true);
    expect(await store.getSession('s-move')).to.equal(null);
    expect(await store.client.exists(`${prefix}session:{s-move}`, `${prefix}session:{s-move}:tokens`)).to.equal(0);
    expect(await store.deleteSession('s-move')).to.equal(false);
    expect(await store.moveSession('s-move', 'w-9')).to.equal(false);
    // A worker still serving the closed session is told it was closed (it stops), not that it
    // is unknown (it would write the record again, as after a FLUSHDB); the marker expires.
    const closed = await rejection(store.commitTokens('s-move', { fromLength: 3, tokens: [4] }));
    expect(closed).to.be.instanceOf(SessionClosedError);
    expect(await store.client.exists(`${prefix}session:{s-move}`)).to.equal(0);
    expect(await store.client.pttl(`${prefix}closed:{s-move}`)).to.be.within(1, store.sessionTtlMs);
    // A session opened again under that id is a live one: the marker goes.
    await open('s-move');
    expect(await store.client.exists(`${prefix}closed:{s-move}`)).to.equal(0);
    expect(await store.commitTokens('s-move', { fromLength: 3, tokens: [4] })).to.deep.equal({ committedLength: 4, applied: true });
  });

  it('lists live workers by heartbeat and prunes expired ones', async () => {
    const info = (model: string): WorkerHeartbeat => ({ model, state: 'ready', sessions: 2, kvBytes: 1024, sentAtMs: 7 });
    await store.setWorkerHeartbeat('w-a', info('tiny-target'), 60_000);
    await store.setWorkerHeartbeat('w-b', info('tiny-target'), 30);
    await store.setWorkerHeartbeat('w-c', info('other'), 60_000);
    await store.removeWorker('w-c');
    expect(await eventually(async () => (await store.listLiveWorkers()).length === 1)).to.equal(true);
    expect(await store.listLiveWorkers()).to.deep.equal([{ workerId: 'w-a', info: info('tiny-target') }]);
    expect(await store.client.smembers(`${prefix}workers`)).to.deep.equal(['w-a']);
  });

  it('saves and loads estimator statistics per model and worker', async () => {
    const state = { coef: [0.4, 0.02, 1.1], n: 57, errMs: 0.3 };
    expect(await store.loadEstimatorState('tiny-target', 'w-a')).to.equal(null);
    await store.saveEstimatorState('tiny-target', 'w-a', state);
    expect(await store.loadEstimatorState('tiny-target', 'w-a')).to.deep.equal(state);
    expect(await store.loadEstimatorState('tiny-target', 'w-b')).to.equal(null);
  });

  it('reconnects after its connection is killed server-side, reporting the error as an event', async () => {
    const name = `wisp-test-${randomUUID().slice(0, 8)}`;
    const own = await openRedisStore({ url: REDIS_URL, keyPrefix: prefix, connectionName: name });
    try {
      own.on('error', () => {}); // a reset may surface here as an event; it must never throw
      const reconnecting = new Promise<number>((r) => own.once('reconnecting', r));
      const ready = new Promise<void>((r) => own.once('ready', r));
      await own.saveEstimatorState('m', 'w-reconnect', { n: 1 });
      const list = await store.client.client('LIST');
      const id = String(list)
        .split('\n')
        .find((line) => line.includes(` name=${name} `))
        ?.match(/^id=(\d+)/)?.[1];
      expect(id, 'own connection listed by CLIENT LIST').to.be.a('string');
      await store.client.client('KILL', 'ID', id as string);
      expect(await reconnecting).to.be.a('number');
      await ready;
      expect(await own.loadEstimatorState('m', 'w-reconnect')).to.deep.equal({ n: 1 });
    } finally {
      await own.close();
    }
  });

  it('fails to open with StoreUnavailableError when Redis is unreachable, without crashing', async () => {
    const err = await rejection(openRedisStore({ url: 'redis://user:pw@127.0.0.1:1', connectTimeoutMs: 300, keyPrefix: prefix }));
    expect(err).to.be.instanceOf(StoreUnavailableError);
    expect((err as StoreUnavailableError).code).to.equal('store_unavailable');
    expect((err as Error).message).to.match(/^store: cannot connect to redis:\/\/user:\*\*\*@127\.0\.0\.1:1: /);
  });
});
