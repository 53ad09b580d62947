/**
 * `wisp sim --replay <report>`: rebuilds a live `wisp bench` run on simulated time from what the
 * run measured — the model's batch times (server-profile.csv), the draft pairs' acceptance with
 * their features (acceptance-samples.jsonl), and the run's own machinery (results.json
 * `calibration`: broker hops, worker overhead, pacing of drafts, think time) — with the run's
 * settings, prompts, devices, loads and SLO. Then it compares the simulator's capacity and
 * goodput per policy with the live ones: the simulator's error against the live system.
 *
 * Everything here is in the live run's emulated milliseconds (device profiles × time scale; the
 * server's compute as measured), so the SLO is the run's scaled one.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { POLICIES } from '../config/schema.ts';
import { BenchResultsSchema, LiveCalibrationSchema, LiveSettingsSchema, type LiveCalibration } from '../results/schema.ts';
import { capacity, percentile } from '../results/metrics.ts';
import { estimatorFromProfile, predictBatchMs } from '../policies/estimator.ts';
import { rowShapes, type ProfileRow } from '../policies/profile-csv.ts';
import type { PolicyName } from '../policies/types.ts';
import { empiricalAcceptance, parametricAcceptance, parseAcceptanceSamples, type AcceptanceModel, type AcceptanceSample } from './acceptance.ts';
import { loadServerProfile, type AcceptanceOverride, type Scenario } from './scenarios.ts';
import type { SimRunConfig } from './types.ts';
import { WispError } from '../common/errors.ts';

export class ReplayError extends WispError {
  constructor(message: string) {
    super('bad_replay', message);
  }
}

const num = z.number().finite();
const pos = num.positive();
const nonNeg = num.min(0);


/** What the replay reads of a bench report's results.json: the results document plus what a live run records for it. */
const LiveReportSchema = BenchResultsSchema.extend({
  kind: z.literal('bench'),
  timeScale: pos,
  profiles: z.array(z.string()).min(1),
  devices: z.array(z.number().int().positive()).min(1),
  windowMs: pos,
  warmupMs: nonNeg,
  workers: z.number().int().positive(),
  seed: z.number().int().min(0),
  settings: LiveSettingsSchema,
  calibration: LiveCalibrationSchema,
  calibrationByLoad: z.array(z.object({ policy: z.enum(POLICIES), devices: z.number().int().positive(), calibration: LiveCalibrationSchema })).default([]),
});
export type LiveReport = z.infer<typeof LiveReportSchema>;

export interface LiveRun {
  dir: string;
  report: LiveReport;
  rows: ProfileRow[];
  samples: AcceptanceSample[];
}

/**
 * Reads a `wisp bench` report folder.
 * @throws ReplayError naming the file and what is wrong (e.g. a report from before calibration)
 */
export function loadLiveRun(dir: string): LiveRun {
  const read = (name: string): string => {
    try {
      return readFileSync(join(dir, name), 'utf8');
    } catch (e) {
      throw new ReplayError(`${join(dir, name)}: cannot read (${(e as Error).message}); --replay takes a folder written by wisp bench`);
    }
  };
  let raw: unknown;
  try {
    raw = JSON.parse(read('results.json'));
  } catch (e) {
    if (e instanceof ReplayError) throw e;
    throw new ReplayError(`${join(dir, 'results.json')}: invalid JSON (${(e as Error).message})`);
  }
  const parsed = LiveReportSchema.safeParse(raw);
  if (!parsed.success) {
    const why = parsed.error.issues.slice(0, 3).map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ReplayError(`${join(dir, 'results.json')} is not a live bench report the simulator can replay (${why}); reports written before calibration was recorded need a new wisp bench run`);
  }
  const rows = loadServerProfile(join(dir, 'server-profile.csv'));
  // A run of centralized serving alone drafts nothing: it has no samples and needs none.
  const speculative = Object.keys(parsed.data.policies).some((p) => p !== 'centralized');
  const text = read('acceptance-samples.jsonl');
  let samples: AcceptanceSample[] = [];
  if (speculative || text.trim() !== '') {
    try {
      samples = parseAcceptanceSamples(text, join(dir, 'acceptance-samples.jsonl'));
    } catch (e) {
      throw new ReplayError((e as Error).message);
    }
  }
  return { dir, report: parsed.data, rows, samples };
}

