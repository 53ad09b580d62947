/**
 * Load sweeps: each policy (and each WISP variant with an extra switched off) at each number of
 * concurrent devices, one simulated run per point; capacity by the docs/design.md §6 definition, refined
 * by bisection between the last passing and the first failing count; WISP's ratios. The result
 * has the shape of `wisp bench` (bench/metrics.ts BenchResults).
 */
import { ATTAINMENT_TARGET, loadPoint, policyResult, ratioBetween, type BenchResults, type LoadPoint, type PolicyResult } from '../results/metrics.ts';
import type { PolicyName } from '../policies/types.ts';
import { nextSearchCount, searchCensored, type CapacitySearch } from '../results/capacity-search.ts';
import { hasWispExtras } from '../policies/serving-mode.ts';
import { runSimulation } from './engine.ts';
import { describeServer, PAPER_FIGURES, runConfig, serverCostOf, type AcceptanceOverride, type Scenario } from './scenarios.ts';
import type { ServerCostModel } from './server-cost.ts';
import type { SimRunResult } from './types.ts';

/** One line of the sweep: a policy with its extras set. */
export interface SweepVariant {
  /** Key in the results: 'wisp' | 'sled' | 'centralized' | 'wisp-no-pipelining' | … */
  key: string;
  policy: PolicyName;
  pipelinedDrafting: boolean;
  truncation: boolean;
}

export interface SweepOptions {
  scenario: Scenario;
  /** The scenario's server, when the caller built it already (default: serverCostOf(scenario)). */
  cost?: ServerCostModel;
  policies: PolicyName[];
  /** Also run WISP with each extra off, and with both off (the paper's WISP). */
  extrasVariants: boolean;
  acceptance?: AcceptanceOverride;
  onProgress?: (p: { key: string; devices: number; done: number; wallMs: number }) => void;
}

/** Per-run bookkeeping kept beside the metrics. */
export interface RunSummary {
  key: string;
  devices: number;
  events: number;
  wallMs: number;
  sessionsStarted: number;
  refused: number;
  lookahead: { started: number; reused: number };
  /** The scheduler's own running estimator error (EWMA APE), mean over workers. */
  schedulerEstimatorEwmaApe: number;
}

/** The variants a sweep runs: the policies asked for, then WISP's extras off one at a time. */
export function sweepVariants(s: Scenario, policies: readonly PolicyName[], extrasVariants: boolean): SweepVariant[] {
  const pipe = s.pipelinedDrafting;
  const trunc = s.scheduler.truncation;
  const out: SweepVariant[] = policies.map((policy) => ({
    key: policy,
    policy,
    // The extras are ours, for WISP (and adaptive, which batches as WISP does); the baselines run as their papers describe them.
    pipelinedDrafting: hasWispExtras(policy) && pipe,
    truncation: hasWispExtras(policy) && trunc,
  }));
  if (extrasVariants && policies.includes('wisp')) {
    if (pipe) out.push({ key: 'wisp-no-pipelining', policy: 'wisp', pipelinedDrafting: false, truncation: trunc });
    if (trunc) out.push({ key: 'wisp-no-truncation', policy: 'wisp', pipelinedDrafting: pipe, truncation: false });
    if (pipe || trunc) out.push({ key: 'wisp-no-extras', policy: 'wisp', pipelinedDrafting: false, truncation: false });
  }
  return out;
}

/** Runs one point of a sweep. */
export function runPoint(o: SweepOptions, v: SweepVariant, devices: number): { point: LoadPoint; run: SimRunResult } {
  const cost = o.cost ?? serverCostOf(o.scenario);
  const cfg = runConfig(o.scenario, cost, v.policy, devices, {
    pipelinedDrafting: v.pipelinedDrafting,
    truncation: v.truncation,
    ...(o.acceptance ? { acceptance: o.acceptance } : {}),
  });
  const run = runSimulation(cfg);
  const point = loadPoint(run.records, { devices, windowMs: run.windowMs, batches: run.batches, workers: cfg.workers, kvCapacityTokens: cost.kvCapacityTokens });
  return { point, run };
}

function summaryOf(key: string, devices: number, r: SimRunResult): RunSummary {
  const apes = r.estimators.filter((e) => e.observations > 0).map((e) => e.ewmaApe);
  return {
    key,
    devices,
    events: r.events,
    wallMs: Math.round(r.wallMs),
    sessionsStarted: r.sessionsStarted,
    refused: r.refused,
    lookahead: r.lookahead,
    schedulerEstimatorEwmaApe: apes.length === 0 ? 0 : apes.reduce((a, b) => a + b, 0) / apes.length,
  };
}

/** A memoised "run this many devices" for one variant, recording each run. */
function loadRunner(o: SweepOptions, v: SweepVariant, runs: RunSummary[], done: { n: number }): { run: (devices: number) => LoadPoint; points: Map<number, LoadPoint> } {
  const points = new Map<number, LoadPoint>();
  const run = (devices: number): LoadPoint => {
    const known = points.get(devices);
    if (known) return known;
    const { point, run: r } = runPoint(o, v, devices);
    points.set(devices, point);
    runs.push(summaryOf(v.key, devices, r));
    done.n++;
    o.onProgress?.({ key: v.key, devices, done: done.n, wallMs: r.wallMs });
    return point;
  };
  return { run, points };
}

