/**
 * Built-in scenarios of `wisp sim`. Each names its server:
 *
 * - `paper`: the WISP paper's setting — an A100-80GB serving engine (the paper used an A100
 *   80GB) with a 34B-class target (CodeLlama-34B shapes, standing in for Qwen3-32B), its cost
 *   from the operator-level engine model (physics/), Qwen3-0.6B-class drafts on Jetson Orin
 *   Nano and Raspberry Pi 5 device profiles (config/defaults.ts).
 * - `h100`: the same on an H100-80GB engine.
 * - `sled`: the SLED paper's edge-server setting — an A40 48 GB (RTX A6000-class) serving a
 *   7B-class target (Llama-2-7B shapes).
 * - `hf-eager-h200`: the server measured in data/verify-profile-h200.csv — Hugging Face
 *   transformers in eager mode on padded batches on an H200, a naive server (any query of two
 *   or more tokens takes a slow attention path).
 * - `tiny`: a few devices for a few simulated seconds (tests, smoke runs), on the paper's engine.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Slo } from '../protocol/messages.ts';
import { WispError } from '../common/errors.ts';
import { DEFAULT_CONFIG, DEVICE_PROFILES } from '../config/defaults.ts';
import type { ControllerKnobs, DeviceProfile } from '../config/schema.ts';
import { loadEngine } from '../physics/engines.ts';
import { parseProfileCsv, type ProfileRow } from '../policies/profile-csv.ts';
import { parametricAcceptance, type AcceptanceModel, type ParametricAcceptanceParams } from './acceptance.ts';
import { engineServerCost, serverCostFromProfile, type ServerCostModel } from './server-cost.ts';
import type { DeviceClassSpec, SchedulerKnobs, SimRunConfig, WorkloadSpec } from './types.ts';

export const SCENARIO_NAMES = ['paper', 'h100', 'sled', 'hf-eager-h200', 'tiny'] as const;
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

/** Context window and vocabulary of the models a measured profile may name (Qwen3 config values). */
const PROFILE_MODELS: Record<string, { maxPositions: number; vocabSize: number }> = {
  'qwen3-32b': { maxPositions: 40_960, vocabSize: 151_936 },
  'qwen3-8b': { maxPositions: 40_960, vocabSize: 151_936 },
};
/** Any other model in a profile (e.g. "live", measured by `wisp bench`): only lengths matter here. */
const OTHER_MODEL = { maxPositions: 40_960, vocabSize: 151_936 };

export class ScenarioError extends WispError {
  constructor(message: string) {
    super('bad_scenario', message);
  }
}

/**
 * What the simulated server is: a serving engine `gpu/model` (physics/), or a padded server
 * whose pass times were measured into a profile CSV.
 */
export type ServerSource =
  | {
      kind: 'engine';
      /** `gpu/model`, e.g. 'a100-80gb/34b'. */
      id: string;
      /** Sessions' KV caches limited to what fits in the GPU's memory (default on). */
      kvLimit: boolean;
    }
  | {
      kind: 'profile';
      path: string;
      /** Rows of this model are used (e.g. 'qwen3-32b'; 'live' for a profile written by wisp bench). */
      model: string;
      /** Multiplies the fitted batch times (1 in built-ins; a replayed run corrects its fit's bias). */
      scale?: number;
      /** What the profile measured (report text). */
      description: string;
    };

/** The engine a scenario uses when none is named (the paper's). */
export const DEFAULT_ENGINE = 'a100-80gb/34b';

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
  server: ServerSource;
  serverNoise: number;
  hopMs: number;
  /** Broker latency per device ↔ server message, ms (sim/types.ts ServerSpec; 0 in built-ins). */
  linkHopMs: number;
  /** Worker time per batch / decode step beyond the model, ms (0 in built-ins). */
  batchOverheadMs: number;
  stepOverheadMs: number;
  scheduler: SchedulerKnobs;
  pipelinedDrafting: boolean;
  controller: ControllerKnobs;
  classes: ClassTemplate[];
  workload: WorkloadSpec;
  /** Bisection steps between the last passing and first failing device count (finer capacity). */
  refineSteps: number;
  /** Last word on each run's configuration (a replayed live run sets each load's measured overheads). */
  adjust?: (run: SimRunConfig) => SimRunConfig;
}