/**
 * How the live server's batch times sit around the cost model fitted to them (one fit for both):
 * - `noiseSigma`: spread of log(measured / fitted), which the simulator draws batch times with.
 *   A robust s.d. (1.4826 × median absolute deviation): a few stalls (GC, a busy core) would
 *   otherwise set the noise of every batch.
 * - `meanScale`: measured over fitted time, summed over the rows. The fit follows the bulk of the
 *   batches; single live measurements are skewed to the slow side, so without this the simulated
 *   server would be faster on average than the measured one.
 */
export function profileFitStats(rows: readonly ProfileRow[], model = 'live'): { noiseSigma: number; meanScale: number } {
  const mine = rows.filter((r) => r.model === model && r.msMedian > 0);
  if (mine.length === 0) return { noiseSigma: 0, meanScale: 1 };
  const fit = estimatorFromProfile(mine);
  const fitted = mine.map((r) => predictBatchMs(fit, rowShapes(r)));
  const measuredSum = mine.reduce((a, r) => a + r.msMedian, 0);
  const fittedSum = fitted.reduce((a, b) => a + b, 0);
  let noiseSigma = 0;
  if (mine.length >= 2) {
    const logs = mine.map((r, i) => Math.log(r.msMedian / Math.max(1e-6, fitted[i])));
    const med = percentile(logs, 50);
    noiseSigma = 1.4826 * percentile(logs.map((x) => Math.abs(x - med)), 50);
  }
  return { noiseSigma, meanScale: fittedSum > 0 ? measuredSum / fittedSum : 1 };
}

/**
 * A run configuration with a calibration's measured machinery: broker hops, worker overheads,
 * think time and each class's drafting pace. Figures a calibration could not measure (no
 * verified round under centralized serving, no decode step under WISP) keep the fallback's.
 */
export function withCalibration(run: SimRunConfig, cal: LiveCalibration, fallback: LiveCalibration): SimRunConfig {
  const rounds = cal.counts.rounds > 0 ? cal : fallback;
  const steps = cal.counts.steps > 0 ? cal : fallback;
  const batches = cal.counts.batches > 0 ? cal : fallback;
  return {
    ...run,
    classes: run.classes.map((k) => {
      const ms = rounds.draftMsPerToken[k.name];
      return ms === undefined ? k : { ...k, profile: { ...k.profile, draftMsPerToken: ms } };
    }),
    workload: { ...run.workload, thinkMs: cal.thinkMs, startSpreadMs: Math.max(1, cal.thinkMs) },
    server: { ...run.server, hopMs: rounds.linkHopMs, linkHopMs: rounds.linkHopMs, batchOverheadMs: batches.batchOverheadMs, stepOverheadMs: steps.stepOverheadMs },
  };
}

/**
 * The run as a scenario, and each device class's acceptance from its own draft's samples.
 * @param perLoad each load takes the overheads measured at that load of that policy (the live
 *   machinery slows as the load shares this machine's CPUs); otherwise one pooled set for all
 */
