/**
 * `wisp sim`: the discrete-event simulator (sim/). Runs WISP, SLED and centralized — the same
 * scheduler machine and policies as the live system — on simulated time over a sweep of
 * concurrent devices; prints the summary table with WISP's ratios and writes
 * reports/sim-<timestamp>/ (results.json, goodput.svg, attainment.svg, report.md). `--json`
 * prints the results (the `wisp bench` shape) as the last line.
 */
import { Command, InvalidArgumentError } from 'commander';
import type { PolicyName } from '../../policies/types.ts';
import type { ScenarioOptions } from '../../sim/scenario-options.ts';
import { argParser, NON_NEG, NON_NEG_INT, parseNumberList, POSITIVE, POSITIVE_INT, UNIT_OPEN } from '../flags.ts';

/** The flags of `wisp sim`: the scenario overrides (sim/scenario-options.ts) and the run's own. */
interface SimFlags extends Omit<ScenarioOptions, 'noKvLimit' | 'pipelining' | 'truncation' | 'deviceMix' | 'chunkedPrefill' | 'modeSwitching'> {
  chunkedPrefill: boolean;
  modeSwitching: boolean;
  scenario: string;
  /** `profile[:weight],…`, parsed with sim/mix.ts when the command runs. */
  deviceMix?: string;
  kvLimit: boolean;
  policies: string;
  pipelining: boolean;
  truncation: boolean;
  variants: boolean;
  acceptanceSamples?: string;
  replay?: string;
  perLoad: boolean;
  json?: boolean;
  out?: string;
}

const positiveInt = argParser(POSITIVE_INT);
const nonNegInt = argParser(NON_NEG_INT);
const positive = argParser(POSITIVE);
const nonNeg = argParser(NON_NEG);
const unitOpen = argParser(UNIT_OPEN);

/** `--policies a,b`: each a known policy (config/schema.ts POLICIES). */
async function parsePolicies(text: string): Promise<PolicyName[]> {
  const { POLICIES, isPolicyName } = await import('../../config/schema.ts');
  const policies = text.split(',').map((p) => p.trim());
  for (const p of policies) if (!isPolicyName(p)) throw new Error(`--policies: unknown policy "${p}" (known: ${POLICIES.join(', ')})`);
  return policies as PolicyName[];
}

function deviceList(v: string): number[] {
  const xs = v.split(',').map((s) => Number(s.trim()));
  if (xs.length === 0 || xs.some((n) => !Number.isInteger(n) || n < 1)) throw new InvalidArgumentError('must be a comma-separated list of integers ≥ 1');
  return xs;
}

/** `--replay`: the live run rebuilt on simulated time, and the comparison. */
async function replay(flags: SimFlags): Promise<void> {
  const { loadLiveRun, replayScenario, compareWithLive, validationTable } = await import('../../sim/replay.ts');
  const { runSweep } = await import('../../sim/sweep.ts');
  const { summaryTable } = await import('../../results/table.ts');
  const { writeRunReport } = await import('../../results/write.ts');
  const { writeReportFiles } = await import('../../results/report.ts');
  const run = loadLiveRun(flags.replay!);
  const { scenario, acceptance } = replayScenario(run, { perLoad: flags.perLoad });
  const { POLICIES } = await import('../../config/schema.ts');
  const policies = POLICIES.filter((p) => run.report.policies[p]);
  const results = runSweep({ scenario, policies: [...policies], extrasVariants: false, acceptance });
  const validation = compareWithLive(run.report, results);
  const table = validationTable(validation);
  const calibration = flags.perLoad && run.report.calibrationByLoad.length > 0 ? 'per load' : 'pooled';
  const out = { ...results, validation: { ...validation, liveReport: run.dir, calibration, table } };
  const dir = await writeRunReport(out, flags.out);
  await writeReportFiles(out, dir);
  process.stdout.write(`${summaryTable(out)}\n\nAgainst the live run (${run.dir}; overheads ${calibration}):\n${table}\n\nreport: ${dir}\n`);
  if (flags.json) process.stdout.write(`${JSON.stringify(out)}\n`);
}

interface MapFlags {
  servers?: string;
  tpotMs?: string;
  mixes?: string;
  agreements?: string;
  policies?: string;
  seed?: number;
  durationS?: number;
  warmupS?: number;
  maxDevices?: number;
  precision?: number;
  jobs?: number;
  tune?: boolean;
  modeSwitching?: boolean;
  json?: boolean;
  out?: string;
}

