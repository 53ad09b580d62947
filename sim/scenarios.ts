/**
 * Built-in scenarios of `wisp sim`.
 *
 * - `paper`: the WISP paper's setting as far as this project can reproduce it — a
 *   Qwen3-32B-class server whose batch latency comes from data/verify-profile-h200.csv
 *   (measured on an H200; the paper used an A100 80GB), Qwen3-0.6B-class drafts on Jetson Orin
 *   Nano and Raspberry Pi 5 device profiles (config/defaults.ts), one server.
 * - `tiny`: a few devices for a few simulated seconds (tests, smoke runs).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Slo } from '../broker/contracts.ts';
import { DEVICE_PROFILES } from '../config/defaults.ts';
import type { DeviceProfile } from '../config/schema.ts';
import { parseProfileCsv, type ProfileRow } from '../policies/profile-csv.ts';
import { parametricAcceptance, type AcceptanceModel, type ParametricAcceptanceParams } from './acceptance.ts';
import { serverCostFromProfile } from './server-cost.ts';
import type { DeviceClassSpec, SchedulerKnobs, SimRunConfig, WorkloadSpec } from './types.ts';

export const SCENARIO_NAMES = ['paper', 'tiny'] as const;
export type ScenarioName = (typeof SCENARIO_NAMES)[number];

/** The profile shipped in the repository (measured on an H200; provenance in data/README.md). */
export const DEFAULT_SERVER_PROFILE = fileURLToPath(new URL('../data/verify-profile-h200.csv', import.meta.url));

/** The paper's headline figures (WISP paper, Qwen3-32B target on an A100 80GB). */
export const PAPER_FIGURES = {
  capacityVsCentralized: 2.1,
  capacityVsSled: 4.1,
  goodputVsCentralized: 1.94,
  goodputVsSled: 3.7,
  goodputTokS: { wisp: 631.86, centralized: 326.12, sled: 170.82 },
  setting: 'Qwen3-32B target on an A100 80GB (WISP paper)',
} as const;

/** Known target models: context window and vocabulary (Qwen3 config values). */
const MODELS: Record<string, { maxPositions: number; vocabSize: number }> = {
  'qwen3-32b': { maxPositions: 40_960, vocabSize: 151_936 },
  'qwen3-8b': { maxPositions: 40_960, vocabSize: 151_936 },
};
/** Any other model in a profile (e.g. "live", measured by `wisp bench`): only lengths matter here. */
const OTHER_MODEL = { maxPositions: 40_960, vocabSize: 151_936 };

export class ScenarioError extends Error {
  readonly code = 'bad_scenario';
}

/** A device class before its acceptance model is built. */
export interface ClassTemplate {
  name: string;
  profile: DeviceProfile;
  weight: number;
  acceptance: ParametricAcceptanceParams;
  /** What draft model this class stands for (report text). */
  draftDescription: string;
}

/** Everything that defines a scenario except the policy and the number of devices. */
export interface Scenario {
  /** A built-in's name, or 'live' for a replayed `wisp bench` run (sim/replay.ts). */
  name: ScenarioName | 'live';
  description: string;
  slo: Slo;
  /** Why these SLOs (printed in the report). */
  sloNote: string;
  workers: number;
  deviceCounts: number[];
  durationMs: number;
  warmupMs: number;
  seed: number;
  model: string;
  serverProfilePath: string;
  serverNoise: number;
  /** Multiplies the fitted batch times (1 in built-ins; a replayed run corrects its fit's bias). */
  serverScale?: number;
  hopMs: number;
  /** Broker latency per device ↔ server message, ms (sim/types.ts ServerSpec; 0 in built-ins). */
  linkHopMs: number;
  /** Worker time per batch / decode step beyond the model, ms (0 in built-ins). */
  batchOverheadMs: number;
  stepOverheadMs: number;
  scheduler: SchedulerKnobs;
  pipelinedDrafting: boolean;
  controller: { kMax: number; threshold: number; minAcceptance: number };
  classes: ClassTemplate[];
  workload: WorkloadSpec;
  /** Bisection steps between the last passing and first failing device count (finer capacity). */
  refineSteps: number;
  /** Last word on each run's configuration (a replayed live run sets each load's measured overheads). */
  adjust?: (run: SimRunConfig) => SimRunConfig;
}

const DEFAULT_SCHEDULER: SchedulerKnobs = { bMax: 32, waitMs: 5, maxBatchTokens: 512, ageBoundMs: 1_000, truncation: true };

