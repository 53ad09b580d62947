/**
 * Fault 3, Redis is emptied mid-run (FLUSHDB on the suite's own Redis database, so other tests'
 * keys survive; to the roles it is the same as FLUSHALL): 16 sessions on 2 workers. Checked: every
 * session completes with exactly the target-only tokens; the workers write each session's record
 * again from what they hold (its whole committed history, so a later take-over still works); the
 * scheduler's estimator statistics are saved again; and a scheduler that starts on the emptied
 * Redis falls back to the estimator's defaults and learns again from the batches it sees.
 */
import { expect } from 'chai';
import type { Redis } from 'ioredis';
import { SCHEDULER_QUEUE } from '../../broker/topology.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { TEST_PROMPTS, historiesAtClose, tapBroker, targetTokens } from '../helpers/system.ts';
import { countKeys, ensureVhost, faultConfig, faultsRedis, startFaultSystem, waitFor, type FaultSystem } from './helpers.ts';

const VHOST = 'wisp-faults-flush';

describe('faults 3: Redis is emptied mid-run', function () {
  this.timeout(180_000);
  let sys: FaultSystem;
  let redis: Redis;
  let verifies = 0;
  /** Each session's history as its close finds it (the close then deletes the record). */
  const atClose = historiesAtClose(() => sys.config);

  before(async () => {
    await ensureVhost(VHOST);
    sys = await startFaultSystem(faultConfig(VHOST, { edge: { verifyTimeoutMs: 10_000, maxRetries: 3 } }), {
      workers: 2,
      devices: 16,
      hooks: {
        beforeForget: atClose.beforeForget,
        wrapBroker: (role, b) =>
          role !== 'edge'
            ? b
            : tapBroker(b, {
                publish: (queue, m) => {
                  if (queue === SCHEDULER_QUEUE && (m as { type?: string }).type === 'verify') verifies++;
                },
              }),
      },
    });
    redis = faultsRedis();
  });
  after(async () => {
    await atClose.close();
    await sys?.stop();
    redis?.disconnect();
  });

  it('completes every session exactly; workers re-publish their sessions; the estimator is saved again', async () => {
    const maxNewTokens = 48;
    const prompts = Array.from({ length: 16 }, (_, i) => TEST_PROMPTS[i % TEST_PROMPTS.length]);
    const expected = await targetTokens(TEST_PROMPTS, maxNewTokens);
    const prefix = sys.config.redisKeyPrefix;
    const running = Promise.all(prompts.map((prompt) => sys.client.submit({ prompt, maxNewTokens }, 120_000)));

    await waitFor(() => verifies >= 32, 'sessions under way', 60_000, 5);
    await waitFor(async () => (await redis.keys(`${prefix}estimator:*`)).length > 0, 'estimator statistics saved', 20_000, 50);
    const keysBefore = await countKeys(redis, prefix);
    await redis.flushdb();
    const keysAfterFlush = await countKeys(redis, prefix);
    const verifiesAtFlush = verifies;

    const results = await running;
    results.forEach((r, i) => {
      expect(r.error, JSON.stringify(r.error)).to.equal(null);
      expect(r.tokens, `session ${i}`).to.deep.equal(expected[i % TEST_PROMPTS.length]);
    });
    // Each session's record was back at its close with its whole history (prompt + every committed token).
    const tok = await loadTokenizer((await ensureModelPair('tiny')).targetDir);
    await waitFor(() => results.every((r) => atClose.histories.has(r.sessionId!)), 'every session closed', 10_000);
    for (let i = 0; i < results.length; i++) {
      expect(atClose.histories.get(results[i].sessionId!), `session ${i}: record re-published`).to.deep.equal([...tok.encode(prompts[i]), ...results[i].tokens]);
    }
    await waitFor(async () => (await redis.keys(`${prefix}estimator:*`)).length > 0, 'estimator statistics saved again', 20_000, 50);
    console.log(
      `      [faults 3] FLUSHDB with 16 sessions running (${keysBefore} keys → ${keysAfterFlush}; ${verifies - verifiesAtFlush} rounds after it): ` +
        `16/16 sessions exact, 16/16 session records re-published with their full history, estimator statistics saved again`,
    );
  });

  it('a scheduler starting on an emptied Redis uses the estimator defaults and relearns', async () => {
    const learned = Object.values(sys.scheduler.role.snapshot().context.workers).map((w) => w.estimator.error.count);
    expect(Math.min(...learned), 'the running scheduler had learned').to.be.greaterThan(0);
    await sys.scheduler.stop();
    await redis.flushdb();
    await sys.restartScheduler();
    await waitFor(() => Object.keys(sys.scheduler.role.snapshot().context.workers).length === 2, 'workers known to the new scheduler', 20_000, 50);
    const fresh = Object.values(sys.scheduler.role.snapshot().context.workers).map((w) => w.estimator.error.count);
    expect(fresh, 'nothing to restore: the defaults').to.deep.equal([0, 0]);
    const results = await Promise.all(TEST_PROMPTS.map((prompt) => sys.client.submit({ prompt, maxNewTokens: 16 }, 60_000)));
    const expected = await targetTokens(TEST_PROMPTS, 16);
    results.forEach((r, i) => expect(r.tokens, `prompt ${i}`).to.deep.equal(expected[i]));
    const relearned = Object.values(sys.scheduler.role.snapshot().context.workers).map((w) => w.estimator.error.count);
    expect(relearned.reduce((a, b) => a + b, 0), 'batches observed since the restart').to.be.greaterThan(0);
    await waitFor(async () => (await redis.keys(`${sys.config.redisKeyPrefix}estimator:*`)).length > 0, 'relearned statistics saved', 20_000, 50);
    console.log(`      [faults 3] restarted scheduler on an empty Redis: estimator observations ${learned.join('/')} before, ${fresh.join('/')} at start, ${relearned.join('/')} after 8 sessions`);
  });
});
