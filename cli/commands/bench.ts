/**
 * `wisp bench`: the live benchmark (bench/live.ts) — WISP, SLED and centralized side by side on
 * the real system, same prompts, devices and SLOs. Prints a summary table, writes
 * reports/<timestamp>/results.json; `--json` prints the results as the last line.
 */
import type { Command } from 'commander';
import type { PolicyName } from '../../policies/types.ts';

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
}

function list(flag: string, raw: string, check: (n: number) => boolean): number[] {
  const xs = raw.split(',').map((s) => Number(s.trim()));
  if (xs.length === 0 || xs.some((x) => !Number.isFinite(x) || !check(x))) throw new Error(`--${flag}: expected a comma-separated list, got "${raw}"`);
  return xs;
}

function positive(flag: string, raw: string): number {
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${flag}: expected a positive number, got "${raw}"`);
  return n;
}

export function registerBench(program: Command): void {
  program
    .command('bench')
    .description('live benchmark: capacity and goodput of wisp, sled and centralized side by side')
    .option('--quick', 'a short sweep (under 3 minutes)')
    .option('--policies <list>', 'policies to run', 'wisp,sled,centralized')
    .option('--devices <list>', 'concurrent devices per load (default: 2,4,8,16,32,64; quick: 2,4,8,16)')
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
    .action(async (flags: BenchFlags) => {
      const { runLiveBench, writeLiveReport } = await import('../../bench/live.ts');
      const { summaryTable } = await import('../../results/table.ts');
      const { POLICIES, isPolicyName } = await import('../../config/schema.ts');
      const names = flags.policies.split(',').map((s) => s.trim());
      for (const p of names) if (!isPolicyName(p)) throw new Error(`--policies: unknown policy "${p}" (known: ${POLICIES.join(', ')})`);
      const policies = names as PolicyName[];
      const devices = list('devices', flags.devices ?? (flags.quick ? '2,4,8,16' : '2,4,8,16,32,64'), (n) => Number.isInteger(n) && n >= 1);
      const interactive = process.stderr.isTTY;
      const results = await runLiveBench({
        policies,
        devices,
        warmupMs: positive('warmup-s', flags.warmupS ?? (flags.quick ? '2' : '4')) * 1_000,
        windowMs: positive('window-s', flags.windowS ?? (flags.quick ? '6' : '20')) * 1_000,
        timeScale: positive('time-scale', flags.timeScale),
        preset: flags.preset === 'tiny' ? 'tiny' : 'small',
        profiles: flags.profiles.split(',').map((s) => s.trim()),
        maxNewTokens: positive('max-tokens', flags.maxTokens),
        workers: positive('workers', flags.workers),
        slo: { ttftMs: positive('ttft-ms', flags.ttftMs), tpotMs: positive('tpot-ms', flags.tpotMs) },
        seed: positive('seed', flags.seed),
        ...(flags.config ? { configFile: flags.config } : {}),
        onProgress: ({ policy, devices: k, step, steps }) => {
          const width = 24;
          const filled = Math.round((step / steps) * width);
          const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${step}/${steps} ${policy} @ ${k} devices`;
          process.stderr.write(interactive ? `\r${bar.padEnd(70)}` : `${bar}\n`);
        },
      });
      if (interactive) process.stderr.write('\n');
      const { dir, summary } = await writeLiveReport(results, flags.out);
      process.stdout.write(`${summaryTable(results)}\n\nreport: ${dir}\n`);
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    });
}
