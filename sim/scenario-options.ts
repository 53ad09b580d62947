/**
 * Overrides of a scenario, as `wisp sim` and `wisp sim map` take them from flags: one place that
 * turns "this server, this SLO, this device mix" into a scenario, so both commands mean the same
 * by every flag.
 */
import { DEVICE_PROFILES } from '../config/defaults.ts';
import { parseMix, type MixPart } from './mix.ts';
import { ScenarioError, withEngine, type Scenario } from './scenarios.ts';

export { parseMix, type MixPart };

export interface ScenarioOptions {
  /** A serving engine `gpu/model` as the server. */
  server?: string;
  /** With `server`: no KV-cache memory limit. */
  noKvLimit?: boolean;
  /** A measured profile CSV as the server, and the model rows to use. */
  serverProfile?: string;
  model?: string;
  workers?: number;
  devices?: number[];
  durationS?: number;
  warmupS?: number;
  seed?: number;
  refine?: number;
  ttftMs?: number;
  tpotMs?: number;
  serverNoise?: number;
  bMax?: number;
  waitMs?: number;
  deviceMix?: MixPart[];
  agreement?: number;
  timeScale?: number;
  pipelining?: boolean;
  truncation?: boolean;
  /** false: every prompt a pass of its own (no chunked prefill). */
  chunkedPrefill?: boolean;
  /** Tokens one pass may feed (> 0), replacing the budget rule. */
  passTokenBudget?: number;
  /** true: adaptive revisits each session's mode at its rounds (default: chosen once, at admission). */
  modeSwitching?: boolean;
}

/** `s` with the options applied (a new scenario; `s` is left alone). @throws ScenarioError, EngineSpecError */
export function applyScenarioOptions(base: Scenario, o: ScenarioOptions): Scenario {
  let s: Scenario = { ...base, scheduler: { ...base.scheduler }, classes: [...base.classes], slo: { ...base.slo } };
  if (o.server !== undefined && o.serverProfile !== undefined) throw new ScenarioError('name either a server (gpu/model) or a server profile, not both');
  if (o.server !== undefined) s = withEngine(s, o.server, !o.noKvLimit);
  else if (o.noKvLimit && s.server.kind === 'engine') s.server = { ...s.server, kvLimit: false };
  if (o.serverProfile !== undefined) {
    s.server = { kind: 'profile', path: o.serverProfile, model: o.model ?? (s.server.kind === 'profile' ? s.server.model : 'qwen3-32b'), description: `the pass times measured in ${o.serverProfile}` };
  } else if (o.model !== undefined) {
    if (s.server.kind !== 'profile') throw new ScenarioError('--model picks rows of a server profile; this scenario\'s server is an engine (use --server gpu/model)');
    s.server = { ...s.server, model: o.model };
  }
  if (o.workers !== undefined) s.workers = o.workers;
  if (o.devices) s.deviceCounts = o.devices;
  if (o.durationS !== undefined) {
    s.durationMs = o.durationS * 1_000;
    if (o.warmupS === undefined) s.warmupMs = Math.min(s.warmupMs, s.durationMs / 5);
  }
  if (o.warmupS !== undefined) s.warmupMs = o.warmupS * 1_000;
  if (o.seed !== undefined) s.seed = o.seed;
  if (o.refine !== undefined) s.refineSteps = o.refine;
  if (o.ttftMs !== undefined) s.slo = { ...s.slo, ttftMs: o.ttftMs };
  if (o.tpotMs !== undefined) s.slo = { ...s.slo, tpotMs: o.tpotMs };
  if (o.serverNoise !== undefined) s.serverNoise = o.serverNoise;
  if (o.bMax !== undefined) s.scheduler.bMax = o.bMax;
  if (o.waitMs !== undefined) s.scheduler.waitMs = o.waitMs;
  if (o.deviceMix) {
    const template = s.classes[0];
    s.classes = o.deviceMix.map(({ name, weight }) => {
      const profile = DEVICE_PROFILES[name];
      if (!profile) throw new ScenarioError(`unknown device profile "${name}" (known: ${Object.keys(DEVICE_PROFILES).join(', ')})`);
      return { ...template, name, profile, weight };
    });
  }
  if (o.timeScale !== undefined) {
    const k = o.timeScale;
    s.slo = { ttftMs: s.slo.ttftMs * k, tpotMs: s.slo.tpotMs * k };
    s.classes = s.classes.map((c) => ({ ...c, profile: { ...c.profile, draftMsPerToken: c.profile.draftMsPerToken * k, rttMs: c.profile.rttMs * k, jitterMs: c.profile.jitterMs * k } }));
  }
  if (o.agreement !== undefined) s.classes = s.classes.map((k) => ({ ...k, acceptance: { ...k.acceptance, agreement: o.agreement! } }));
  if (o.pipelining === false) s.pipelinedDrafting = false;
  if (o.truncation === false) s.scheduler.truncation = false;
  if (o.chunkedPrefill === false) s.scheduler.chunkedPrefill = false;
  if (o.passTokenBudget !== undefined) s.scheduler.passTokenBudget = o.passTokenBudget;
  if (o.modeSwitching !== undefined) s.scheduler.modeSwitching = o.modeSwitching;
  return s;
}
