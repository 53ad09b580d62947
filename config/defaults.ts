/**
 * Default configuration and the built-in device profiles.
 *
 * Device profiles are real-world figures for a small (~0.5–1.5B parameters, 4-bit) draft
 * model on each device class. They were NOT measured in this project: they are round numbers
 * taken from publicly reported llama.cpp / MLC-LLM decode rates and typical board power
 * figures, good to an order of magnitude. The emulated devices use them (times multiplied by
 * `timeScale`); the forged models themselves draft in well under a millisecond here.
 */
import type { DeviceProfile, WispConfig } from './schema.ts';

export const DEVICE_PROFILES: Readonly<Record<string, DeviceProfile>> = {
  // Jetson Orin Nano 8 GB (25 W "Super" mode): 1B-class 4-bit models are reported at roughly
  // 40–60 tokens/s with MLC/llama.cpp on its GPU → ~20 ms/token. On a wired/Wi-Fi LAN to an
  // on-premises server: ~8 ms RTT. Power modes are 7/15/25 W; we assume ~15 W at the module
  // while the GPU drafts, ~5 W idle, ~6 W while only the radio/NIC is busy.
  'jetson-orin-nano': {
    draftMsPerToken: 20,
    rttMs: 8,
    jitterMs: 2,
    draftModel: 'draft-2',
    powerW: { drafting: 15, idle: 5, transmitting: 6 },
  },
  // Raspberry Pi 5 (4× Cortex-A76, 8 GB), CPU only: 0.5B-class 4-bit models are reported at
  // roughly 15–25 tokens/s with llama.cpp → ~50 ms/token, so it gets the smallest draft.
  // Wi-Fi to the server: ~15 ms RTT, ±5 ms. Board power is commonly measured at ~2.7 W idle
  // and ~7 W with all cores busy; ~3.5 W while transmitting.
  'raspberry-pi-5': {
    draftMsPerToken: 50,
    rttMs: 15,
    jitterMs: 5,
    draftModel: 'draft-1',
    powerW: { drafting: 7, idle: 2.7, transmitting: 3.5 },
  },
  // A flagship phone (Snapdragon 8 Gen 3 class) on its GPU/NPU: 1B-class 4-bit models are
  // reported at roughly 30–60 tokens/s → ~25 ms/token. Cellular (LTE/5G) to an edge-cloud
  // region: ~40 ms RTT with ±15 ms jitter. Sustained SoC load ~4 W (phones throttle above
  // ~5 W), ~0.5 W idle with the screen off, ~1.5 W with the radio active.
  phone: {
    draftMsPerToken: 25,
    rttMs: 40,
    jitterMs: 15,
    draftModel: 'draft-1',
    powerW: { drafting: 4, idle: 0.5, transmitting: 1.5 },
  },
};

export const DEFAULT_CONFIG: WispConfig = {
  // No credential in code: without user info amqplib logs in as RabbitMQ's local-only guest.
  amqpUrl: 'amqp://127.0.0.1:5672',
  amqpTls: { enabled: false },
  redisUrl: 'redis://127.0.0.1:6379',
  redisTls: { enabled: false },
  redisKeyPrefix: 'wisp:',
  logLevel: 'info',
  models: { preset: 'tiny', threads: 2, costModel: { enabled: false, timeScale: 1, server: 'a100-80gb/34b' } },
  timeScale: 1,
  deviceProfile: 'jetson-orin-nano',
  devices: structuredClone(DEVICE_PROFILES) as Record<string, DeviceProfile>,
  // ~10 tokens/s is faster than people read; a second to the first token feels interactive.
  // With the profiles above a round (≈4 drafts + RTT + verify) yields 40–80 ms/token unloaded.
  slo: { ttftMs: 1_000, tpotMs: 100 },
  scheduler: {
    policy: 'wisp',
    bMax: 16,
    waitMs: 5,
    maxBatchTokens: 512,
    ageBoundMs: 1_000,
    truncation: true,
    pipelinedDrafting: false,
    chunkedPrefill: true,
    passTokenBudget: 0,
    modeSwitching: false,
  },
  controller: { kMax: 8, threshold: 0.4, minAcceptance: 0.2 },
  worker: { idleEvictMs: 60_000, heartbeatMs: 1_000, heartbeatTtlMs: 5_000 },
  edge: { verifyTimeoutMs: 5_000, maxRetries: 3 },
  sessionTtlMs: 600_000,
  // Metrics endpoint off by default: several roles on one host would fight over one port.
  telemetry: { metricsPort: 0, metricsHost: '127.0.0.1', tracing: false },
};
