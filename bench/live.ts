/**
 * `wisp bench`: the live benchmark. For each policy it starts the real system (scheduler, verifier
 * worker(s), an edge fleet) against the configured RabbitMQ and Redis with real ONNX models, then
 * sweeps the number of concurrently active devices: every active device runs a closed loop of
 * prompts (next prompt as soon as the last answer is in) for a warm-up and a measured window.
 * Sessions that started inside the window are judged against the SLO (bench/metrics.ts).
 *
 * Time: device profiles are real-world figures multiplied by `timeScale`; the server's compute is
 * real. With timeScale s, the emulated world is "a server 1/s times slower than this CPU" — the
 * SLO is scaled by s too, so attainment, capacity and every ratio are those of the real-world
 * setting; absolute times and goodput are reported as measured (emulated units).
 */
import { randomUUID } from 'node:crypto';
import { WispClient } from '../actors/client.ts';
import type { JudgedToken, RoundTiming, ServedPrompt } from '../actors/edge/device.ts';
import { runUp } from '../actors/launch.ts';
import { connectBroker } from '../broker/connection.ts';
import { PROMPTS_QUEUE, SCHEDULER_QUEUE } from '../broker/topology.ts';
import type { Slo } from '../protocol/messages.ts';
import { loadConfig, type DeepPartial } from '../config/load.ts';
import type { WispConfig } from '../config/schema.ts';
import { isDecodeStep, type BatchReport } from '../machines/verifier-worker.ts';
import type { PolicyName } from '../policies/types.ts';
import { calibrate, type LiveCalibration } from './calibration.ts';
import { nextSearchCount, searchCensored, type CapacitySearch } from '../results/capacity-search.ts';
import { writeReportFiles } from '../results/report.ts';
import { writeRunReport } from '../results/write.ts';
import { ATTAINMENT_TARGET, loadPoint, medianRun, policyResult, ratioBetween, type BatchRecord, type BenchResults, type LoadPoint, type SessionRecord, type SessionTimeParts } from '../results/metrics.ts';
import type { LiveSettings, PaceCounts, Pacing } from '../results/schema.ts';

export interface LiveBenchOptions {
  policies: PolicyName[];
  /** Concurrently active devices at each load of the sweep (when there is no `search`). */
  devices: number[];
  /** Runs per load (≥ 1): the median run stands for the load, with the runs' range beside it. */
  repeats?: number;
  /** Search each policy's capacity instead (doubling from `start`, then bisecting); `devices` is then ignored. */
  search?: CapacitySearch;
  warmupMs: number;
  windowMs: number;
  timeScale: number;
  preset: 'tiny' | 'small';
  /** Device profiles, assigned round-robin over the fleet. */
  profiles: string[];
  maxNewTokens: number;
  workers: number;
  /** Real-world SLO; the bench applies it scaled by timeScale. */
  slo: Slo;
  seed: number;
  /** Config file and overrides applied under the bench's own settings. */
  configFile?: string;
  overrides?: DeepPartial<WispConfig>;
  /** Pace the verifiers to this serving engine, gpu/model (models.pace; the real target still computes). */
  pace?: string;
  onProgress?: (p: { policy: PolicyName; devices: number; step: number; steps: number }) => void;
}

/** Short prompts of the end-to-end tests and the overhead benchmark. */
export const SHORT_PROMPTS = [
  'the quick brown fox',
  'once upon a time',
  'in the beginning there was',
  'hello',
  'a river runs through the',
  'she said that the',
  'the old house on the hill',
  'numbers and letters',
];

/** Prompts the devices cycle through (the same for every policy). */
export const BENCH_PROMPTS = [
  'the old house on the hill',
  'once upon a time there was',
  'she opened the door and',
  'the river ran through the',
  'in the morning the town',
  'he looked at the letter and',
  'a storm came over the sea',
  'the children went to the',
];

function toSessionRecord(s: ServedPrompt): SessionRecord {
  return {
    sessionId: s.sessionId,
    deviceId: s.deviceId,
    deviceClass: s.profileName,
    startedAtMs: s.startedAtMs,
    endedAtMs: s.endedAtMs,
    finished: s.error === null,
    outputTokens: s.tokens.length,
    stats: s.stats,
    energyJ: s.energyJ,
    draftMs: s.draftMs,
    timeMs: liveTimeParts(s),
  };
}