const list = (text: string): string[] => text.split(',').map((x) => x.trim()).filter((x) => x !== '');

/** `wisp sim map`: the regime map over servers × TPOT SLOs × device mixes × draft agreements. */
async function map(flags: MapFlags): Promise<void> {
  const { availableParallelism } = await import('node:os');
  const { mkdir, writeFile } = await import('node:fs/promises');
  const { join, resolve } = await import('node:path');
  const { DEFAULT_MAP_GRID, DEFAULT_MAP_SETTINGS, assembleCells, mapTasks, ratioPairs } = await import('../../sim/map.ts');
  const { runMapTasks } = await import('../../sim/map-runner.ts');
  const { mapMarkdown, mapTable, svgRatioHeatmap } = await import('../../sim/map-report.ts');
  const { loadEngine } = await import('../../physics/engines.ts');
  const started = performance.now();
  const grid = {
    servers: flags.servers !== undefined ? list(flags.servers) : DEFAULT_MAP_GRID.servers,
    tpotMs: flags.tpotMs !== undefined ? parseNumberList('tpot-ms', flags.tpotMs, POSITIVE) : DEFAULT_MAP_GRID.tpotMs,
    mixes: flags.mixes !== undefined ? flags.mixes.split(';').map((m) => m.trim()).filter((m) => m !== '') : DEFAULT_MAP_GRID.mixes,
    agreements: flags.agreements !== undefined ? parseNumberList('agreements', flags.agreements, NON_NEG) : DEFAULT_MAP_GRID.agreements,
    policies: flags.policies !== undefined ? await parsePolicies(flags.policies) : DEFAULT_MAP_GRID.policies,
    seed: flags.seed ?? DEFAULT_MAP_GRID.seed,
  };
  for (const id of grid.servers) loadEngine(id); // an unknown or unservable server is refused before any work
  const settings = {
    durationS: flags.durationS ?? DEFAULT_MAP_SETTINGS.durationS,
    warmupS: flags.warmupS ?? (flags.durationS !== undefined ? Math.min(DEFAULT_MAP_SETTINGS.warmupS, flags.durationS / 5) : DEFAULT_MAP_SETTINGS.warmupS),
    search: { ...DEFAULT_MAP_SETTINGS.search, ...(flags.maxDevices !== undefined ? { max: flags.maxDevices } : {}), ...(flags.precision !== undefined ? { precision: flags.precision } : {}) },
    tune: flags.tune ?? DEFAULT_MAP_SETTINGS.tune,
    ...(flags.modeSwitching ? { modeSwitching: true } : {}),
  };
  const tasks = mapTasks(grid, settings);
  const jobs = flags.jobs ?? Math.max(1, availableParallelism());
  const interactive = process.stderr.isTTY;
  const results = await runMapTasks(tasks, jobs, ({ done, total, task, wallMs }) => {
    const c = task.cell;
    const line = `map: ${String(done).padStart(3)}/${total}  ${task.policy} @ ${c.server}, ${c.tpotMs} ms, ${c.mix}, ${c.agreement} (${(wallMs / 1_000).toFixed(1)} s)`;
    process.stderr.write(interactive ? `\r${line.padEnd(100)}` : `${line}\n`);
  });
  if (interactive) process.stderr.write('\n');
  const cells = assembleCells(grid, results);
  const wallS = (performance.now() - started) / 1_000;
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const dir = resolve(flags.out ?? join('reports', `map-${stamp}`));
  await mkdir(dir, { recursive: true });
  const heatmaps: { file: string; title: string }[] = [];
  for (const [a, b] of ratioPairs(grid.policies)) {
    const file = `capacity-${a}-vs-${b}.svg`;
    const title = `Capacity of ${a} ÷ ${b}`;
    await writeFile(join(dir, file), svgRatioHeatmap(cells, grid, a, b, title));
    heatmaps.push({ file, title });
  }
  const w = (await import('../../sim/scenarios.ts')).scenario('paper').workload;
  const workload = `prompts ${w.promptTokens.min}–${w.promptTokens.max} tokens, answers ${w.outputTokens.min}–${w.outputTokens.max}, one session after another per device`;
  const doc = { kind: 'map', grid, settings, cells, runs: results.map((r) => ({ cell: r.cell, policy: r.policy, settings: r.settings, tried: r.tried, runs: r.runs })), wallS };
  await writeFile(join(dir, 'results.json'), `${JSON.stringify(doc, null, 2)}\n`);
  await writeFile(join(dir, 'report.md'), mapMarkdown({ cells, grid, settings, heatmaps, wallS, workload }));
  process.stdout.write(`${mapTable(cells, grid)}\n\n${cells.length} cells, ${tasks.length} capacity searches on ${Math.min(jobs, tasks.length)} thread(s) in ${wallS.toFixed(0)} s\nreport: ${dir}\n`);
  if (flags.json) process.stdout.write(`${JSON.stringify({ cells: cells.map(({ server, tpotMs, mix, agreement, policies }) => ({ server, tpotMs, mix, agreement, policies })) })}\n`);
}

