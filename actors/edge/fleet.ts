/**
 * Composition root of an edge fleet: N emulated devices in one process. Devices take prompts
 * from the shared queue (at most one each at a time) and from their own prompt queues. Draft
 * models are loaded once per folder and shared; each device keeps its own caches, controller
 * and profile (devices of one fleet may run different drafts).
 */
import { join } from 'node:path';
import { PromptRequestSchema, type Slo } from '../../protocol/messages.ts';
import { requestedModeOf } from '../../policies/serving-mode.ts';
import type { BrokerTransport, ConsumerHandle } from '../../broker/transport.ts';
import { PROMPTS_QUEUE, devicePromptQueue } from '../../broker/topology.ts';
import type { DeviceProfile } from '../../config/schema.ts';
import { checkTokenizerMatchesModel } from '../../inference/model-dir.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import { loadTokenizer, type WispTokenizer } from '../../inference/tokenizer.ts';
import type { DecoderRunner } from '../../inference/types.ts';
import type { ControllerKnobs, PolicyName } from '../../config/schema.ts';
import { controllerFor } from '../../edge/drafting.ts';
import { rngFor } from '../../inference/rng.ts';
import type { Logger } from '../../telemetry/logger.ts';
import type { EdgeMetrics } from '../../telemetry/metrics.ts';
import { wallClock, type Clock } from '../clock.ts';
import { checkDraftTokenizer, draftModelName, resolveDraftDir } from './draft-models.ts';
import { EdgeDevice, type EdgeDeviceOptions, type ServedPrompt } from './device.ts';

export interface EdgeFleetOptions {
  fleetId: string;
  devices: number;
  /** Profile names assigned round-robin to the devices. */
  profileNames: string[];
  profiles: Record<string, DeviceProfile>;
  /** Folder with target/ (for its tokenizer and name) and the draft folders. */
  modelRoot: string;
  timeScale: number;
  policy: PolicyName;
  pipelinedDrafting: boolean;
  controller: ControllerKnobs;
  defaultSlo: Slo;
  verifyTimeoutMs: number;
  maxRetries: number;
  threads: number;
  broker: BrokerTransport;
  logger: Logger;
  clock?: Clock;
  /** Seed for the devices' network jitter (reproducible runs). */
  seed?: number;
  /** Called after every served prompt (benchmarks). */
  onServed?: (served: ServedPrompt) => void;
  /** Called for every drafted token the target judged (benchmarks record acceptance samples). */
  onTokenJudged?: EdgeDeviceOptions['onTokenJudged'];
  /** Called for every verified round with its timing (benchmarks feed the simulator these). */
  onRoundTimed?: EdgeDeviceOptions['onRoundTimed'];
  /** Prometheus series of the edge role; none when absent. */
  metrics?: EdgeMetrics;
  /** Counts a reply let go on purpose (wisp_ignored_messages_total). */
  onIgnored?: (reason: string) => void;
}

export interface EdgeFleet {
  devices: EdgeDevice[];
  tokenizer: WispTokenizer;
  stop(): Promise<void>;
}

export async function startEdgeFleet(opts: EdgeFleetOptions): Promise<EdgeFleet> {
  const clock = opts.clock ?? wallClock;
  const tokenizer = await loadTokenizer(join(opts.modelRoot, 'target'));
  const drafts = new Map<string, DecoderRunner>();
  for (const name of new Set(opts.profileNames.map((p) => opts.profiles[p].draftModel))) {
    // A profile's draft is a folder under the model root or a path of its own; either way it
    // must use the target's tokenizer (refused here, at start, otherwise).
    const dir = resolveDraftDir(opts.modelRoot, name);
    await checkDraftTokenizer(join(opts.modelRoot, 'target'), dir);
    const runner = await loadDecoder(dir, { threads: opts.threads });
    checkTokenizerMatchesModel(tokenizer, runner.info);
    drafts.set(name, runner);
  }
  const mode = requestedModeOf(opts.policy);
  const devices: EdgeDevice[] = [];
  for (let i = 0; i < opts.devices; i++) {
    const profileName = opts.profileNames[i % opts.profileNames.length];
    const profile = opts.profiles[profileName];
    const device = new EdgeDevice({
      deviceId: `${opts.fleetId}-${i}`,
      profileName,
      profile,
      timeScale: opts.timeScale,
      mode,
      pipelinedDrafting: opts.pipelinedDrafting && opts.policy !== 'centralized',
      controller: controllerFor(opts.policy, opts.controller),
      draft: drafts.get(profile.draftModel)!,
      draftModelName: draftModelName(profile.draftModel),
      tokenizer,
      broker: opts.broker,
      defaultSlo: opts.defaultSlo,
      verifyTimeoutMs: opts.verifyTimeoutMs,
      maxRetries: opts.maxRetries,
      logger: opts.logger.child({ deviceId: `${opts.fleetId}-${i}` }),
      clock,
      random: (() => {
        const rng = rngFor(opts.seed ?? 1, i, 'network-jitter');
        return () => rng.nextDouble();
      })(),
      ...(opts.onServed ? { onServed: opts.onServed } : {}),
      ...(opts.onTokenJudged ? { onTokenJudged: opts.onTokenJudged } : {}),
      ...(opts.onRoundTimed ? { onRoundTimed: opts.onRoundTimed } : {}),
      ...(opts.metrics ? { metrics: opts.metrics } : {}),
      ...(opts.onIgnored ? { onIgnored: opts.onIgnored } : {}),
      policy: opts.policy,
    });
    await device.start();
    devices.push(device);
  }

  // Shared prompts go to the least busy device; the prefetch keeps at most one per device.
  const load = new Map<EdgeDevice, number>(devices.map((d) => [d, 0]));
  const consumers: ConsumerHandle[] = [];
  const serveOn = async (device: EdgeDevice, prompt: Parameters<EdgeDevice['serve']>[0]) => {
    load.set(device, load.get(device)! + 1);
    try {
      await device.serve(prompt);
    } finally {
      load.set(device, load.get(device)! - 1);
    }
  };
  consumers.push(
    await opts.broker.consume(
      PROMPTS_QUEUE,
      PromptRequestSchema,
      (prompt) => {
        let best = devices[0];
        for (const d of devices) if (load.get(d)! < load.get(best)!) best = d;
        return serveOn(best, prompt);
      },
      { prefetch: opts.devices },
    ),
  );
  for (const d of devices) {
    consumers.push(await opts.broker.consume(devicePromptQueue(d.id), PromptRequestSchema, (prompt) => serveOn(d, prompt), { prefetch: 1 }));
  }

  return {
    devices,
    tokenizer,
    async stop() {
      // No new prompts; the sessions under way end now, their clients told (device_shutdown)
      // and their servers' caches and records freed, before the draft models go.
      await Promise.all(consumers.map((c) => c.cancel()));
      await Promise.all(devices.map((d) => d.cancelSessions()));
      await Promise.all(devices.map((d) => d.stop()));
      for (const r of drafts.values()) await r.dispose();
    },
  };
}