/** A built-in scenario (fresh object; callers may override fields). */
export function scenario(name: ScenarioName): Scenario {
  const qwenDraft = 'Qwen3-0.6B-class draft (4-bit)';
  if (name === 'paper') {
    return {
      name,
      description:
        'Qwen3-32B-class server (batch latency from data/verify-profile-h200.csv, measured on an H200), Qwen3-0.6B-class drafts on Jetson Orin Nano and Raspberry Pi 5 device profiles, half of each',
      slo: { ttftMs: 2_000, tpotMs: 150 },
      sloNote:
        '150 ms per token is ≈ 6.7 tokens/s, about reading speed; round numbers that every policy meets for ≥ 90 % of sessions at light load — a Raspberry Pi 5 drafting at 50 ms/token is the binding device (a 100 ms TPOT would fail the Pi sessions of both speculative policies unloaded)',
      workers: 1,
      deviceCounts: [4, 8, 16, 32, 64, 128, 256],
      durationMs: 120_000,
      warmupMs: 20_000,
      seed: 1,
      model: 'qwen3-32b',
      serverProfilePath: DEFAULT_SERVER_PROFILE,
      serverNoise: 0.05,
      hopMs: 0.5,
      linkHopMs: 0,
      batchOverheadMs: 0,
      stepOverheadMs: 0,
      scheduler: { ...DEFAULT_SCHEDULER },
      pipelinedDrafting: true,
      controller: { kMax: 8, threshold: 0.4, minAcceptance: 0.2 },
      classes: [
        { name: 'jetson-orin-nano', profile: DEVICE_PROFILES['jetson-orin-nano'], weight: 1, acceptance: { agreement: 0.7 }, draftDescription: qwenDraft },
        { name: 'raspberry-pi-5', profile: DEVICE_PROFILES['raspberry-pi-5'], weight: 1, acceptance: { agreement: 0.7 }, draftDescription: qwenDraft },
      ],
      workload: { promptTokens: { min: 64, max: 512 }, outputTokens: { min: 64, max: 256 }, thinkMs: 0, startSpreadMs: 2_000 },
      refineSteps: 2,
    };
  }
  return {
    name,
    description: 'a few devices for a few simulated seconds (smoke runs and tests)',
    slo: { ttftMs: 2_000, tpotMs: 150 },
    sloNote: 'as the paper scenario',
    workers: 1,
    deviceCounts: [2, 4, 8],
    durationMs: 20_000,
    warmupMs: 2_000,
    seed: 1,
    model: 'qwen3-32b',
    serverProfilePath: DEFAULT_SERVER_PROFILE,
    serverNoise: 0.05,
    hopMs: 0.5,
    linkHopMs: 0,
    batchOverheadMs: 0,
    stepOverheadMs: 0,
    scheduler: { ...DEFAULT_SCHEDULER, bMax: 8 },
    pipelinedDrafting: true,
    controller: { kMax: 8, threshold: 0.4, minAcceptance: 0.2 },
    classes: [
      { name: 'jetson-orin-nano', profile: DEVICE_PROFILES['jetson-orin-nano'], weight: 1, acceptance: { agreement: 0.7 }, draftDescription: qwenDraft },
      { name: 'raspberry-pi-5', profile: DEVICE_PROFILES['raspberry-pi-5'], weight: 1, acceptance: { agreement: 0.7 }, draftDescription: qwenDraft },
    ],
    workload: { promptTokens: { min: 32, max: 128 }, outputTokens: { min: 16, max: 48 }, thinkMs: 0, startSpreadMs: 500 },
    refineSteps: 0,
  };
}

/** Reads a server profile CSV (default: the one measured on an H200). */
export function loadServerProfile(path: string): ProfileRow[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ScenarioError(`cannot read server profile ${path}: ${(e as Error).message}`);
  }
  return parseProfileCsv(text, path);
}

/** Optional acceptance override for every class (e.g. fitted from a live pair). */
export type AcceptanceOverride = (cls: ClassTemplate) => AcceptanceModel;

/**
 * The run configurations of a scenario, one per device count, for one policy.
 * @param rows the server profile's rows (loadServerProfile)
 */
export function runConfig(
  s: Scenario,
  rows: readonly ProfileRow[],
  policy: SimRunConfig['policy'],
  devices: number,
  opts: { pipelinedDrafting?: boolean; truncation?: boolean; acceptance?: AcceptanceOverride } = {},
): SimRunConfig {
  const model = MODELS[s.model] ?? OTHER_MODEL;
  const cost = serverCostFromProfile(rows, s.model, s.serverNoise, s.serverScale ?? 1);
  const classes: DeviceClassSpec[] = s.classes.map((k) => ({
    name: k.name,
    profile: k.profile,
    weight: k.weight,
    acceptance: opts.acceptance ? opts.acceptance(k) : parametricAcceptance(k.acceptance, `${k.name}:${k.acceptance.agreement}`),
  }));
  const run: SimRunConfig = {
    policy,
    devices,
    workers: s.workers,
    durationMs: s.durationMs,
    warmupMs: s.warmupMs,
    seed: s.seed,
    slo: s.slo,
    scheduler: { ...s.scheduler, truncation: opts.truncation ?? s.scheduler.truncation },
    pipelinedDrafting: opts.pipelinedDrafting ?? s.pipelinedDrafting,
    controller: s.controller,
    classes,
    workload: s.workload,
    server: {
      cost,
      model: s.model,
      vocabSize: model.vocabSize,
      maxPositions: model.maxPositions,
      hopMs: s.hopMs,
      linkHopMs: s.linkHopMs,
      batchOverheadMs: s.batchOverheadMs,
      stepOverheadMs: s.stepOverheadMs,
    },
  };
  return s.adjust ? s.adjust(run) : run;
}
