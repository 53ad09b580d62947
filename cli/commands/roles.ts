/**
 * Process roles: `wisp up` (everything in one process), `wisp scheduler`, `wisp verifier`,
 * `wisp edge`. Each reads the validated config (file + env), starts its role and stops it
 * cleanly on Ctrl-C (SIGINT) or SIGTERM.
 */
import type { Command } from 'commander';
import type { DeepPartial } from '../../config/load.ts';
import type { WispConfig } from '../../config/schema.ts';
import { parseNumber, POSITIVE_INT } from '../flags.ts';

interface CommonFlags {
  config?: string;
  policy?: string;
  timeScale?: string;
  preset?: string;
  modelDir?: string;
  /** --chunked-prefill / --no-chunked-prefill; undefined: the config decides. */
  chunkedPrefill?: boolean;
  passTokenBudget?: string;
  /** --pace gpu/model (roles that run verifiers). */
  pace?: string;
}

/** Loads the config with CLI flags applied last (they are validated like every other value). */
export async function configFromFlags(flags: CommonFlags): Promise<WispConfig> {
  const { loadConfig } = await import('../../config/load.ts');
  const overrides: DeepPartial<WispConfig> = {};
  overrides.scheduler = {
    ...(flags.policy !== undefined ? { policy: flags.policy as WispConfig['scheduler']['policy'] } : {}),
    ...(flags.chunkedPrefill !== undefined ? { chunkedPrefill: flags.chunkedPrefill } : {}),
    ...(flags.passTokenBudget !== undefined ? { passTokenBudget: parseNumber('pass-token-budget', flags.passTokenBudget, POSITIVE_INT) } : {}),
  };
  if (flags.timeScale !== undefined) overrides.timeScale = Number(flags.timeScale);
  if (flags.preset !== undefined || flags.modelDir !== undefined || flags.pace !== undefined) {
    overrides.models = {
      ...(flags.preset !== undefined ? { preset: flags.preset as WispConfig['models']['preset'] } : {}),
      ...(flags.modelDir !== undefined ? { modelDir: flags.modelDir } : {}),
      ...(flags.pace !== undefined ? { pace: flags.pace } : {}),
    };
  }
  return loadConfig({ ...(flags.config ? { file: flags.config } : {}), overrides });
}

function withCommon(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'config file (YAML or JSON); also WISP_CONFIG')
    .option('--policy <name>', 'wisp | sled | centralized')
    .option('--time-scale <x>', 'multiplies every emulated device time (0 = none)')
    .option('--preset <name>', 'built-in forged model pair: tiny | small')
    .option('--model-dir <dir>', 'folder with target/ and draft-*/ (Optimum ONNX layout)');
}

/** Flags of the roles that schedule passes (`up`, `scheduler`). */
function withPassBudget(cmd: Command): Command {
  return cmd
    .option('--chunked-prefill', 'prompts in chunks that share passes with verifications and decode steps (the default)')
    .option('--no-chunked-prefill', 'every prompt a pass of its own')
    .option('--pass-token-budget <n>', 'tokens one pass may feed with chunked prefill (default: derived from the TPOT SLO and the server)');
}

/** Flags of the roles that run verifier workers (`up`, `verifier`). */
function withPace(cmd: Command): Command {
  return cmd.option('--pace <gpu/model>', 'hold each pass of the real target until the serving-engine cost model\'s time for it (× --time-scale) has passed, e.g. a100-80gb/34b');
}

/** Keeps the process alive until SIGINT/SIGTERM, then stops `running` once. */
async function untilSignal(running: { stop(): Promise<void> }, what: string): Promise<void> {
  await new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = (sig: string) => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`\nwisp: ${sig}: stopping ${what}…\n`);
      const force = setTimeout(() => process.exit(130), 10_000);
      force.unref();
      running.stop().finally(resolve);
    };
    process.once('SIGINT', () => onSignal('SIGINT'));
    process.once('SIGTERM', () => onSignal('SIGTERM'));
  });
  process.exit(0);
}

export function registerRoles(program: Command): void {
  withPace(withPassBudget(withCommon(program.command('up'))))
    .description('run the scheduler, W verifier workers and an edge fleet of N devices in this process')
    .option('--devices <n>', 'emulated edge devices', '4')
    .option('--workers <n>', 'verifier workers', '1')
    .option('--profiles <list>', 'device profiles, comma-separated, assigned round-robin')
    .action(async (flags: CommonFlags & { devices: string; workers: string; profiles?: string }) => {
      const config = await configFromFlags(flags);
      const { runUp } = await import('../../actors/launch.ts');
      const running = await runUp(config, {
        devices: parseNumber('devices', flags.devices, POSITIVE_INT),
        workers: parseNumber('workers', flags.workers, POSITIVE_INT),
        ...(flags.profiles ? { profiles: flags.profiles.split(',').map((s) => s.trim()) } : {}),
      });
      process.stderr.write(
        `wisp up: policy ${config.scheduler.policy}, ${flags.workers} worker(s), ${flags.devices} device(s); ` +
          `send prompts with: npx wisp enqueue --wait "hello"   (Ctrl-C stops)\n`,
      );
      await untilSignal(running, 'all roles');
    });

  withPassBudget(withCommon(program.command('scheduler')))
    .description('run the scheduler role')
    .action(async (flags: CommonFlags) => {
      const config = await configFromFlags(flags);
      const { runScheduler } = await import('../../actors/launch.ts');
      await untilSignal(await runScheduler(config), 'the scheduler');
    });

  withPace(withCommon(program.command('verifier')))
    .description('run one verifier worker (target model and its sessions\' KV caches)')
    .option('--worker-id <id>', 'stable worker id (names its queue); also WISP_WORKER_ID')
    .action(async (flags: CommonFlags & { workerId?: string }) => {
      const config = await configFromFlags(flags);
      const { runVerifier } = await import('../../actors/launch.ts');
      await untilSignal(await runVerifier(config, flags.workerId ? { workerId: flags.workerId } : {}), 'the verifier');
    });

  withCommon(program.command('edge'))
    .description('run an edge fleet of N emulated devices')
    .option('--devices <n>', 'emulated devices', '4')
    .option('--profile <list>', 'device profile(s), comma-separated, assigned round-robin')
    .option('--fleet-id <id>', 'prefix of the device ids')
    .action(async (flags: CommonFlags & { devices: string; profile?: string; fleetId?: string }) => {
      const config = await configFromFlags(flags);
      const { runEdge } = await import('../../actors/launch.ts');
      const running = await runEdge(config, {
        devices: parseNumber('devices', flags.devices, POSITIVE_INT),
        ...(flags.profile ? { profiles: flags.profile.split(',').map((s) => s.trim()) } : {}),
        ...(flags.fleetId ? { fleetId: flags.fleetId } : {}),
      });
      await untilSignal(running, 'the edge fleet');
    });
}