/**
 * A live session's time by part, from what its device counted: drafting (all of it: the live
 * device drafts on the critical path unless pipelining is on), the server's queueing and pass
 * time as each result or stream chunk reported it; the rest of its duration is the network
 * (emulated links, broker hops, device and worker overheads). No KV-cache limit live: no memory wait.
 */
function liveTimeParts(s: ServedPrompt): SessionTimeParts {
  const total = Math.max(0, s.endedAtMs - s.startedAtMs);
  const drafting = s.draftMs;
  const queue = s.stats.queueMs;
  const verify = s.stats.verifyMs;
  return { drafting, network: Math.max(0, total - drafting - queue - verify), queue, verify, memoryWait: 0 };
}

function toBatchRecord(r: BatchReport, workerIdOf: string, atMs: number): BatchRecord {
  const step = isDecodeStep(r);
  const prefill = !step && r.shapes.every((x) => x.L === 0);
  return {
    workerId: workerIdOf,
    kind: step ? 'step' : prefill ? 'prefill' : 'verify',
    size: r.shapes.length,
    startedAtMs: atMs - r.actualMs,
    actualMs: r.actualMs,
    ...(r.busyMs !== undefined ? { busyMs: r.busyMs } : {}),
    predictedMs: step || r.predictedMs <= 0 ? null : r.predictedMs,
    truncatedTokens: 0,
  };
}

/** The configuration the bench starts from: the config file and overrides given. */
function baseConfig(o: LiveBenchOptions): WispConfig {
  return loadConfig({ ...(o.configFile ? { file: o.configFile } : {}), ...(o.overrides ? { overrides: o.overrides } : {}) });
}

/** The settings of a run that `wisp sim --replay` needs (the policy itself varies per run). */
export function liveSettings(config: WispConfig, profiles: readonly string[]): LiveSettings {
  const { policy: _policy, ...scheduler } = config.scheduler;
  const devices = Object.fromEntries(profiles.filter((p) => config.devices[p]).map((p) => [p, config.devices[p]]));
  return { scheduler, controller: config.controller, devices };
}

