/**
 * Cancellation on the real broker, Redis and models: a client whose reply queue vanishes
 * mid-answer, and a fleet that shuts down mid-answer. Either way the session stops at once (not
 * by a timeout), its close frees the worker's cache and the session's Redis record, and — where
 * a client is still there — the client hears why (`device_shutdown`, stop reason `cancelled`)
 * with the tokens so far a prefix of the target-only answer.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { PROMPTS_QUEUE, clientQueue } from '../../broker/topology.ts';
import type { ServedPrompt } from '../../actors/edge/device.ts';
import { ClientInboxSchema, PROTOCOL_VERSION, type ClientInbox, type PromptRequest } from '../../protocol/messages.ts';
import { openRedisStore } from '../../store/redis-store.ts';
import { TEST_PROMPTS, startTestSystem, targetTokens, type TestSystem } from '../helpers/system.ts';
import { waitFor } from '../helpers/wait.ts';

describe('cancellation: a vanished client, a fleet shutting down', function () {
  this.timeout(120_000);
  const maxNewTokens = 400;
  let sys: TestSystem | null = null;
  const served: ServedPrompt[] = [];

  afterEach(async () => {
    await sys?.stop();
    sys = null;
    served.length = 0;
  });

  /** Sends a prompt whose answers go to a queue of the test's own; returns what arrives there. */
  async function rawPrompt(s: TestSystem, prompt: string): Promise<{ requestId: string; queue: string; inbox: ClientInbox[]; tokens: () => number[] }> {
    const requestId = `cx-${randomUUID().slice(0, 8)}`;
    const queue = clientQueue(requestId);
    await s.broker.declareQueue(queue);
    const inbox: ClientInbox[] = [];
    await s.broker.consume(queue, ClientInboxSchema, (m) => void inbox.push(m));
    const request: PromptRequest = { v: PROTOCOL_VERSION, type: 'prompt', requestId, prompt, maxNewTokens, replyTo: queue };
    await s.broker.publish(PROMPTS_QUEUE, request);
    return { requestId, queue, inbox, tokens: () => inbox.flatMap((m) => (m.type === 'chunk' ? m.tokens : [])) };
  }

  async function recordOf(s: TestSystem, sessionId: string): Promise<number[] | null> {
    const store = await openRedisStore({ url: s.config.redisUrl, keyPrefix: s.config.redisKeyPrefix });
    try {
      return await store.getHistory(sessionId);
    } finally {
      await store.close();
    }
  }

  for (const policy of ['wisp', 'centralized'] as const) {
    it(`${policy}: a client whose reply queue is gone has its session cancelled at once, cache and record freed`, async () => {
      sys = await startTestSystem({ devices: 1, workers: 1, hooks: { onServed: (p) => void served.push(p) } }, { scheduler: { policy } });
      const s = sys;
      const p = await rawPrompt(s, TEST_PROMPTS[0]);
      await waitFor(() => p.tokens().length >= 8, 'the first tokens', 30_000, 5);
      await s.broker.deleteQueue(p.queue);
      await waitFor(() => served.some((x) => x.requestId === p.requestId), 'the session to end', 30_000, 10);
      const end = served.find((x) => x.requestId === p.requestId)!;
      expect(end.error).to.equal(null);
      expect(end.stopReason).to.equal('cancelled');
      expect(end.tokens.length, 'stopped well before its 400 tokens').to.be.below(maxNewTokens);
      // The close reached the scheduler (its record deleted) and the worker drops the cache with its next batch.
      await waitFor(async () => (await recordOf(s, end.sessionId)) === null, 'the session record deleted', 10_000, 20);
      expect(Object.keys(s.up.scheduler.snapshot().context.sessions)).to.not.include(end.sessionId);
      const next = await s.client.submit({ prompt: TEST_PROMPTS[1], maxNewTokens: 8 }, 30_000);
      expect(next.error).to.equal(null);
      expect(s.up.workers[0].executor()?.sessions.has(end.sessionId), 'the worker still caches it').to.equal(false);
    });
  }

  it('a client that gives its answers up (WispClient.abandon, Ctrl-C in wisp enqueue) has their sessions cancelled', async () => {
    sys = await startTestSystem({ devices: 2, workers: 1, hooks: { onServed: (p) => void served.push(p) } });
    const s = sys;
    const { connectBroker } = await import('../../broker/connection.ts');
    const { WispClient } = await import('../../actors/client.ts');
    const own = await connectBroker(s.config.amqpUrl, { connectionName: 'abandoning-client' });
    const client = new WispClient(own);
    await client.start();
    try {
      const pending = await Promise.all([0, 3].map((i) => client.send({ prompt: TEST_PROMPTS[i], maxNewTokens }, 60_000)));
      // (A request not yet started when the queue goes is cancelled at its first chunk.)
      await waitFor(() => s.up.fleet.devices.some((d) => d.activeSessions > 0), 'a session under way', 30_000, 5);
      await new Promise((r) => setTimeout(r, 200));
      await client.abandon();
      const results = await Promise.all(pending.map((p) => p.result));
      for (const r of results) expect([r.error?.code, r.stopReason]).to.deep.equal(['cancelled', 'cancelled']);
      await waitFor(() => pending.every((p) => served.some((x) => x.requestId === p.requestId)), 'both sessions to end', 30_000, 10);
      for (const p of pending) {
        const end = served.find((x) => x.requestId === p.requestId)!;
        expect(end.stopReason, `request ${p.requestId}`).to.equal('cancelled');
        expect(end.tokens.length).to.be.below(maxNewTokens);
        await waitFor(async () => (await recordOf(s, end.sessionId)) === null, 'the session record deleted', 10_000, 20);
      }
    } finally {
      await client.close();
      await own.close();
    }
  });

  it('a fleet shutting down mid-answer tells its client at once (device_shutdown, stop reason cancelled) and frees the session', async () => {
    const [expected] = await targetTokens([TEST_PROMPTS[2]], maxNewTokens);
    sys = await startTestSystem({ devices: 1, workers: 1, hooks: { onServed: (p) => void served.push(p) } });
    const s = sys;
    const p = await rawPrompt(s, TEST_PROMPTS[2]);
    await waitFor(() => p.tokens().length >= 8, 'the first tokens', 30_000, 5);
    await s.up.fleet.stop();
    // By the time the fleet stopped, its client had been told.
    const last = p.inbox[p.inbox.length - 1];
    expect(last, JSON.stringify(last)).to.include({ type: 'error', code: 'device_shutdown', stopReason: 'cancelled', requestId: p.requestId });
    const got = p.tokens();
    expect(got.length).to.be.below(maxNewTokens);
    expect(got, 'the tokens so far are the target-only answer\'s beginning').to.deep.equal(expected.slice(0, got.length));
    const end = served.find((x) => x.requestId === p.requestId)!;
    expect(end.stopReason).to.equal('cancelled');
    await waitFor(async () => (await recordOf(s, end.sessionId)) === null, 'the session record deleted', 10_000, 20);
    await waitFor(() => !(end.sessionId in s.up.scheduler.snapshot().context.sessions), 'the scheduler to forget it', 10_000, 20);
  });
});