/** Sweeps one variant over the scenario's device counts, then refines its capacity by bisection. */
export function sweepVariant(o: SweepOptions, v: SweepVariant, runs: RunSummary[], done: { n: number }): PolicyResult {
  const { run, points } = loadRunner(o, v, runs, done);
  const counts = [...new Set(o.scenario.deviceCounts)].sort((a, b) => a - b);
  for (const n of counts) run(n);
  // Refine: bisect between the largest passing count and the next (failing) one.
  for (let step = 0; step < o.scenario.refineSteps; step++) {
    const sorted = [...points.values()].sort((a, b) => a.devices - b.devices);
    const cap = policyResult(sorted).capacity;
    const above = sorted.find((p) => p.devices > cap && p.attainment < ATTAINMENT_TARGET);
    if (cap === 0 || !above) break;
    const mid = Math.floor((cap + above.devices) / 2);
    if (mid <= cap || mid >= above.devices) break;
    run(mid);
  }
  return policyResult([...points.values()]);
}

/** A policy's result from a capacity search; `censored` when it passed at the search's largest count. */
export interface SearchedResult extends PolicyResult {
  censored: boolean;
}

/**
 * Finds one variant's capacity without a fixed grid: doubles the device count from
 * `search.start` until attainment falls below the target (or `search.max`), then bisects between
 * the last passing and the first failing count until they are within `search.precision`.
 */
export function searchCapacity(o: SweepOptions, v: SweepVariant, search: CapacitySearch, runs: RunSummary[], done: { n: number }): SearchedResult {
  const { run, points } = loadRunner(o, v, runs, done);
  const loads: LoadPoint[] = [];
  for (let n = nextSearchCount(loads, search); n !== null; n = nextSearchCount(loads, search)) loads.push(run(n));
  return { ...policyResult([...points.values()]), censored: searchCensored(loads) };
}

/** Results of a whole sweep, in the `wisp bench` shape plus the simulator's extras. */
export function runSweep(options: SweepOptions): BenchResults {
  const started = performance.now();
  const o: SweepOptions = { ...options, cost: options.cost ?? serverCostOf(options.scenario) };
  const variants = sweepVariants(o.scenario, o.policies, o.extrasVariants);
  const runs: RunSummary[] = [];
  const done = { n: 0 };
  const byKey: Record<string, PolicyResult> = {};
  for (const v of variants) byKey[v.key] = sweepVariant(o, v, runs, done);
  const policies: BenchResults['policies'] = {};
  for (const p of o.policies) policies[p] = byKey[p];
  const ratios: BenchResults['ratios'] = {};
  if (policies.wisp && policies.centralized) ratios.vsCentralized = ratioBetween(policies.wisp, policies.centralized);
  if (policies.wisp && policies.sled) ratios.vsSled = ratioBetween(policies.wisp, policies.sled);
  const extras: Record<string, { pipelinedDrafting: boolean; truncation: boolean; result: PolicyResult; vsCentralized?: ReturnType<typeof ratioBetween>; vsSled?: ReturnType<typeof ratioBetween> }> = {};
  for (const v of variants) {
    if (v.policy !== 'wisp') continue;
    const r = byKey[v.key];
    extras[v.key] = {
      pipelinedDrafting: v.pipelinedDrafting,
      truncation: v.truncation,
      result: r,
      ...(policies.centralized ? { vsCentralized: ratioBetween(r, policies.centralized) } : {}),
      ...(policies.sled ? { vsSled: ratioBetween(r, policies.sled) } : {}),
    };
  }
  const s = o.scenario;
  return {
    kind: 'sim',
    policies,
    ratios,
    slo: s.slo,
    attainmentTarget: ATTAINMENT_TARGET,
    scenario: {
      name: s.name,
      description: s.description,
      sloNote: s.sloNote,
      ...describeServer(s),
      kvCapacityTokens: o.cost!.kvCapacityTokens,
      serverNoise: s.serverNoise,
      workers: s.workers,
      deviceCounts: s.deviceCounts,
      durationS: s.durationMs / 1_000,
      warmupS: s.warmupMs / 1_000,
      seed: s.seed,
      scheduler: s.scheduler,
      pipelinedDrafting: s.pipelinedDrafting,
      controller: s.controller,
      classes: s.classes.map((k) => ({ name: k.name, weight: k.weight, draft: k.draftDescription, acceptance: o.acceptance ? 'override' : k.acceptance, profile: k.profile })),
      workload: s.workload,
    },
    extras,
    // A replayed live run is no reproduction of the paper's setting: no paper figures beside it.
    ...(s.name === 'live' ? {} : { paper: PAPER_FIGURES }),
    runs,
    wallS: (performance.now() - started) / 1_000,
  };
}