/** One policy: start the system once, sweep the loads, stop it. */
async function benchPolicy(policy: PolicyName, o: LiveBenchOptions, stepBase: number, steps: number, artifacts: LiveArtifacts): Promise<LoadPoint[]> {
  const slo = { ttftMs: o.slo.ttftMs * o.timeScale, tpotMs: o.slo.tpotMs * o.timeScale };
  const base = baseConfig(o);
  const config = loadConfig({
    env: {},
    overrides: {
      ...(JSON.parse(JSON.stringify(base)) as DeepPartial<WispConfig>),
      redisKeyPrefix: `wisp-bench-${randomUUID().slice(0, 8)}:`,
      logLevel: 'error',
      timeScale: o.timeScale,
      models: { ...base.models, preset: o.preset, ...(o.pace ? { pace: o.pace } : {}) },
      slo,
      scheduler: { ...base.scheduler, policy },
      // A round may legitimately wait long under overload; only a lost message should time out.
      edge: { verifyTimeoutMs: Math.max(base.edge.verifyTimeoutMs, 30_000), maxRetries: base.edge.maxRetries },
    },
  });
  const maxDevices = o.search ? o.search.max : Math.max(...o.devices);
  const served: ServedPrompt[] = [];
  /** This load's rounds and batch reports (per-load calibration). */
  const loadRounds: RoundTiming[] = [];
  const loadReports: BatchReport[] = [];
  const batches: BatchRecord[] = [];
  const broker = await connectBroker(config.amqpUrl, { connectionName: `bench-${policy}` });
  await broker.purgeQueue(PROMPTS_QUEUE);
  await broker.purgeQueue(SCHEDULER_QUEUE);
  const up = await runUp(config, {
    devices: maxDevices,
    workers: o.workers,
    profiles: o.profiles,
    seed: o.seed,
    fleetId: `bench-${policy}-${randomUUID().slice(0, 4)}`,
    hooks: {
      onServed: (s) => {
        served.push(s);
        artifacts.served.push(s);
      },
      onBatch: (r) => {
        batches.push(toBatchRecord(r, 'worker', performance.timeOrigin + performance.now()));
        artifacts.batchReports.push(r);
        loadReports.push(r);
        if (r.actualMs > 0) artifacts.profileRows.push(profileRow(r));
      },
      onTokenJudged: (t) => artifacts.acceptanceSamples.push(t),
      onPacedPass: (p) => {
        const c = (artifacts.paced[policy] ??= { passes: 0, late: 0, worstLateMs: 0 });
        c.passes++;
        if (p.late) (c.late++, (c.worstLateMs = Math.max(c.worstLateMs, p.computeMs - p.pacedMs)));
      },
      onRoundTimed: (t) => {
        artifacts.rounds.push(t);
        loadRounds.push(t);
      },
    },
  });
  const client = new WispClient(broker);
  await client.start();
  const points: LoadPoint[] = [];
  let step = stepBase;
  /** One load: k devices send prompts back to back for the warm-up and the window. */
  const runLoad = async (k: number): Promise<LoadPoint> => {
    o.onProgress?.({ policy, devices: k, step: step++, steps });
    const active = up.fleet.devices.slice(0, k);
    const now = () => performance.timeOrigin + performance.now();
    const start = now();
    const windowStart = start + o.warmupMs;
    const windowEnd = windowStart + o.windowMs;
    served.length = 0;
    batches.length = 0;
    loadRounds.length = 0;
    loadReports.length = 0;
    let promptIndex = 0;
    await Promise.all(
      active.map(async (device) => {
        while (now() < windowEnd) {
          const prompt = BENCH_PROMPTS[promptIndex++ % BENCH_PROMPTS.length];
          await client.submit({ prompt, maxNewTokens: o.maxNewTokens, slo, sampling: { temperature: 0, topP: 1, seed: o.seed }, deviceId: device.id }, 120_000);
        }
      }),
    );
    const judged = served.filter((s) => s.startedAtMs >= windowStart && s.startedAtMs < windowEnd).map(toSessionRecord);
    const inWindow = batches.filter((b) => b.startedAtMs >= windowStart && b.startedAtMs < windowEnd);
    try {
      artifacts.calibrationByLoad.push({ policy, devices: k, calibration: calibrate(served, loadRounds, loadReports) });
    } catch {
      // A load that finished no session has nothing to calibrate from; the pooled figures stand in.
    }
    return loadPoint(judged, { devices: k, windowMs: o.windowMs, batches: inWindow, workers: o.workers });
  };
  try {
    const repeated = async (k: number): Promise<LoadPoint> => {
      const runs: LoadPoint[] = [];
      for (let r = 0; r < (o.repeats ?? 1); r++) runs.push(await runLoad(k));
      return medianRun(runs);
    };
    if (o.search) for (let n = nextSearchCount(points, o.search); n !== null; n = nextSearchCount(points, o.search)) points.push(await repeated(n));
    else for (const k of o.devices) points.push(await repeated(k));
  } finally {
    await client.close();
    await up.stop();
    await broker.close();
  }
  return points;
}

/** What the live run measured that the simulator can be fed with (`wisp sim --server-profile/--acceptance-samples`). */
export interface LiveArtifacts {
  /** Executed batches as profile rows (format of data/verify-profile-h200.csv, model "live"). */
  profileRows: string[];
  /** Judged draft tokens: features, verdict and device profile, one per element. */
  acceptanceSamples: JudgedToken[];
  /** Every served prompt, verified round and executed batch of the run (calibration inputs). */
  served: ServedPrompt[];
  rounds: RoundTiming[];
  batchReports: BatchReport[];
  /** The calibration of each load of each policy on its own (the machinery slows under load). */
  calibrationByLoad: { policy: PolicyName; devices: number; calibration: LiveCalibration }[];
  /** Paced passes per policy (`pace`). */
  paced: Partial<Record<PolicyName, PaceCounts>>;
}

export const PROFILE_HEADER = 'model,kind,B,n_max,L_max,sum_n,sum_L,sum_nL,ms_median,ms_min,ms_max,per_request_n,per_request_L';

/** One executed batch as a profile row: prefill when every member starts from an empty cache. */
export function profileRow(r: BatchReport): string {
  const ns = r.shapes.map((x) => x.n);
  const ls = r.shapes.map((x) => x.L);
  const kind = ls.every((l) => l === 0) ? 'prefill' : 'mixed';
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const ms = r.actualMs.toFixed(3);
  // A prefill row counts its prompts padded to the longest (the profile format's convention).
  const sumN = kind === 'prefill' ? ns.length * Math.max(...ns) : sum(ns);
  return ['live', kind, ns.length, Math.max(...ns), Math.max(...ls), sumN, sum(ls), sum(ns.map((n, i) => n * ls[i])), ms, ms, ms, ns.join('/'), ls.join('/')].join(',');
}