/**
 * The scheduler knobs of the built-in scenarios: the config's defaults (config/defaults.ts), but
 * up to 32 requests per batch — a GPU engine verifies 32 sessions' rounds in one memory-bound
 * pass, where the config's 16 suits the CPU-sized live verifier.
 */
const DEFAULT_SCHEDULER: SchedulerKnobs = (({ pipelinedDrafting: _pipelined, policy: _policy, ...knobs }) => ({ ...knobs, bMax: 32 }))(DEFAULT_CONFIG.scheduler);

const QWEN_DRAFT = 'Qwen3-0.6B-class draft (4-bit)';

/** Jetson Orin Nano and Raspberry Pi 5, half of each, drafts agreeing with the target at `agreement`. */
function jetsonAndPi(agreement: number): ClassTemplate[] {
  return [
    { name: 'jetson-orin-nano', profile: DEVICE_PROFILES['jetson-orin-nano'], weight: 1, acceptance: { agreement }, draftDescription: QWEN_DRAFT },
    { name: 'raspberry-pi-5', profile: DEVICE_PROFILES['raspberry-pi-5'], weight: 1, acceptance: { agreement }, draftDescription: QWEN_DRAFT },
  ];
}

const engineServer = (id: string): ServerSource => ({ kind: 'engine', id, kvLimit: true });

/** A built-in scenario (fresh object; callers may override fields). */
export function scenario(name: ScenarioName): Scenario {
  if (name === 'tiny') {
    return {
      name,
      description: 'a few devices for a few simulated seconds (smoke runs and tests), on the A100-80GB + 34B-class engine',
      slo: { ttftMs: 2_000, tpotMs: 150 },
      sloNote: 'as the paper scenario',
      workers: 1,
      deviceCounts: [2, 4, 8],
      durationMs: 20_000,
      warmupMs: 2_000,
      seed: 1,
      server: engineServer(DEFAULT_ENGINE),
      serverNoise: 0.05,
      hopMs: 0.5,
      linkHopMs: 0,
      batchOverheadMs: 0,
      stepOverheadMs: 0,
      scheduler: { ...DEFAULT_SCHEDULER, bMax: 8 },
      pipelinedDrafting: true,
      controller: { ...DEFAULT_CONFIG.controller },
      classes: jetsonAndPi(0.7),
      workload: { promptTokens: { min: 32, max: 128 }, outputTokens: { min: 16, max: 48 }, thinkMs: 0, startSpreadMs: 500 },
      refineSteps: 0,
    };
  }
  const server: Record<Exclude<ScenarioName, 'tiny'>, { source: ServerSource; description: string }> = {
    paper: {
      source: engineServer('a100-80gb/34b'),
      description: 'A100-80GB serving engine with a 34B-class target (CodeLlama-34B shapes, standing in for Qwen3-32B; operator-level cost model on Vidur\'s measured timings)',
    },
    h100: {
      source: engineServer('h100-80gb/34b'),
      description: 'H100-80GB serving engine with a 34B-class target (CodeLlama-34B shapes, standing in for Qwen3-32B; operator-level cost model on Vidur\'s measured timings)',
    },
    sled: {
      source: engineServer('a40-48gb/7b'),
      description: 'the SLED paper\'s edge server: an A40 48 GB (RTX A6000-class) serving engine with a 7B-class target (Llama-2-7B shapes; operator-level cost model on Vidur\'s measured timings)',
    },
    'hf-eager-h200': {
      source: {
        kind: 'profile',
        path: DEFAULT_SERVER_PROFILE,
        model: 'qwen3-32b',
        description: 'Qwen3-32B-shaped decoder measured on an H200 with Hugging Face transformers, eager mode, padded batches (data/verify-profile-h200.csv): a naive server, where any query of two or more tokens takes a slow attention path',
      },
      description: 'a naive server: Qwen3-32B-shaped, Hugging Face transformers in eager mode on padded batches, measured on an H200 (data/verify-profile-h200.csv)',
    },
  };
  const chosen = server[name];
  return {
    name,
    description: `${chosen.description}; Qwen3-0.6B-class drafts on Jetson Orin Nano and Raspberry Pi 5 device profiles, half of each`,
    slo: { ttftMs: 2_000, tpotMs: 150 },
    sloNote:
      '150 ms per token is ≈ 6.7 tokens/s, about reading speed; round numbers that every policy meets for ≥ 90 % of sessions at light load — a Raspberry Pi 5 drafting at 50 ms/token is the binding device (a 100 ms TPOT would fail the Pi sessions of both speculative policies unloaded)',
    workers: 1,
    deviceCounts: [4, 8, 16, 32, 64, 128, 256],
    durationMs: 120_000,
    warmupMs: 20_000,
    seed: 1,
    server: chosen.source,
    serverNoise: 0.05,
    hopMs: 0.5,
    linkHopMs: 0,
    batchOverheadMs: 0,
    stepOverheadMs: 0,
    scheduler: { ...DEFAULT_SCHEDULER },
    pipelinedDrafting: true,
    controller: { ...DEFAULT_CONFIG.controller },
    classes: jetsonAndPi(0.7),
    workload: { promptTokens: { min: 64, max: 512 }, outputTokens: { min: 64, max: 256 }, thinkMs: 0, startSpreadMs: 2_000 },
    refineSteps: 2,
  };
}

