/**
 * docs/design.md §3: a duplicate or stale VerifyRequest / VerifyResult (same or older round) changes
 * nothing. Two angles, on the real broker, Redis and forged tiny models:
 *
 * 1. A scripted device talks the wire protocol to the scheduler and a worker, so the test
 *    chooses every round's drafts (from the target's own greedy output) and sends duplicates,
 *    stale rounds, a duplicate open, and a stale round after close; it checks each answer and
 *    the committed history in Redis.
 * 2. Real edge devices whose every VerifyRequest is published twice plus the previous round's
 *    request again, and a worker whose every VerifyResult is published twice plus the
 *    previous result again: every session still produces exactly the target-only tokens.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { PROTOCOL_VERSION, type DeviceInbox, type SessionOpen, type VerifyBatch, type VerifyRequest, type VerifyResult } from '../../protocol/messages.ts';
import { workerQueue } from '../../broker/topology.ts';
import { openRedisStore, type RedisStore } from '../../store/redis-store.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { generateTarget } from '../../inference/speculative.ts';
import { waitFor } from '../helpers/wait.ts';
import { processMetrics } from '../../telemetry/metrics.ts';
import { ScriptedDevice, TEST_PROMPTS as PROMPTS, historiesAtClose, startTestSystem, tapBroker, targetTokens as referenceTokens, type TestSystem } from '../helpers/system.ts';

function asResult(m: DeviceInbox | null, what: string): VerifyResult {
  expect(m, `${what}: no answer`).to.not.equal(null);
  expect(m!.type, `${what}: ${JSON.stringify(m)}`).to.equal('result');
  return m as VerifyResult;
}

describe('duplicates and stale rounds change nothing', function () {
  this.timeout(60_000);

  describe('at the wire level (a scripted device, scheduler, one worker)', () => {
    let sys: TestSystem;
    let dev: ScriptedDevice;
    let store: RedisStore;
    let prompt: number[];
    let ref: number[];
    const run = randomUUID().slice(0, 8);
    const sessionId = `dup-${run}`;
    const slo = { ttftMs: 10_000, tpotMs: 10_000 };
    const sampling = { temperature: 0, topP: 1, seed: 0 };

    before(async () => {
      const pair = await ensureModelPair('tiny');
      const tok = await loadTokenizer(pair.targetDir);
      prompt = tok.encode('the quick brown fox');
      const target = await loadDecoder(pair.targetDir, { threads: 1 });
      try {
        ref = (await generateTarget(target, prompt, { maxNewTokens: 12, sampling, eosTokenId: null })).tokens;
      } finally {
        await target.dispose();
      }
      sys = await startTestSystem({ devices: 1, workers: 1 });
      store = await openRedisStore({ url: sys.config.redisUrl, keyPrefix: sys.config.redisKeyPrefix });
      dev = new ScriptedDevice(sys.broker, `dupdev-${run}`);
      await dev.start();
    });
    after(async () => {
      await dev?.stop();
      await store?.close();
      await sys?.stop();
    });

    const open = (): SessionOpen => ({
      v: PROTOCOL_VERSION,
      type: 'open',
      sessionId,
      deviceId: dev.deviceId,
      requestId: `req-${run}`,
      draftModel: 'draft-1',
      mode: 'speculative',
      promptTokens: prompt,
      maxNewTokens: 12,
      slo,
      sampling,
      replyTo: dev.queue,
      sentAtMs: Date.now(),
    });
    const verify = (round: number, committedLength: number, draftTokens: number[]): VerifyRequest => ({
      v: PROTOCOL_VERSION,
      type: 'verify',
      sessionId,
      deviceId: dev.deviceId,
      round,
      committedLength,
      draftTokens,
      predictedAcceptance: draftTokens.map(() => 0.5),
      replyTo: dev.queue,
      sentAtMs: Date.now(),
    });
    const history = async () => (await store.getHistory(sessionId)) ?? [];
    /** Fields that must be equal between an answer and its replay (timings may not). */
    const decision = (r: VerifyResult) => ({ round: r.round, accepted: r.accepted, verified: r.verified, token: r.token, committedLength: r.committedLength });

    it('replays the recorded answer to a duplicate, ignores stale rounds, and keeps the history', async () => {
      const P = prompt.length;
      // Round 0: the first target token.
      await dev.send(open());
      const r0 = asResult(await dev.next(0), 'open');
      expect(r0.round).to.equal(0);
      expect(r0.token).to.equal(ref[0]);

      // A duplicate open: the same answer again, no second prefill.
      await dev.send(open());
      const r0dup = asResult(await dev.next(1), 'duplicate open');
      expect(decision(r0dup)).to.deep.equal(decision(r0));
      expect(await history()).to.deep.equal([...prompt, ref[0]]);

      // Round 1: two right drafts and a wrong one → 2 accepted, the target's correction.
      const wrong = (ref[3] + 1) % 1024;
      const req1 = verify(1, P + 1, [ref[1], ref[2], wrong]);
      await dev.send(req1);
      const r1 = asResult(await dev.next(2), 'round 1');
      expect(decision(r1)).to.deep.equal({ round: 1, accepted: 2, verified: 3, token: ref[3], committedLength: P + 4 });
      const after1 = await history();
      expect(after1).to.deep.equal([...prompt, ...ref.slice(0, 4)]);

      // The same round again (a device retry or a broker redelivery): the recorded answer, nothing committed.
      await dev.send(req1);
      const r1dup = asResult(await dev.next(3), 'duplicate round 1');
      expect(decision(r1dup)).to.deep.equal(decision(r1));
      expect(await history()).to.deep.equal(after1);

      // Round 2 goes on from there.
      const req2 = verify(2, P + 4, [ref[4], ref[5]]);
      await dev.send(req2);
      const r2 = asResult(await dev.next(4), 'round 2');
      expect(decision(r2)).to.deep.equal({ round: 2, accepted: 2, verified: 2, token: ref[6], committedLength: P + 7 });
      const after2 = await history();

      // Stale: round 1 after round 2, and a new round number on an old committed length. No answer, no change.
      await dev.send(req1);
      await dev.send(verify(3, P + 4, [ref[4]]));
      expect(await dev.next(5, 700), 'stale rounds are not answered').to.equal(null);
      expect(await history()).to.deep.equal(after2);

      // The session still works: round 3 on the real committed length.
      const r3 = asResult((await dev.send(verify(3, P + 7, [ref[7]])), await dev.next(5)), 'round 3');
      expect(decision(r3)).to.deep.equal({ round: 3, accepted: 1, verified: 1, token: ref[8], committedLength: P + 9 });
      expect(await history()).to.deep.equal([...prompt, ...ref.slice(0, 9)]);
    });

    it('a worker that no longer holds the session answers a retried round from the ledger, without rebuilding it', async () => {
      // A retried round reaching a worker that dropped the session's cache (the batch evicts it first).
      const worker = sys.up.workers[0];
      const batch = (round: number, committedLength: number, drafts: number[]): VerifyBatch => ({
        v: PROTOCOL_VERSION,
        type: 'batch',
        batchId: `dupbatch-${run}-${round}`,
        workerId: worker.workerId,
        items: [{ request: verify(round, committedLength, drafts), verifyTokens: drafts.length, arrivedAtMs: Date.now() }],
        predictedMs: 1,
        dispatchedAtMs: Date.now(),
        evict: [sessionId],
      });
      const before = dev.inbox.length;
      await sys.broker.publish(workerQueue(worker.workerId), batch(3, prompt.length + 7, [ref[7]]));
      const replay = asResult(await dev.next(before), 'retried round 3');
      expect(decision(replay)).to.deep.equal({ round: 3, accepted: 1, verified: 1, token: ref[8], committedLength: prompt.length + 9 });
      await sys.broker.publish(workerQueue(worker.workerId), batch(2, prompt.length + 4, [ref[4], ref[5]]));
      expect(await dev.next(before + 1, 700), 'older round: no answer').to.equal(null);
      expect(worker.executor()?.sessions.has(sessionId), 'worker cache').to.equal(false);
      expect(await history()).to.deep.equal([...prompt, ...ref.slice(0, 9)]);
    });

    it('a close deletes the session\'s record; a stale round after it is neither answered nor brings the session back', async () => {
      await dev.send({ v: PROTOCOL_VERSION, type: 'close', sessionId, deviceId: dev.deviceId, reason: 'done' });
      const before = dev.inbox.length;
      // The close deletes the session's record (history and metadata) in Redis.
      await waitFor(async () => (await history()).length === 0, 'the record deleted', 5_000);
      await dev.send(verify(2, prompt.length + 4, [ref[4], ref[5]]));
      await dev.send(verify(3, prompt.length + 7, [ref[7]]));
      expect(await dev.next(before, 700), 'no answer after close').to.equal(null);
      expect(await history(), 'nothing written back').to.deep.equal([]);
      // Let go on purpose, and counted: the stale rounds before the close and these after it.
      const series = await processMetrics().text();
      const ignored = (role: string, reason: string) => Number(new RegExp(`^wisp_ignored_messages_total\\{role="${role}",reason="${reason}"\\} (\\d+)`, 'm').exec(series)?.[1] ?? 0);
      expect(ignored('scheduler', 'ended_session'), 'requests of the closed session').to.be.at.least(2);
      expect(ignored('verifier', 'stale_round') + ignored('verifier', 'stale_length'), 'stale rounds at the worker').to.be.at.least(1);
      // (The worker drops its cache when the eviction reaches it with its next batch.)
      expect(Object.keys(sys.up.scheduler.snapshot().context.sessions), 'scheduler sessions').to.not.include(sessionId);
    });
  });

  describe('with real devices: every request and result sent twice, plus the previous one again', () => {
    let sys: TestSystem;
    const maxNewTokens = 16;
    const counts = { requestCopies: 0, resultCopies: 0 };

    after(async () => {
      await sys?.stop();
    });

    it('every session still produces exactly the target-only tokens', async () => {
      const prompts = PROMPTS.slice(0, 4);
      const expected = await referenceTokens(prompts, maxNewTokens);
      const lastRequest = new Map<string, unknown>();
      const lastResult = new Map<string, unknown>();
      const atClose = historiesAtClose(() => sys.config);
      sys = await startTestSystem(
        {
          devices: 4,
          workers: 1,
          hooks: {
            beforeForget: atClose.beforeForget,
            wrapBroker: (role, broker) => {
              if (role === 'edge') {
                return tapBroker(broker, {
                  publish: (queue, m) => {
                    const msg = m as { type?: string; sessionId?: string };
                    if (msg.type !== 'verify' || !msg.sessionId) return;
                    const prev = lastRequest.get(msg.sessionId);
                    lastRequest.set(msg.sessionId, m);
                    counts.requestCopies += prev ? 2 : 1;
                    return prev ? [[queue, m], [queue, m], [queue, prev]] : [[queue, m], [queue, m]];
                  },
                });
              }
              if (role === 'verifier') {
                return tapBroker(broker, {
                  publish: (queue, m) => {
                    const msg = m as { type?: string; sessionId?: string };
                    if (msg.type !== 'result' || !msg.sessionId) return;
                    const prev = lastResult.get(msg.sessionId);
                    lastResult.set(msg.sessionId, m);
                    counts.resultCopies += prev ? 2 : 1;
                    return prev ? [[queue, m], [queue, m], [queue, prev]] : [[queue, m], [queue, m]];
                  },
                });
              }
              return broker;
            },
          },
        },
      );
      const results = await Promise.all(prompts.map((prompt) => sys.client.submit({ prompt, maxNewTokens }, 40_000)));
      results.forEach((r, i) => {
        expect(r.error, `prompt ${i}: ${JSON.stringify(r.error)}`).to.equal(null);
        expect(r.tokens, `prompt ${i} "${prompts[i]}"`).to.deep.equal(expected[i]);
      });
      expect(counts.requestCopies, 'extra VerifyRequests sent').to.be.greaterThan(0);
      expect(counts.resultCopies, 'extra VerifyResults sent').to.be.greaterThan(0);
      // The history in Redis at each close is the prompt plus the generated tokens, nothing doubled.
      const tok = await loadTokenizer((await ensureModelPair('tiny')).targetDir);
      try {
        await waitFor(() => results.every((r) => atClose.histories.has(r.sessionId!)), 'every session closed', 10_000);
        for (let i = 0; i < results.length; i++) {
          const h = atClose.histories.get(results[i].sessionId!);
          const want = [...tok.encode(prompts[i]), ...expected[i]];
          expect(h?.slice(0, want.length), `history of prompt ${i}`).to.deep.equal(want);
          expect(h!.length - want.length, `history of prompt ${i} is at most one token longer`).to.be.at.most(1);
        }
      } finally {
        await atClose.close();
      }
    });
  });
});