export async function runLiveBench(o: LiveBenchOptions): Promise<BenchResults & { artifacts: LiveArtifacts }> {
  const started = Date.now();
  const knobs = baseConfig(o);
  const artifacts: LiveArtifacts = { profileRows: [], acceptanceSamples: [], served: [], rounds: [], batchReports: [], calibrationByLoad: [], paced: {} };
  const policies: BenchResults['policies'] = {};
  // A search's length is known only as it goes: the progress counts the doubling's loads.
  const steps = o.policies.length * (o.repeats ?? 1) * (o.search ? Math.ceil(Math.log2(o.search.max / o.search.start)) + 1 : o.devices.length);
  let base = 0;
  for (const policy of o.policies) {
    const points = await benchPolicy(policy, o, base, steps, artifacts);
    policies[policy] = { ...policyResult(points), ...(o.search ? { censored: searchCensored(points) } : {}) };
    base += points.length;
  }
  const ratios: BenchResults['ratios'] = {};
  if (policies.wisp && policies.centralized) ratios.vsCentralized = ratioBetween(policies.wisp, policies.centralized);
  if (policies.wisp && policies.sled) ratios.vsSled = ratioBetween(policies.wisp, policies.sled);
  return {
    kind: 'bench',
    policies,
    ratios,
    slo: o.slo,
    attainmentTarget: ATTAINMENT_TARGET,
    timeScale: o.timeScale,
    // Every report names its server: here the real target, on this machine's CPU.
    scenario: {
      name: 'live',
      server: o.pace ? `live:${o.preset}@${o.pace}` : `live:${o.preset}`,
      serverDescription: o.pace
        ? `the forged ${o.preset} target model run by ONNX Runtime on this machine's CPU, each pass held until the ${o.pace} serving engine's modelled time for it (× ${o.timeScale}) had passed, ${o.workers} worker(s); devices emulated at time scale ${o.timeScale}`
        : `the forged ${o.preset} target model run by ONNX Runtime on this machine's CPU (padded batches), ${o.workers} worker(s); devices emulated at time scale ${o.timeScale}`,
    },
    ...(o.pace ? { pacing: pacingOf(o.pace, artifacts.paced) } : {}),
    preset: o.preset,
    profiles: o.profiles,
    // Every count a policy ran at (the replay runs each policy at each of them).
    devices: [...new Set(Object.values(policies).flatMap((r) => r?.points.map((p) => p.devices) ?? []))].sort((a, b) => a - b),
    windowMs: o.windowMs,
    warmupMs: o.warmupMs,
    maxNewTokens: o.maxNewTokens,
    workers: o.workers,
    seed: o.seed,
    wallS: (Date.now() - started) / 1_000,
    // The settings the run's scheduler and devices used, and what it measured of its own
    // machinery: `wisp sim --replay` rebuilds the run from these.
    settings: liveSettings(knobs, o.profiles),
    calibration: calibrate(artifacts.served, artifacts.rounds, artifacts.batchReports),
    calibrationByLoad: artifacts.calibrationByLoad,
    artifacts,
  };
}

/** The run's pacing figures from each policy's counts. */
export function pacingOf(server: string, byPolicy: Partial<Record<PolicyName, PaceCounts>>): Pacing {
  const counts = Object.values(byPolicy).filter((c): c is PaceCounts => c !== undefined);
  const total = { passes: counts.reduce((a, c) => a + c.passes, 0), late: counts.reduce((a, c) => a + c.late, 0), worstLateMs: Math.max(0, ...counts.map((c) => c.worstLateMs)) };
  return { server, onTimeShare: total.passes > 0 ? (total.passes - total.late) / total.passes : 1, total, byPolicy };
}

/**
 * Writes a live run's report folder: results.json (without the raw artifacts), the measured
 * server profile and acceptance samples the simulator can be fed, plots and report.md.
 * @returns the folder
 */
export async function writeLiveReport(results: BenchResults & { artifacts: LiveArtifacts }, outDir?: string): Promise<{ dir: string; summary: BenchResults }> {
  const { artifacts, ...summary } = results;
  const dir = await writeRunReport(summary, outDir, {
    'server-profile.csv': `${PROFILE_HEADER}\n${artifacts.profileRows.join('\n')}\n`,
    'acceptance-samples.jsonl': artifacts.acceptanceSamples.map((t) => JSON.stringify(t)).join('\n') + '\n',
  });
  await writeReportFiles(summary, dir);
  return { dir, summary };
}
