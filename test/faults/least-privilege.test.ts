/**
 * Fault 7, least privilege: ops/rabbitmq/apply-permissions.sh applies ops/rabbitmq/definitions.json
 * to a private vhost (one user per role, one per edge fleet, random passwords from the
 * environment), and the whole system runs on those credentials. Checked: sessions are exact;
 * a device credential cannot read another device's queue, publish to a worker's queue, publish
 * as another device, or bind itself into the uplink; a device cannot act on another device's
 * session (the scheduler checks the sender's routing key, the worker checks ownership — from
 * Redis when it does not hold the session); no password appears in any role's log or in a
 * connection error; TLS to the broker and Redis is a setting.
 */
import { expect } from 'chai';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { connect, type ChannelModel } from 'amqplib';
import { connectBroker, type BrokerClient } from '../../broker/connection.ts';
import { PROTOCOL_VERSION, type SessionOpen, type VerifyRequest } from '../../protocol/messages.ts';
import { SCHEDULER_QUEUE, TOPOLOGY, UPLINK_EXCHANGE, deviceQueue, queueSpec, workerQueue } from '../../broker/topology.ts';
import { WispClient } from '../../actors/client.ts';
import { runEdge, runScheduler, runVerifier, type Running } from '../../actors/launch.ts';
import type { VerifierRole } from '../../actors/verifier/role.ts';
import { ConfigError, loadConfig } from '../../config/load.ts';
import { openRedisStore } from '../../store/redis-store.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { ScriptedDevice, TEST_PROMPTS, targetTokens } from '../helpers/system.ts';
import { REPO_ROOT, amqpUrl, captureLogger, faultConfig, faultsRedisUrl, quietBrokerLogger, rabbitmqctl, runScript, waitFor } from './helpers.ts';

const VHOST = 'wisp-lp';
const FLEETS = ['lpa', 'lpb', 'lpx'];

