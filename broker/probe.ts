/**
 * Measures the broker's latency as the roles see it: publish() → the consumer's handler
 * (one message in flight at a time), and an RPC round trip over direct reply-to. For
 * `wisp doctor`-style checks and the README's figures; not used on the serving path.
 *
 * @example
 *   npx tsx -e "import('./broker/probe.ts').then(m => m.runProbeCli())"
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import { connectBroker, type BrokerClient } from './connection.ts';
import { createRpcClient, serveRpc } from './rpc.ts';
import { DEAD_QUEUE } from './topology.ts';

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
}

export interface ProbeResult {
  /** publish() (persistent, confirmed) until the handler runs, durable queue. */
  publishToConsume: LatencySummary;
  /** request() until the reply is validated, via direct reply-to (transient request on a durable queue). */
  rpcRoundTrip: LatencySummary;
}

const PingSchema = z.object({ i: z.number().int(), pad: z.string() });

function summarize(samplesMs: number[]): LatencySummary {
  const s = [...samplesMs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0;
  return { count: s.length, p50Ms: at(0.5), p90Ms: at(0.9), p99Ms: at(0.99) };
}

/**
 * Runs both measurements on temporary queues (deleted afterwards). `bodyBytes` pads each
 * message to about that size (default 230, the size NOTES.md measured).
 */
export async function probeBroker(broker: BrokerClient, options: { count?: number; warmup?: number; bodyBytes?: number } = {}): Promise<ProbeResult> {
  const count = options.count ?? 1_000;
  const warmup = options.warmup ?? 100;
  const pad = 'x'.repeat(Math.max(0, (options.bodyBytes ?? 230) - 20));
  const run = randomUUID().slice(0, 8);
  const pingQueue = `wisp.probe.ping.${run}`;
  const rpcQueue = `wisp.probe.rpc.${run}`;

  let onPing: (() => void) | null = null;
  const pingConsumer = await broker.consume(pingQueue, PingSchema, () => onPing?.(), { prefetch: 1 });
  const rpcServer = await serveRpc(broker, rpcQueue, PingSchema, (m) => m, { prefetch: 1 });
  const rpc = await createRpcClient(broker, { timeoutMs: 10_000 });
  try {
    const oneWay: number[] = [];
    for (let i = 0; i < warmup + count; i++) {
      const received = new Promise<number>((r) => (onPing = () => r(performance.now())));
      const t0 = performance.now();
      // Time to the handler, not to the confirm (the handler may run first); wait for both before the next.
      const [, handledAt] = await Promise.all([broker.publish(pingQueue, { i, pad }), received]);
      if (i >= warmup) oneWay.push(handledAt - t0);
    }
    const roundTrips: number[] = [];
    for (let i = 0; i < warmup + count; i++) {
      const t0 = performance.now();
      await rpc.request(rpcQueue, { i, pad }, PingSchema);
      if (i >= warmup) roundTrips.push(performance.now() - t0);
    }
    return { publishToConsume: summarize(oneWay), rpcRoundTrip: summarize(roundTrips) };
  } finally {
    await rpc.close();
    await pingConsumer.cancel();
    await rpcServer.cancel();
    await broker.deleteQueue(pingQueue).catch(() => {});
    await broker.deleteQueue(rpcQueue).catch(() => {});
  }
}

/** Connects with WISP_AMQP_URL (or localhost), runs the probe and prints JSON. */
export async function runProbeCli(): Promise<void> {
  const url = process.env.WISP_AMQP_URL ?? 'amqp://127.0.0.1:5672';
  const broker = await connectBroker(url, { connectionName: 'wisp-probe', deadLetterQueue: `${DEAD_QUEUE}.probe-${process.pid}` });
  try {
    const count = Number(process.env.WISP_PROBE_COUNT ?? 1_000);
    const result = await probeBroker(broker, { count });
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } finally {
    await broker.deleteQueue(`${DEAD_QUEUE}.probe-${process.pid}`).catch(() => {});
    await broker.close();
  }
}
