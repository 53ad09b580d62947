/**
 * Starts a whole wisp (scheduler, workers, edge fleet) against the local RabbitMQ and Redis for
 * an integration test, with a unique Redis prefix and emptied shared queues, plus a client.
 */
import { randomUUID } from 'node:crypto';
import { connectBroker, type BrokerClient } from '../../broker/connection.ts';
import { PROMPTS_QUEUE, SCHEDULER_QUEUE } from '../../broker/topology.ts';
import { WispClient } from '../../actors/client.ts';
import { runUp, type UpOptions } from '../../actors/launch.ts';
import { loadConfig, type DeepPartial } from '../../config/load.ts';
import type { WispConfig } from '../../config/schema.ts';

export const AMQP_URL = process.env.WISP_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
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
    deviceProfile: 'raspberry-pi-5',
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
