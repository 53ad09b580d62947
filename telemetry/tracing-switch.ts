/**
 * Whether a process traces, and under which service names: read from the environment only,
 * because tracing must start before amqplib and ioredis load (their instrumentation patches
 * them at load time), i.e. before the config is read. Light on purpose: no SDK import here.
 */
import { coerceEnvValue } from '../config/env.ts';
import type { WispRole } from './spans.ts';

type Env = Readonly<Record<string, string | undefined>>;

/** Commands whose process is one role (others, like `up`, run several or none). */
const COMMAND_ROLE: Readonly<Record<string, WispRole>> = { scheduler: 'scheduler', verifier: 'verifier', edge: 'edge', enqueue: 'client' };

function flag(env: Env, name: string): boolean | undefined {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return undefined;
  const v = coerceEnvValue('boolean', raw);
  return typeof v === 'boolean' ? v : undefined;
}

/**
 * True when the environment asks for traces: WISP_TRACING=true, or an OTLP endpoint is set
 * (OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT) and WISP_TRACING is not false. The
 * standard switches OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none turn it off.
 * `fileSetting` is config.telemetry.tracing when the config is known.
 */
export function tracingRequested(env: Env = process.env, fileSetting?: boolean): boolean {
  if (flag(env, 'OTEL_SDK_DISABLED') === true) return false;
  if ((env.OTEL_TRACES_EXPORTER ?? '').trim().toLowerCase() === 'none') return false;
  const wisp = flag(env, 'WISP_TRACING');
  if (wisp !== undefined) return wisp;
  if (fileSetting === true) return true;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

/** The `wisp` sub-command in argv (`node bin/wisp.js edge --devices 4` → 'edge'), or undefined. */
export function commandOf(argv: readonly string[]): string | undefined {
  return argv.slice(2).find((a) => !a.startsWith('-'));
}

/** Service name of a role: OTEL_SERVICE_NAME when set (every role of the process), else `wisp-<role>`. */
export function serviceNameFor(role: WispRole, env: Env = process.env): string {
  return env.OTEL_SERVICE_NAME?.trim() || `wisp-${role}`;
}

/** Service name of the process (for spans no role owns, e.g. amqplib's): its role's, or `wisp-<command>`. */
export function processServiceName(argv: readonly string[] = process.argv, env: Env = process.env): string {
  const cmd = commandOf(argv);
  const role = cmd ? COMMAND_ROLE[cmd] : undefined;
  if (role) return serviceNameFor(role, env);
  return env.OTEL_SERVICE_NAME?.trim() || (cmd && /^[a-z-]+$/.test(cmd) ? `wisp-${cmd}` : 'wisp');
}

/**
 * Starts tracing from a role's config when the environment did not already (register.ts):
 * our own spans and the broker's context propagation work; amqplib and ioredis, already
 * loaded, are not instrumented, which `warn` says. Returns whether tracing is on.
 */
export async function ensureTracing(fileSetting: boolean, warn: (message: string) => void, env: Env = process.env): Promise<boolean> {
  const { tracingOn } = await import('./spans.ts');
  if (tracingOn()) return true;
  if (!tracingRequested(env, fileSetting)) return false;
  const { startTracing } = await import('./tracing.ts');
  startTracing({ serviceName: processServiceName(process.argv, env), instrument: false, env });
  warn('tracing started after amqplib and ioredis were loaded: they are not instrumented (set WISP_TRACING=true in the environment of `wisp` to trace them too)');
  return true;
}