/** A scenario's server as an engine `gpu/model` (the `--server` flag). @throws EngineSpecError */
export function withEngine(s: Scenario, id: string, kvLimit = true): Scenario {
  loadEngine(id); // refuse an unknown or unservable pair now, with its reason
  return { ...s, server: { kind: 'engine', id, kvLimit } };
}

/** The simulated server of a scenario (reads the engine's operator file or the profile once). */
export function serverCostOf(s: Scenario): ServerCostModel {
  if (s.server.kind === 'engine') return engineServerCost(loadEngine(s.server.id), s.serverNoise, s.server.kvLimit);
  return serverCostFromProfile(loadServerProfile(s.server.path), s.server.model, s.serverNoise, s.server.scale ?? 1);
}

/** The server's name and what it is, for reports. */
export function describeServer(s: Scenario): { server: string; serverDescription: string } {
  if (s.server.kind === 'engine') {
    const e = loadEngine(s.server.id);
    return { server: s.server.id, serverDescription: `${e.gpu.description}, ${e.model.description}, serving-engine cost model${s.server.kvLimit ? '' : ' (no KV-cache memory limit)'}` };
  }
  return { server: `profile:${s.server.model}`, serverDescription: s.server.description };
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
 * The run configuration of a scenario at one device count, for one policy.
 * @param cost the scenario's server (serverCostOf), built once per sweep
 */
export function runConfig(
  s: Scenario,
  cost: ServerCostModel,
  policy: SimRunConfig['policy'],
  devices: number,
  opts: { pipelinedDrafting?: boolean; truncation?: boolean; acceptance?: AcceptanceOverride } = {},
): SimRunConfig {
  const dims =
    s.server.kind === 'engine' ? loadEngine(s.server.id).model : (PROFILE_MODELS[s.server.model] ?? OTHER_MODEL);
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
      model: cost.model,
      vocabSize: dims.vocabSize,
      maxPositions: dims.maxPositions,
      hopMs: s.hopMs,
      linkHopMs: s.linkHopMs,
      batchOverheadMs: s.batchOverheadMs,
      stepOverheadMs: s.stepOverheadMs,
    },
  };
  return s.adjust ? s.adjust(run) : run;
}
