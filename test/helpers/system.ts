/**
 * Starts a whole wisp (scheduler, workers, edge fleet) against the local RabbitMQ and Redis for
 * an integration test, with a unique Redis prefix and emptied shared queues, plus a client.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { connectBroker, type BrokerClient, type ConsumerHandle } from '../../broker/connection.ts';
import { PROMPTS_QUEUE, SCHEDULER_QUEUE, deviceQueue } from '../../broker/topology.ts';
import { WispClient } from '../../actors/client.ts';
import { runUp, type UpOptions } from '../../actors/launch.ts';
import { loadConfig, type DeepPartial } from '../../config/load.ts';
import type { WispConfig } from '../../config/schema.ts';
import { DeviceInboxSchema, type DeviceInbox, type Sampling } from '../../protocol/messages.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { generateTarget } from '../../inference/speculative.ts';
import type { DecoderRunner } from '../../inference/types.ts';
import { openRedisStore, type RedisStore } from '../../store/redis-store.ts';

import { testAmqpUrl } from './vhost.ts';
import { SHORT_PROMPTS } from '../../bench/live.ts';

/** The broker in this test process's private vhost (see vhost.ts). */
export const AMQP_URL = process.env.WISP_AMQP_URL ?? testAmqpUrl();
export const REDIS_URL = process.env.WISP_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** Test config: local services, a private Redis prefix, no emulated delays, quiet logs. */
export function testConfig(overrides: DeepPartial<WispConfig> = {}): WispConfig {
  const base: DeepPartial<WispConfig> = {
    amqpUrl: AMQP_URL,
    redisUrl: REDIS_URL,
    redisKeyPrefix: `wisp-test-${randomUUID().slice(0, 8)}:`,
    logLevel: 'silent',
    timeScale: 0,
    models: { preset: 'tiny', threads: 1 },
    worker: { heartbeatMs: 200, heartbeatTtlMs: 2_000 },
    edge: { verifyTimeoutMs: 3_000, maxRetries: 3 },
  };
  return loadConfig({ env: {}, overrides: deepMerge(base, overrides) as DeepPartial<WispConfig> });
}

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && prev && typeof prev === 'object' ? deepMerge(prev as Record<string, unknown>, v as Record<string, unknown>) : v;
  }
  return out;
}

/** Empties the shared queues so messages left by an earlier run cannot leak into this one. */
export async function purgeSharedQueues(broker: BrokerClient): Promise<void> {
  await broker.purgeQueue(PROMPTS_QUEUE);
  await broker.purgeQueue(SCHEDULER_QUEUE);
}

export interface TestSystem {
  config: WispConfig;
  client: WispClient;
  broker: BrokerClient;
  up: Awaited<ReturnType<typeof runUp>>;
  stop(): Promise<void>;
}

export async function startTestSystem(up: UpOptions, overrides: DeepPartial<WispConfig> = {}): Promise<TestSystem> {
  const config = testConfig(overrides);
  const broker = await connectBroker(config.amqpUrl, { connectionName: 'test-client' });
  await purgeSharedQueues(broker);
  const running = await runUp(config, up);
  const client = new WispClient(broker);
  await client.start();
  return {
    config,
    client,
    broker,
    up: running,
    async stop() {
      await client.close();
      await running.stop();
      await broker.close();
    },
  };
}

// The tap lives beside the broker client: the overhead benchmark measures through it too.
export { tapBroker, type BrokerTap } from '../../broker/tap.ts';

/** Short prompts for end-to-end tests (shared with the overhead benchmark). */
export const TEST_PROMPTS = SHORT_PROMPTS;

/** The tiny preset's target and the draft the test devices run (their profile's), one thread each, and the target's tokenizer. */
export async function loadTinyPair(): Promise<{ target: DecoderRunner; draft: DecoderRunner; tokenizer: Awaited<ReturnType<typeof loadTokenizer>> }> {
  const pair = await ensureModelPair('tiny');
  const target = await loadDecoder(pair.targetDir, { threads: 1 });
  const config = testConfig();
  const draft = await loadDecoder(join(pair.root, config.devices[config.deviceProfile].draftModel), { threads: 1 });
  return { target, draft, tokenizer: await loadTokenizer(pair.targetDir) };
}

/**
 * Target-only tokens for each prompt with the tiny preset (generateTarget, the function behind
 * `wisp generate --mode target`): the reference every serving mode must reproduce.
 */
export async function targetTokens(prompts: readonly string[], maxNewTokens: number, sampling: Sampling = { temperature: 0, topP: 1, seed: 0 }): Promise<number[][]> {
  const pair = await ensureModelPair('tiny');
  const target = await loadDecoder(pair.targetDir, { threads: 1 });
  const tok = await loadTokenizer(pair.targetDir);
  try {
    const out: number[][] = [];
    for (const p of prompts) {
      const r = await generateTarget(target, tok.encode(p), { maxNewTokens, sampling, eosTokenId: target.info.eosTokenId });
      out.push(r.tokens);
    }
    return out;
  } finally {
    await target.dispose();
  }
}

/**
 * A device played by a test at the wire level: it owns `wisp.device.<id>`, sends what it is told
 * to the scheduler, and lets the test wait for each message it receives, in order.
 */
export class ScriptedDevice {
  readonly inbox: DeviceInbox[] = [];
  #waiters: (() => void)[] = [];
  #consumer: ConsumerHandle | null = null;
  constructor(
    readonly broker: BrokerClient,
    readonly deviceId: string,
  ) {}

  get queue(): string {
    return deviceQueue(this.deviceId);
  }

  async start(): Promise<void> {
    await this.broker.declareQueue(this.queue);
    this.#consumer = await this.broker.consume(
      this.queue,
      DeviceInboxSchema,
      (m) => {
        this.inbox.push(m);
        for (const w of this.#waiters.splice(0)) w();
      },
      { prefetch: 64 },
    );
  }

  async stop(): Promise<void> {
    await this.#consumer?.cancel();
    await this.broker.deleteQueue(this.queue).catch(() => {});
  }

  /** Publishes `message` to the scheduler's queue. */
  send(message: unknown): Promise<void> {
    return this.broker.publish(SCHEDULER_QUEUE, message);
  }

  /** Message number `index` of the inbox (waiting for it), or null after `timeoutMs`. */
  async next(index: number, timeoutMs = 5_000): Promise<DeviceInbox | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.inbox.length <= index) {
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.inbox[index];
  }
}

/**
 * Each session's history as its close finds it (LaunchHooks.beforeForget: the close then
 * deletes the record). `config` is read at the first close (the system's, once started).
 */
export function historiesAtClose(config: () => Pick<WispConfig, 'redisUrl' | 'redisKeyPrefix'>): {
  beforeForget: (sessionId: string) => Promise<void>;
  histories: Map<string, number[] | null>;
  close(): Promise<void>;
} {
  const histories = new Map<string, number[] | null>();
  let reader: Promise<RedisStore> | null = null;
  return {
    histories,
    async beforeForget(sessionId) {
      reader ??= openRedisStore({ url: config().redisUrl, keyPrefix: config().redisKeyPrefix });
      histories.set(sessionId, await (await reader).getHistory(sessionId));
    },
    async close() {
      await (await reader)?.close();
    },
  };
}