/** Resolves with the error an AMQP operation fails with (it must fail). */
async function refusal(op: () => Promise<unknown>): Promise<string> {
  try {
    await op();
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('expected the broker to refuse this, but it was allowed');
}

describe('faults 7: least privilege (per-role RabbitMQ users, ownership, no secrets)', function () {
  this.timeout(240_000);
  const run = randomUUID().slice(0, 6);
  const pw = {
    scheduler: randomBytes(12).toString('hex'),
    verifier: randomBytes(12).toString('hex'),
    client: randomBytes(12).toString('hex'),
    fleet: randomBytes(12).toString('hex'),
  };
  const url = {
    scheduler: amqpUrl(VHOST, 'wisp-scheduler', pw.scheduler),
    verifier: amqpUrl(VHOST, 'wisp-verifier', pw.verifier),
    client: amqpUrl(VHOST, 'wisp-client', pw.client),
    fleet: (f: string) => amqpUrl(VHOST, f, pw.fleet),
  };
  const logs: string[][] = [];
  const started: Running[] = [];
  let worker: VerifierRole;
  let clientBroker: BrokerClient;
  let client: WispClient;
  const base = faultConfig(VHOST);
  const workerId = `lpw${run}`;
  let restartScheduler: () => Promise<void>;

  before(async () => {
    await runScript('ops/rabbitmq/apply-permissions.sh', ['--vhost', VHOST, ...FLEETS.flatMap((f) => ['--fleet', f])], {
      ...process.env,
      WISP_RMQ_SCHEDULER_PASSWORD: pw.scheduler,
      WISP_RMQ_VERIFIER_PASSWORD: pw.verifier,
      WISP_RMQ_CLIENT_PASSWORD: pw.client,
      WISP_RMQ_FLEET_PASSWORD: pw.fleet,
    });
    // Leftovers of an earlier run in the shared queues would only add noise.
    for (const q of ['wisp.prompts', 'wisp.scheduler']) await rabbitmqctl(['purge_queue', '-p', VHOST, q]).catch(() => {});
    const roleConfig = (amqp: string) => loadConfig({ env: {}, overrides: { ...structuredCloneConfig(base), amqpUrl: amqp } });
    const logged = (role: string) => {
      const c = captureLogger(role);
      logs.push(c.lines);
      return c.logger;
    };
    restartScheduler = async () => {
      await started[0]?.stop();
      started[0] = await runScheduler(roleConfig(url.scheduler), logged('scheduler'));
    };
    started.push(await runScheduler(roleConfig(url.scheduler), logged('scheduler')));
    const v = await runVerifier(roleConfig(url.verifier), { workerId }, logged('verifier'));
    started.push(v);
    worker = v.role;
    started.push(await runEdge(roleConfig(url.fleet('lpa')), { devices: 2, fleetId: 'lpa' }, logged('edge-lpa')));
    started.push(await runEdge(roleConfig(url.fleet('lpb')), { devices: 1, fleetId: 'lpb' }, logged('edge-lpb')));
    clientBroker = await connectBroker(url.client, { connectionName: `lp-client-${run}`, uplink: true, logger: quietBrokerLogger });
    client = new WispClient(clientBroker);
    await client.start();
  });

  after(async () => {
    await client?.close().catch(() => {});
    await clientBroker?.close().catch(() => {});
    for (const r of started.reverse()) await r.stop().catch(() => {});
  });

  it('serves sessions exactly, every role on its own least-privilege credential', async () => {
    const prompts = TEST_PROMPTS.slice(0, 6);
    const maxNewTokens = 12;
    const expected = await targetTokens(prompts, maxNewTokens);
    // Shared prompts, and two addressed to one device (its own prompt queue, bound by the device itself).
    const results = await Promise.all([
      ...prompts.map((prompt) => client.submit({ prompt, maxNewTokens }, 60_000)),
      ...prompts.slice(0, 2).map((prompt) => client.submit({ prompt, maxNewTokens, deviceId: 'lpb-0' }, 60_000)),
    ]);
    results.forEach((r, i) => {
      expect(r.error, JSON.stringify(r.error)).to.equal(null);
      expect(r.tokens, `prompt ${i % prompts.length}`).to.deep.equal(expected[i % prompts.length]);
    });
  });

  it("refuses a device credential another device's queue, a worker's queue, another device's key and the uplink", async () => {
    const conn: ChannelModel = await connect(url.fleet('lpx'));
    conn.on('error', () => {});
    const channel = async () => {
      const ch = await conn.createConfirmChannel();
      ch.on('error', () => {});
      return ch;
    };
    try {
      const readOther = await refusal(async () => (await channel()).consume(deviceQueue('lpa-0'), () => {}));
      expect(readOther).to.match(/ACCESS_REFUSED|403/);
      const readScheduler = await refusal(async () => (await channel()).consume(SCHEDULER_QUEUE, () => {}));
      expect(readScheduler).to.match(/ACCESS_REFUSED|403/);
      const toWorker = await refusal(async () => {
        const ch = await channel();
        ch.sendToQueue(workerQueue(workerId), Buffer.from('{"v":1,"type":"batch"}'));
        await ch.waitForConfirms();
      });
      expect(toWorker).to.match(/ACCESS_REFUSED|403|closed/i);
      const asOther = await refusal(async () => {
        const ch = await channel();
        ch.publish(UPLINK_EXCHANGE, 'scheduler.lpa-0', Buffer.from('{}'));
        await ch.waitForConfirms();
      });
      expect(asOther).to.match(/ACCESS_REFUSED|403|closed/i);
      const eavesdrop = await refusal(async () => {
        const ch = await channel();
        await ch.assertQueue(deviceQueue('lpx-0'), { durable: true, arguments: queueSpec(deviceQueue('lpx-0')).arguments });
        await ch.bindQueue(deviceQueue('lpx-0'), UPLINK_EXCHANGE, 'scheduler.#');
      });
      expect(eavesdrop).to.match(/ACCESS_REFUSED|403/);
      const declareShared = await refusal(async () => (await channel()).assertQueue('wisp.worker.mine', { durable: true }));
      expect(declareShared).to.match(/ACCESS_REFUSED|403/);
    } finally {
      await conn.close().catch(() => {});
    }
  });

  it("refuses a device acting on another device's session (routing key and Redis ownership checked)", async () => {
    const tok = await loadTokenizer((await ensureModelPair('tiny')).targetDir);
    const prompt = tok.encode(TEST_PROMPTS[0]);
    const [ref] = await targetTokens([TEST_PROMPTS[0]], 4);
    const victimBroker = await connectBroker(url.fleet('lpb'), { connectionName: `lp-victim-${run}`, uplink: true, logger: quietBrokerLogger });
    const attackerBroker = await connectBroker(url.fleet('lpx'), { connectionName: `lp-attacker-${run}`, uplink: true, logger: quietBrokerLogger });
    const victim = new ScriptedDevice(victimBroker, 'lpb-7');
    const attacker = new ScriptedDevice(attackerBroker, 'lpx-0');
    const raw = await connect(url.fleet('lpx'));
    raw.on('error', () => {});
    try {
      await victim.start();
      await attacker.start();
      const sid = `lpb-7.${run}`;
      const open: SessionOpen = {
        v: PROTOCOL_VERSION, type: 'open', sessionId: sid, deviceId: victim.deviceId, requestId: sid, draftModel: 'draft-1', mode: 'speculative',
        promptTokens: prompt, maxNewTokens: 4, slo: { ttftMs: 10_000, tpotMs: 10_000 }, sampling: { temperature: 0, topP: 1, seed: 0 },
        replyTo: victim.queue, sentAtMs: Date.now(),
      };
      await victim.send(open);
      const r0 = await victim.next(0, 20_000);
      expect(r0, JSON.stringify(r0)).to.include({ type: 'result', round: 0, token: ref[0] });
      const verify = (over: Partial<VerifyRequest>): VerifyRequest => ({
        v: PROTOCOL_VERSION, type: 'verify', sessionId: sid, deviceId: victim.deviceId, round: 1, committedLength: prompt.length + 1,
        draftTokens: [ref[1]], predictedAcceptance: [0.9], replyTo: victim.queue, sentAtMs: Date.now(), ...over,
      });

      // 1. Its own key, someone else's session: the scheduler knows the owner and refuses.
      await attacker.send(verify({ deviceId: attacker.deviceId, replyTo: attacker.queue }));
      const e1 = await attacker.next(0, 20_000);
      expect(e1, JSON.stringify(e1)).to.include({ type: 'error', code: 'not_owner', sessionId: sid });
      // 2. A restarted scheduler and a worker that no longer holds the session: ownership comes
      //    from Redis, and the attacker cannot take the session over by being first to name it.
      await restartScheduler();
      worker.executor()!.evict(sid);
      await waitFor(() => (started[0] as Running & { role: { snapshot(): { context: { workers: Record<string, unknown> } } } }).role.snapshot().context.workers[workerId] !== undefined, 'the worker known to the new scheduler', 10_000);
      await attacker.send(verify({ deviceId: attacker.deviceId, replyTo: attacker.queue }));
      const e2 = await attacker.next(1, 20_000);
      expect(e2, JSON.stringify(e2)).to.include({ type: 'error', code: 'not_owner', sessionId: sid });
      await attacker.send({ ...open, deviceId: attacker.deviceId, replyTo: attacker.queue, promptTokens: [1, 2] });
      const e3 = await attacker.next(2, 20_000);
      expect(e3, JSON.stringify(e3)).to.include({ type: 'error', code: 'not_owner', sessionId: sid });
      // 3. Its own routing key, the victim's device id in the body: the scheduler refuses, and
      //    the typed error goes to the authenticated sender, never to the victim.
      const ch = await raw.createConfirmChannel();
      ch.publish(UPLINK_EXCHANGE, `scheduler.${attacker.deviceId}`, Buffer.from(JSON.stringify(verify({ round: 2 }))), { persistent: true });
      await ch.waitForConfirms();
      const e4 = await attacker.next(3, 20_000);
      expect(e4, JSON.stringify(e4)).to.include({ type: 'error', code: 'not_owner' });
      expect(e4 && e4.type === 'error' ? e4.message : '').to.include('may not send verify requests for device lpb-7');

      // The victim's session is untouched: round 1 commits the draft plus the target's token.
      await victim.send(verify({}));
      const r1 = await victim.next(1, 20_000);
      expect(r1, JSON.stringify(r1)).to.include({ type: 'result', round: 1, accepted: 1, token: ref[2], committedLength: prompt.length + 3 });
      expect(victim.inbox.filter((m) => m.type === 'error'), 'the victim heard nothing of the attacks').to.deep.equal([]);
      await victim.send({ v: PROTOCOL_VERSION, type: 'close', sessionId: sid, deviceId: victim.deviceId, reason: 'done' });
    } finally {
      await victim.stop().catch(() => {});
      await attacker.stop().catch(() => {});
      await victimBroker.close().catch(() => {});
      await attackerBroker.close().catch(() => {});
      await raw.close().catch(() => {});
    }
  });

  it('keeps every password out of the logs, errors and code; the shipped definitions hold no secret', async () => {
    const secrets = Object.values(pw);
    const all = logs.flat().join('');
    expect(all.length, 'the roles did log').to.be.greaterThan(0);
    for (const s of secrets) expect(all.includes(s), 'a password in a role log').to.equal(false);

    // A refused login names the URL with the password masked.
    const wrong = randomBytes(12).toString('hex');
    const refused = await refusal(() => connectBroker(amqpUrl(VHOST, 'wisp-scheduler', wrong), { initialRetries: 0, logger: quietBrokerLogger }));
    expect(refused).to.include('wisp-scheduler');
    expect(refused.includes(wrong), 'password in a connection error').to.equal(false);
    // Redis: a password in the URL never reaches an error or a log line either.
    const redisSecret = randomBytes(12).toString('hex');
    const redisUrl = new URL(faultsRedisUrl());
    redisUrl.password = redisSecret;
    const redisErrors: string[] = [];
    const store = await openRedisStore({ url: redisUrl.toString(), connectTimeoutMs: 2_000 }).catch((err: Error) => {
      redisErrors.push(err.message);
      return null;
    });
    store?.on('error', (err: Error) => redisErrors.push(err.message));
    await store?.close();
    for (const m of redisErrors) expect(m.includes(redisSecret), `password in a Redis error: ${m}`).to.equal(false);

    // No credential in the product code: no URL with user info outside the tests.
    const offenders: string[] = [];
    const walk = (dir: string) => {
      for (const name of readdirSync(dir)) {
        if (['node_modules', '.git', '.wisp', '.scratch', 'test'].includes(name)) continue;
        const path = join(dir, name);
        if (statSync(path).isDirectory()) walk(path);
        else if (/\.(ts|js|mjs|json|sh)$/.test(name) && !name.endsWith('package-lock.json')) {
          // Code, not comments (a comment may show the URL shape with placeholders).
          const code = readFileSync(path, 'utf8')
            .split('\n')
            .filter((line) => !/^\s*(\/\/|\*|\/\*|#)/.test(line));
          if (code.some((line) => /(amqps?|rediss?):\/\/[^\s:@/'"`]+:[^\s@/'"`]+@/.test(line))) offenders.push(relative(REPO_ROOT, path));
        }
      }
    };
    walk(REPO_ROOT);
    expect(offenders, 'files with a credential in a URL').to.deep.equal([]);
    const defs = JSON.parse(readFileSync(join(REPO_ROOT, 'ops/rabbitmq/definitions.json'), 'utf8')) as { users: { password_hash: string }[] };
    expect(defs.users.every((u) => u.password_hash === ''), 'definitions.json carries no password hash').to.equal(true);
  });

  it('ships definitions that match the topology the code declares', () => {
    const defs = JSON.parse(readFileSync(join(REPO_ROOT, 'ops/rabbitmq/definitions.json'), 'utf8')) as {
      queues: { name: string; durable: boolean; arguments: Record<string, unknown> }[];
      exchanges: { name: string; type: string; durable: boolean }[];
      bindings: { source: string; destination: string; routing_key: string }[];
    };
    for (const q of TOPOLOGY.queues) {
      const d = defs.queues.find((x) => x.name === q.name);
      expect(d, `queue ${q.name} in the definitions`).to.not.equal(undefined);
      expect({ durable: d!.durable, arguments: d!.arguments }).to.deep.equal({ durable: q.durable, arguments: q.arguments });
      if (q.uplinkKey) expect(defs.bindings.some((b) => b.source === UPLINK_EXCHANGE && b.destination === q.name && b.routing_key === q.uplinkKey)).to.equal(true);
    }
    for (const e of TOPOLOGY.exchanges) expect(defs.exchanges.find((x) => x.name === e.name)).to.include({ type: e.type, durable: e.durable });
  });

  it('makes TLS to the broker and to Redis a setting', () => {
    const tls = loadConfig({ env: {}, overrides: { amqpUrl: 'amqps://broker.example:5671', amqpTls: { enabled: true, caPath: '/etc/ssl/ca.pem' }, redisUrl: 'rediss://redis.example:6380', redisTls: { enabled: true } } });
    expect(tls.amqpTls.enabled && tls.redisTls.enabled).to.equal(true);
    const env = loadConfig({ env: { WISP_AMQP_URL: 'amqps://b:5671', WISP_AMQP_TLS: 'true', WISP_REDIS_URL: 'rediss://r:6380', WISP_REDIS_TLS: 'true', WISP_REDIS_CA: '/ca.pem' } });
    expect(env.redisTls).to.deep.equal({ enabled: true, caPath: '/ca.pem' });
    expect(() => loadConfig({ env: {}, overrides: { redisTls: { enabled: true } } })).to.throw(ConfigError, 'redisTls.enabled needs a rediss:// URL');
  });
});

/** The parts of a loaded (frozen) config as a plain object, to use as overrides. */
function structuredCloneConfig<T>(c: T): T {
  return JSON.parse(JSON.stringify(c)) as T;
}

