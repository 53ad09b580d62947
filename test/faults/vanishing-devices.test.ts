/**
 * Fault 5, devices vanish: 1,000 sessions (WISP_VANISH_SESSIONS to change) are opened by devices
 * that then disappear without closing them — most right after their first token, some in the
 * middle of a round (their reply queue deleted before the answer comes). Checked: the worker
 * frees their KV caches after its idle timeout, the scheduler forgets them, their Redis keys
 * expire, and the worker's KV bytes, its session count, the scheduler's sessions and the Redis
 * key count all come back to their baseline; a real session still works afterwards.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { DeviceInboxSchema, PROTOCOL_VERSION, type SessionOpen, type VerifyRequest } from '../../protocol/messages.ts';
import { SCHEDULER_QUEUE, deviceQueue } from '../../broker/topology.ts';
import type { ConsumerHandle } from '../../broker/connection.ts';
import { TEST_PROMPTS, targetTokens } from '../helpers/system.ts';
import { countKeys, ensureVhost, faultConfig, faultsRedis, startFaultSystem, waitFor, type FaultSystem } from './helpers.ts';

const SESSIONS = Number(process.env.WISP_VANISH_SESSIONS ?? 1_000);
const DEVICES = 20;

const VHOST = 'wisp-faults-vanish';

describe('faults 5: devices vanish without closing their sessions', function () {
  this.timeout(240_000);
  const run = randomUUID().slice(0, 6);
  let sys: FaultSystem;
  let redis: Redis;
  const idleEvictMs = 2_000;
  const sessionTtlMs = 4_000;

  before(async () => {
    await ensureVhost(VHOST);
    sys = await startFaultSystem(faultConfig(VHOST, { worker: { idleEvictMs, heartbeatMs: 200, heartbeatTtlMs: 5_000 }, sessionTtlMs }), { workers: 1, devices: 1 });
    redis = faultsRedis();
  });
  after(async () => {
    await sys?.stop();
    redis?.disconnect();
  });

  it(`frees the KV caches and Redis keys of ${SESSIONS.toLocaleString('en')} abandoned sessions: back to baseline`, async () => {
    const prefix = sys.config.redisKeyPrefix;
    const worker = sys.workers[0].role;
    const executor = () => worker.executor()!;
    const schedulerSessions = () => Object.keys(sys.scheduler.role.snapshot().context.sessions).length;
    const [ref] = await targetTokens([TEST_PROMPTS[0]], 6);

    // Warm up (the estimator's key appears with the first batch), then let that session's keys expire.
    const warm = await sys.client.submit({ prompt: TEST_PROMPTS[0], maxNewTokens: 6 }, 30_000);
    expect(warm.tokens).to.deep.equal(ref);
    // (Its close left a closed: marker for the session TTL; it expires too.)
    await waitFor(async () => (await countKeys(redis, `${prefix}session:`)) + (await countKeys(redis, `${prefix}closed:`)) === 0 && executor().sessions.size === 0, 'the warm-up session to expire', 30_000, 200);
    const baseline = { kvBytes: executor().kvBytes, sessions: executor().sessions.size, scheduler: schedulerSessions(), keys: await countKeys(redis, prefix) };

    // The vanishing devices: each has a reply queue, opens its sessions, hears round 0, and is gone.
    const devices = Array.from({ length: DEVICES }, (_, i) => `gone${run}-${i}`);
    const answered = new Map<string, number>();
    const consumers: ConsumerHandle[] = [];
    for (const d of devices) {
      await sys.broker.declareQueue(deviceQueue(d));
      consumers.push(
        await sys.broker.consume(deviceQueue(d), DeviceInboxSchema, (m) => {
          if (m.type === 'result') answered.set(`${m.sessionId}:${m.round}`, m.token);
        }, { prefetch: 500 }),
      );
    }
    const prompt = [5, 6, 7, 8, 9, 10, 11, 12];
    const open = (i: number): SessionOpen => ({
      v: PROTOCOL_VERSION, type: 'open', sessionId: `gone${run}-s${i}`, deviceId: devices[i % DEVICES], requestId: `gone${run}-r${i}`, draftModel: 'draft-1',
      mode: 'speculative', promptTokens: prompt, maxNewTokens: 32, slo: { ttftMs: 60_000, tpotMs: 10_000 }, sampling: { temperature: 0, topP: 1, seed: 0 },
      replyTo: deviceQueue(devices[i % DEVICES]), sentAtMs: Date.now(),
    });
    // The most the worker held at once (idle eviction starts before the last sessions open).
    const peak = { sessions: 0, kvBytes: 0, scheduler: 0 };
    const watch = setInterval(() => {
      peak.sessions = Math.max(peak.sessions, executor().sessions.size);
      peak.kvBytes = Math.max(peak.kvBytes, executor().kvBytes);
      peak.scheduler = Math.max(peak.scheduler, schedulerSessions());
    }, 50);
    for (let i = 0; i < SESSIONS; i++) await sys.broker.publish(SCHEDULER_QUEUE, open(i));
    await waitFor(() => answered.size >= SESSIONS, `first tokens (${answered.size}/${SESSIONS})`, 120_000, 100);
    // A tenth vanish in the middle of a round: the request is out, the reply queue goes first.
    const midRound = Math.floor(SESSIONS / 10);
    for (let i = 0; i < midRound; i++) {
      const sid = `gone${run}-s${i}`;
      const verify: VerifyRequest = {
        v: PROTOCOL_VERSION, type: 'verify', sessionId: sid, deviceId: devices[i % DEVICES], round: 1, committedLength: prompt.length + 1,
        draftTokens: [answered.get(`${sid}:0`)!, 3], predictedAcceptance: [0.5, 0.5], replyTo: deviceQueue(devices[i % DEVICES]), sentAtMs: Date.now(),
      };
      await sys.broker.publish(SCHEDULER_QUEUE, verify);
    }
    for (const c of consumers) await c.cancel();
    for (const d of devices) await sys.broker.deleteQueue(deviceQueue(d));

    const peakKeys = await countKeys(redis, prefix);
    expect(peak.sessions, 'sessions held at the peak').to.be.greaterThan(0);
    expect(peak.kvBytes, 'KV bytes at the peak').to.be.greaterThan(0);
    expect(peakKeys, 'Redis keys left when the devices are gone').to.be.greaterThan(baseline.keys);

    const startedMs = Date.now();
    let now = baseline;
    await waitFor(
      async () => {
        now = { kvBytes: executor().kvBytes, sessions: executor().sessions.size, scheduler: schedulerSessions(), keys: await countKeys(redis, prefix) };
        return JSON.stringify(now) === JSON.stringify(baseline);
      },
      `baseline ${JSON.stringify(baseline)} (now ${JSON.stringify(now)})`,
      60_000,
      250,
    );
    const reclaimMs = Date.now() - startedMs;
    clearInterval(watch);
    expect(now).to.deep.equal(baseline);

    // The system still serves.
    const after = await sys.client.submit({ prompt: TEST_PROMPTS[0], maxNewTokens: 6 }, 30_000);
    expect(after.tokens).to.deep.equal(ref);
    console.log(
      `      [faults 5] ${SESSIONS} abandoned sessions (${midRound} mid-round): peak ${peak.sessions} caches / ${peak.kvBytes} KV bytes / ${peakKeys} Redis keys / ${peak.scheduler} scheduler sessions; ` +
        `back to baseline ${JSON.stringify(baseline)} ${reclaimMs} ms after the devices left (idle evict ${idleEvictMs} ms, key TTL ${sessionTtlMs} ms)`,
    );
  });
});