export function registerSim(program: Command): void {
  const sim = program
    .command('sim')
    // `sim map` has flags of the same names (--tpot-ms, --policies): the parent's are read only before `map`.
    .enablePositionalOptions()
    .description('discrete-event simulator: capacity and goodput of wisp, sled and centralized on simulated time (same scheduler and policies as the live system)')
    .option('--scenario <name>', 'built-in scenario: paper | h100 | sled | hf-eager-h200 | tiny', 'paper')
    .option('--server <gpu/model>', 'serving-engine server, e.g. a100-80gb/34b (GPUs a40-48gb, a100-80gb, h100-80gb; models 34b, 7b)')
    .option('--no-kv-limit', 'engine server: no KV-cache memory limit')
    .option('--server-profile <csv>', 'a measured server latency profile instead (format of data/verify-profile-h200.csv)')
    .option('--model <name>', 'with --server-profile: model rows to use (qwen3-32b | qwen3-8b; "live" for a profile written by wisp bench)')
    .option('--workers <n>', 'verifier workers (servers)', positiveInt)
    .option('--devices <list>', 'concurrent devices per load, e.g. 4,8,16,32', deviceList)
    .option('--duration-s <s>', 'simulated seconds per load', positive)
    .option('--warmup-s <s>', 'simulated seconds not measured at the start of each load', nonNeg)
    .option('--seed <n>', 'seed (same seed, same results)', nonNegInt)
    .option('--policies <list>', 'policies to run', 'wisp,sled,centralized,adaptive')
    .option('--no-pipelining', 'WISP: no pipelined drafting (an extra of ours)')
    .option('--no-truncation', 'WISP: no server-side draft truncation (an extra of ours)')
    .option('--no-chunked-prefill', 'every prompt a pass of its own (default: prompts in chunks that share passes, every policy)')
    .option('--mode-switching', 'adaptive: revisit each session\'s mode at its rounds (default: chosen once, at admission)', false)
    .option('--pass-token-budget <n>', 'tokens one pass may feed with chunked prefill (default: derived from the TPOT SLO and the server)', positiveInt)
    .option('--no-variants', 'do not also run WISP with each extra switched off')
    .option('--refine <n>', 'bisection steps refining each capacity between swept counts', nonNegInt)
    .option('--ttft-ms <ms>', 'TTFT SLO override', positive)
    .option('--tpot-ms <ms>', 'TPOT SLO override', positive)
    .option('--server-noise <sigma>', 'log-normal noise of batch latency (0 = none)', nonNeg)
    .option('--device-mix <list>', 'device profiles and weights, e.g. jetson-orin-nano:1,raspberry-pi-5:1 (config/defaults.ts profiles)')
    .option('--agreement <p>', 'mean per-token acceptance of every class\'s draft (parametric model)', unitOpen)
    .option('--b-max <n>', 'most requests per batch', positiveInt)
    .option('--wait-ms <ms>', 'SLED: dispatch when the oldest request waited this long', nonNeg)
    .option('--time-scale <x>', 'multiplies device times (draft, network) and the SLO, as wisp bench does (to replay a live run\'s profile)', positive)
    .option('--acceptance-samples <jsonl>', 'observed drafted tokens of a live pair ({position,top1Prob,entropy,margin,logitSpread,accepted} per line): resampled instead of the parametric model')
    .option('--replay <report>', 'rebuild a live wisp bench run (its report folder) on simulated time and print the simulator\'s error against it; other flags are ignored')
    .option('--no-per-load', 'with --replay: one pooled set of measured overheads for every load (default: each load its own)')
    .option('--json', 'print the results as JSON on the last line')
    .option('--out <dir>', 'report folder (default reports/sim-<timestamp>)')
    .action(async (flags: SimFlags) => {
      if (flags.replay) return replay(flags);
      const { scenario, SCENARIO_NAMES } = await import('../../sim/scenarios.ts');
      const { applyScenarioOptions } = await import('../../sim/scenario-options.ts');
      const { runSweep } = await import('../../sim/sweep.ts');
      const { empiricalAcceptance, parseAcceptanceSamples } = await import('../../sim/acceptance.ts');
      const { summaryTable } = await import('../../results/table.ts');
      const { writeRunReport } = await import('../../results/write.ts');
      const { writeReportFiles, paperComparisonTable } = await import('../../results/report.ts');
      const { readFile } = await import('node:fs/promises');

      if (!(SCENARIO_NAMES as readonly string[]).includes(flags.scenario)) throw new Error(`--scenario: unknown scenario "${flags.scenario}" (known: ${SCENARIO_NAMES.join(', ')})`);
      const { parseMix } = await import('../../sim/mix.ts');
      const { deviceMix, ...rest } = flags;
      const s = applyScenarioOptions(scenario(flags.scenario as (typeof SCENARIO_NAMES)[number]), {
        ...rest,
        noKvLimit: !flags.kvLimit,
        ...(deviceMix !== undefined ? { deviceMix: parseMix(deviceMix) } : {}),
      });
      const policies = await parsePolicies(flags.policies);

      const samples = flags.acceptanceSamples ? parseAcceptanceSamples(await readFile(flags.acceptanceSamples, 'utf8'), flags.acceptanceSamples) : null;
      const fitted = samples ? empiricalAcceptance(samples, `empirical:${flags.acceptanceSamples}`) : null;

      const interactive = process.stderr.isTTY;
      const results = runSweep({
        scenario: s,
        policies,
        extrasVariants: flags.variants,
        ...(fitted ? { acceptance: () => fitted } : {}),
        onProgress: ({ key, devices, done, wallMs }) => {
          const line = `sim: ${String(done).padStart(3)} runs  ${key} @ ${devices} devices (${(wallMs / 1_000).toFixed(1)} s)`;
          process.stderr.write(interactive ? `\r${line.padEnd(72)}` : `${line}\n`);
        },
      });
      if (interactive) process.stderr.write('\n');
      const dir = await writeRunReport(results, flags.out);
      await writeReportFiles(results, dir);
      const cmp = paperComparisonTable(results);
      process.stdout.write(`${summaryTable(results)}\n${cmp ? `\nBeside the WISP paper (extras on/off):\n${cmp}\n` : ''}\nreport: ${dir}\n`);
      if (flags.json) process.stdout.write(`${JSON.stringify(results)}\n`);
    });
  sim
    .command('map')
    .description('the regime map: capacity and goodput of each policy over servers × TPOT SLOs × device mixes × draft agreements; heatmaps of WISP over centralized and SLED')
    .option('--servers <list>', `engines, gpu/model (default ${'a40-48gb/7b,a100-80gb/34b,h100-80gb/34b'})`)
    .option('--tpot-ms <list>', 'TPOT SLOs, ms (default 40,60,100,150)')
    .option('--mixes <list>', 'device mixes separated by ";", each in --device-mix form (default "jetson-orin-nano;jetson-orin-nano:1,raspberry-pi-5:1;phone")')
    .option('--agreements <list>', 'draft agreements (default 0.7,0.85)')
    .option('--policies <list>', 'policies (default wisp,sled,centralized,adaptive)')
    .option('--seed <n>', 'seed (same seed, same map)', nonNegInt)
    .option('--duration-s <s>', 'simulated seconds per load (default 60)', positive)
    .option('--warmup-s <s>', 'simulated seconds not measured per load (default 10)', nonNeg)
    .option('--max-devices <n>', 'largest device count a search tries (default 512)', positiveInt)
    .option('--precision <x>', 'bisection stops when the failing count is within this share of the passing one (default 0.125)', unitOpen)
    .option('--jobs <n>', 'worker threads (default: the machine\'s cores)', positiveInt)
    .option('--no-tune', 'every policy at its default settings (default: each at its best settings per cell: pass budget, chunking, batch size, SLED\'s wait)')
    .option('--mode-switching', 'adaptive: revisit each session\'s mode at its rounds (default: chosen once, at admission)')
    .option('--json', 'print {cells: [...]} as the last line')
    .option('--out <dir>', 'report folder (default reports/map-<timestamp>)')
    .action(async (flags: MapFlags) => map(flags));
}