export function replayScenario(run: LiveRun, opts: { perLoad?: boolean } = {}): { scenario: Scenario; acceptance: AcceptanceOverride } {
  const r = run.report;
  const k = r.timeScale;
  const cal = r.calibration;
  const counts = new Map<string, number>();
  for (const p of r.profiles) counts.set(p, (counts.get(p) ?? 0) + 1);
  const models = new Map<string, AcceptanceModel>();
  // No samples only in a centralized-only run, where nothing is drafted (loadLiveRun checks).
  const pooled = run.samples.length > 0 ? empiricalAcceptance(run.samples, `empirical:${run.dir}`) : parametricAcceptance({ agreement: 0.5 }, 'unused: nothing drafted');
  const classes = [...counts].map(([name, weight]) => {
    const profile = r.settings.devices[name];
    if (!profile) throw new ReplayError(`results.json settings.devices lacks the profile "${name}" the run used`);
    const own = run.samples.filter((s) => s.deviceClass === name);
    models.set(name, own.length > 0 ? empiricalAcceptance(own, `empirical:${name}`) : pooled);
    return {
      name,
      weight,
      // Drafting as the run measured it (paced to the profile, or slower when the CPU was busy).
      profile: { ...profile, draftMsPerToken: cal.draftMsPerToken[name] ?? profile.draftMsPerToken * k, rttMs: profile.rttMs * k, jitterMs: profile.jitterMs * k },
      acceptance: { agreement: pooled.meanAcceptance },
      draftDescription: `${profile.draftModel} of the live run (empirical acceptance)`,
    };
  });
  const fitStats = profileFitStats(run.rows);
  const scenario: Scenario = {
    name: 'live',
    description: `replay of the live run ${run.dir}: its server profile, acceptance samples, measured overheads and settings`,
    slo: { ttftMs: r.slo.ttftMs * k, tpotMs: r.slo.tpotMs * k },
    sloNote: `the live run's SLO (${r.slo.ttftMs} ms TTFT, ${r.slo.tpotMs} ms TPOT real-world) scaled by its time scale ${k}`,
    workers: r.workers,
    deviceCounts: [...r.devices],
    durationMs: r.warmupMs + r.windowMs,
    warmupMs: r.warmupMs,
    seed: r.seed,
    server: {
      kind: 'profile',
      path: join(run.dir, 'server-profile.csv'),
      model: 'live',
      scale: fitStats.meanScale,
      description: `the live run's server, fitted to the batch times it measured (${join(run.dir, 'server-profile.csv')})`,
    },
    serverNoise: fitStats.noiseSigma,
    hopMs: cal.linkHopMs,
    linkHopMs: cal.linkHopMs,
    batchOverheadMs: cal.batchOverheadMs,
    stepOverheadMs: cal.stepOverheadMs,
    // The run's own scheduler knobs (pipelined drafting is a run setting here).
    scheduler: (({ pipelinedDrafting: _pipelined, ...knobs }) => knobs)(r.settings.scheduler),
    pipelinedDrafting: r.settings.scheduler.pipelinedDrafting,
    controller: r.settings.controller,
    classes,
    workload: { promptTokens: cal.promptTokens, outputTokens: cal.outputTokens, thinkMs: cal.thinkMs, startSpreadMs: Math.max(1, cal.thinkMs) },
    refineSteps: 0,
  };
  if (opts.perLoad) {
    const byLoad = new Map(r.calibrationByLoad.map((x) => [`${x.policy}@${x.devices}`, x.calibration]));
    scenario.adjust = (cfg) => {
      const own = byLoad.get(`${cfg.policy}@${cfg.devices}`);
      return own ? withCalibration(cfg, own, cal) : cfg;
    };
  }
  return { scenario, acceptance: (cls) => models.get(cls.name) ?? pooled };
}

/** The simulator against the live run, one policy. */
export interface PolicyValidation {
  policy: PolicyName;
  live: { capacity: number; goodputTokS: number };
  sim: { capacity: number; goodputTokS: number };
  /** (sim − live) / live; null when the live figure is 0. */
  capacityError: number | null;
  goodputError: number | null;
  /** Per swept load: live and simulated goodput and attainment. */
  loads: { devices: number; liveGoodputTokS: number; simGoodputTokS: number; liveAttainment: number; simAttainment: number }[];
  /** Mean over loads of |sim − live| / live goodput (loads with live goodput 0 left out). */
  meanLoadGoodputError: number | null;
}

