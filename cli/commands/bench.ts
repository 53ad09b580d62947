/**
 * `wisp bench`: the live benchmark (bench/live.ts) — WISP, SLED and centralized side by side on
 * the real system, same prompts, devices and SLOs. Prints a summary table, writes
 * reports/<timestamp>/results.json; `--json` prints the results as the last line.
 */
import type { Command } from 'commander';
import type { PolicyName } from '../../policies/types.ts';
import { NON_NEG_INT, parseNumber, parseNumberList, POSITIVE, POSITIVE_INT } from '../flags.ts';

interface BenchFlags {
  quick?: boolean;
  policies: string;
  devices?: string;
  warmupS?: string;
  windowS?: string;
  timeScale: string;
  preset: string;
  profiles: string;
  maxTokens: string;
  workers: string;
  ttftMs: string;
  tpotMs: string;
  seed: string;
  config?: string;
  json?: boolean;
  out?: string;
  chunkedPrefill?: boolean;
  passTokenBudget?: string;
  pace?: string;
  maxDevices?: string;
  repeats?: string;
}

export function registerBench(program: Command): void {
  program
    .command('bench')
    .description('live benchmark: capacity and goodput of wisp, sled and centralized side by side')
    .option('--quick', 'short loads (2 s warm-up, 6 s window) and a search up to 32 devices')
    .option('--policies <list>', 'policies to run', 'wisp,sled,centralized,adaptive')
    .option('--devices <list>', 'run exactly these loads (concurrent devices), no capacity search')
    .option('--repeats <n>', 'runs per load; the median run stands for it, the range beside it (default 3; quick 2)')
    .option('--max-devices <n>', 'capacity search: double from 2 devices until each policy misses its SLO target, then bisect, up to this many (default 32); a pass there is censored (≥)')
    .option('--warmup-s <s>', 'warm-up per load, seconds (default 4; quick 2)')
    .option('--window-s <s>', 'measured window per load, seconds (default 20; quick 6)')
    .option('--time-scale <x>', 'multiplies device times (draft, network) and the SLO', '0.5')
    .option('--preset <name>', 'built-in model pair', 'small')
    .option('--profiles <list>', 'device profiles, round-robin', 'jetson-orin-nano,raspberry-pi-5')
    .option('--max-tokens <n>', 'new tokens per prompt', '32')
    .option('--workers <n>', 'verifier workers', '1')
    .option('--ttft-ms <ms>', 'TTFT SLO, real-world ms (scaled by --time-scale)', '1000')
    .option('--tpot-ms <ms>', 'TPOT SLO, real-world ms (scaled by --time-scale)', '100')
    .option('--seed <n>', 'seed', '1')
    .option('--config <file>', 'config file (broker and Redis URLs, device profiles)')
    .option('--json', 'print the results as JSON on the last line')
    .option('--out <dir>', 'report folder (default reports/<timestamp>)')
    .option('--chunked-prefill', 'prompts in chunks that share passes (the config default)')
    .option('--no-chunked-prefill', 'every prompt a pass of its own')
    .option('--pass-token-budget <n>', 'tokens one pass may feed with chunked prefill (default: derived from the TPOT SLO and the server)')
    .option('--pace <gpu/model>', 'pace the verifiers to this serving engine (e.g. a100-80gb/34b): the real target computes, each pass is held for the engine\'s time × --time-scale')
    .action(async (flags: BenchFlags) => {
      const { runLiveBench, writeLiveReport } = await import('../../bench/live.ts');
      const { summaryTable } = await import('../../results/table.ts');
      const { DEFAULT_SEARCH_PRECISION } = await import('../../results/capacity-search.ts');
      const { POLICIES, isPolicyName } = await import('../../config/schema.ts');
      const names = flags.policies.split(',').map((s) => s.trim());
      for (const p of names) if (!isPolicyName(p)) throw new Error(`--policies: unknown policy "${p}" (known: ${POLICIES.join(', ')})`);
      const policies = names as PolicyName[];
      const devices = flags.devices !== undefined ? parseNumberList('devices', flags.devices, POSITIVE_INT) : [];
      // Beyond ~40 devices this 2-core machine cannot keep paced passes on time (83 % at 48–64, against ≥ 98 % up to 32).
      const maxDevices = parseNumber('max-devices', flags.maxDevices ?? '32', POSITIVE_INT);
      const interactive = process.stderr.isTTY;
      const results = await runLiveBench({
        policies,
        devices,
        repeats: parseNumber('repeats', flags.repeats ?? (flags.quick ? '2' : '3'), POSITIVE_INT),
        ...(devices.length === 0 ? { search: { start: Math.min(2, maxDevices), max: maxDevices, precision: DEFAULT_SEARCH_PRECISION } } : {}),
        warmupMs: parseNumber('warmup-s', flags.warmupS ?? (flags.quick ? '2' : '4'), POSITIVE) * 1_000,
        windowMs: parseNumber('window-s', flags.windowS ?? (flags.quick ? '6' : '20'), POSITIVE) * 1_000,
        timeScale: parseNumber('time-scale', flags.timeScale, POSITIVE),
        preset: flags.preset === 'tiny' ? 'tiny' : 'small',
        profiles: flags.profiles.split(',').map((s) => s.trim()),
        maxNewTokens: parseNumber('max-tokens', flags.maxTokens, POSITIVE_INT),
        workers: parseNumber('workers', flags.workers, POSITIVE_INT),
        slo: { ttftMs: parseNumber('ttft-ms', flags.ttftMs, POSITIVE), tpotMs: parseNumber('tpot-ms', flags.tpotMs, POSITIVE) },
        seed: parseNumber('seed', flags.seed, NON_NEG_INT),
        ...(flags.config ? { configFile: flags.config } : {}),
        ...(flags.pace !== undefined ? { pace: flags.pace } : {}),
        overrides: {
          scheduler: {
            ...(flags.chunkedPrefill !== undefined ? { chunkedPrefill: flags.chunkedPrefill } : {}),
            ...(flags.passTokenBudget !== undefined ? { passTokenBudget: parseNumber('pass-token-budget', flags.passTokenBudget, POSITIVE_INT) } : {}),
          },
        },
        onProgress: ({ policy, devices: k, step, steps }) => {
          const width = 24;
          // A capacity search may run more loads than estimated: the bar stays full.
          const filled = Math.min(width, Math.round((step / Math.max(step, steps)) * width));
          const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${step}/${Math.max(step, steps)} ${policy} @ ${k} devices`;
          process.stderr.write(interactive ? `\r${bar.padEnd(70)}` : `${bar}\n`);
        },
      });
      if (interactive) process.stderr.write('\n');
      const { dir, summary } = await writeLiveReport(results, flags.out);
      process.stdout.write(`${summaryTable(results)}\n\nreport: ${dir}\n`);
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    });
}