export interface Validation {
  policies: PolicyValidation[];
  /** The largest |error| of capacity and of best goodput over the policies. */
  worstCapacityError: number | null;
  worstGoodputError: number | null;
}

const relError = (sim: number, live: number): number | null => (live > 0 ? (sim - live) / live : null);
const worst = (xs: (number | null)[]): number | null => {
  const v = xs.filter((x): x is number => x !== null).map(Math.abs);
  return v.length === 0 ? null : Math.max(...v);
};

/** What the comparison needs of a run's results (a live report or a simulated sweep). */
export interface RunFigures {
  policies: Partial<Record<PolicyName, { capacity: number; goodputTokS: number; points: { devices: number; attainment: number; goodputTokS: number }[] }>>;
}

/** Compares each policy the two runs share. */
export function compareWithLive(live: RunFigures, sim: RunFigures): Validation {
  const out: PolicyValidation[] = [];
  for (const policy of POLICIES) {
    const l = live.policies[policy];
    const s = sim.policies[policy];
    if (!l || !s) continue;
    const loads = l.points.map((lp) => {
      const sp = s.points.find((p) => p.devices === lp.devices);
      return { devices: lp.devices, liveGoodputTokS: lp.goodputTokS, simGoodputTokS: sp?.goodputTokS ?? 0, liveAttainment: lp.attainment, simAttainment: sp?.attainment ?? 0 };
    });
    const perLoad = loads.filter((x) => x.liveGoodputTokS > 0).map((x) => Math.abs(x.simGoodputTokS - x.liveGoodputTokS) / x.liveGoodputTokS);
    // The simulator's figures over the loads this policy ran live (a capacity search runs each
    // policy at its own loads; the replay runs them all at every one): like against like.
    const simPoints = loads.map((x) => ({ devices: x.devices, attainment: x.simAttainment }));
    const simCapacity = capacity(simPoints);
    const simGoodput = Math.max(0, ...loads.map((x) => x.simGoodputTokS));
    out.push({
      policy,
      live: { capacity: l.capacity, goodputTokS: l.goodputTokS },
      sim: { capacity: simCapacity, goodputTokS: simGoodput },
      capacityError: relError(simCapacity, l.capacity),
      goodputError: relError(simGoodput, l.goodputTokS),
      loads,
      meanLoadGoodputError: perLoad.length === 0 ? null : perLoad.reduce((a, b) => a + b, 0) / perLoad.length,
    });
  }
  return { policies: out, worstCapacityError: worst(out.map((p) => p.capacityError)), worstGoodputError: worst(out.map((p) => p.goodputError)) };
}

const pct = (x: number | null): string => (x === null ? 'n/a' : `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)}%`);

/** The comparison as a text table (terminal and report.md). */
export function validationTable(v: Validation): string {
  const head = ['policy', 'capacity live/sim', 'error', 'goodput live/sim tok/s', 'error', 'per-load goodput err'];
  const rows = v.policies.map((p) => [
    p.policy,
    `${p.live.capacity} / ${p.sim.capacity}`,
    pct(p.capacityError),
    `${p.live.goodputTokS.toFixed(1)} / ${p.sim.goodputTokS.toFixed(1)}`,
    pct(p.goodputError),
    p.meanLoadGoodputError === null ? 'n/a' : `${(p.meanLoadGoodputError * 100).toFixed(1)}%`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  const loads = v.policies.map((p) => `  ${p.policy.padEnd(12)} ${p.loads.map((x) => `${x.devices}: ${x.liveGoodputTokS.toFixed(0)}/${x.simGoodputTokS.toFixed(0)} tok/s ${(x.liveAttainment * 100).toFixed(0)}%/${(x.simAttainment * 100).toFixed(0)}%`).join('  ')}`);
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line), '', 'per load (live/sim goodput, attainment):', ...loads].join('\n');
}
