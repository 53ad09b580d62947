/**
 * Environment overrides: one variable per top-level knob. The table is data, so the README
 * (`envTableMarkdown()`), `wisp --help` texts and the loader all read the same list.
 */
import { DEFAULT_CONFIG } from './defaults.ts';

export type EnvKind = 'string' | 'number' | 'integer' | 'boolean';

export interface EnvVar {
  /** Variable name, e.g. `WISP_AMQP_URL`. */
  name: string;
  /** Config key it sets, dotted (e.g. `scheduler.bMax`). */
  key: string;
  kind: EnvKind;
  description: string;
  /** The built-in default of `key` (undefined: unset by default). */
  defaultValue: unknown;
}

/** The file to load, when no `--config FILE` is given. */
export const CONFIG_FILE_ENV = 'WISP_CONFIG';

const ENV_TABLE: ReadonlyArray<Omit<EnvVar, 'defaultValue'>> = [
  { name: 'WISP_AMQP_URL', key: 'amqpUrl', kind: 'string', description: 'RabbitMQ URL (amqp:// or amqps://)' },
  { name: 'WISP_AMQP_TLS', key: 'amqpTls.enabled', kind: 'boolean', description: 'Use TLS to RabbitMQ (needs amqps://)' },
  { name: 'WISP_AMQP_CA', key: 'amqpTls.caPath', kind: 'string', description: 'CA certificate (PEM) for RabbitMQ TLS' },
  { name: 'WISP_REDIS_URL', key: 'redisUrl', kind: 'string', description: 'Redis URL (redis:// or rediss://)' },
  { name: 'WISP_REDIS_TLS', key: 'redisTls.enabled', kind: 'boolean', description: 'Use TLS to Redis (needs rediss://)' },
  { name: 'WISP_REDIS_CA', key: 'redisTls.caPath', kind: 'string', description: 'CA certificate (PEM) for Redis TLS' },
  { name: 'WISP_REDIS_PREFIX', key: 'redisKeyPrefix', kind: 'string', description: 'Prefix of every Redis key' },
  { name: 'WISP_LOG_LEVEL', key: 'logLevel', kind: 'string', description: 'debug | info | warn | error | silent' },
  { name: 'WISP_MODEL_DIR', key: 'models.modelDir', kind: 'string', description: 'Folder with target and draft-N ONNX model folders (wins over the preset)' },
  { name: 'WISP_MODEL_PRESET', key: 'models.preset', kind: 'string', description: 'Built-in forged model pair: tiny | small' },
  { name: 'WISP_COST_MODEL', key: 'models.costModel.enabled', kind: 'boolean', description: 'Verifier runs no target model: each pass sleeps for the serving-engine cost model\'s time (load tests)' },
  { name: 'WISP_COST_MODEL_SCALE', key: 'models.costModel.timeScale', kind: 'number', description: 'Multiplies the cost model\'s pass time (0 = no sleep)' },
  { name: 'WISP_COST_MODEL_SERVER', key: 'models.costModel.server', kind: 'string', description: 'Serving engine the cost model times, gpu/model (wisp server-cost)' },
  { name: 'WISP_PACE', key: 'models.pace', kind: 'string', description: 'Verifier paces the real target to this serving engine, gpu/model: each pass held for its modelled time × timeScale' },
  { name: 'WISP_THREADS', key: 'models.threads', kind: 'integer', description: 'onnxruntime threads per model session' },
  { name: 'WISP_TIME_SCALE', key: 'timeScale', kind: 'number', description: 'Multiplies every emulated device time (0 = no emulated delays)' },
  { name: 'WISP_DEVICE_PROFILE', key: 'deviceProfile', kind: 'string', description: 'Device profile an edge process emulates' },
  { name: 'WISP_DEVICE_ID', key: 'edge.deviceId', kind: 'string', description: 'Stable id of this edge device' },
  { name: 'WISP_SLO_TTFT_MS', key: 'slo.ttftMs', kind: 'number', description: 'Default time-to-first-token SLO, ms' },
  { name: 'WISP_SLO_TPOT_MS', key: 'slo.tpotMs', kind: 'number', description: 'Default time-per-output-token SLO, ms' },
  { name: 'WISP_POLICY', key: 'scheduler.policy', kind: 'string', description: 'wisp | sled | centralized | adaptive' },
  { name: 'WISP_B_MAX', key: 'scheduler.bMax', kind: 'integer', description: 'Most requests per verification batch' },
  { name: 'WISP_WAIT_MS', key: 'scheduler.waitMs', kind: 'number', description: 'SLED: dispatch when the oldest request waited this long, ms' },
  { name: 'WISP_MAX_BATCH_TOKENS', key: 'scheduler.maxBatchTokens', kind: 'integer', description: 'Cap on tokens fed in one batch (verifications, and whole prompts without chunked prefill)' },
  { name: 'WISP_CHUNKED_PREFILL', key: 'scheduler.chunkedPrefill', kind: 'boolean', description: 'Split prompts into chunks that share passes with verifications and decode steps' },
  { name: 'WISP_PASS_TOKEN_BUDGET', key: 'scheduler.passTokenBudget', kind: 'integer', description: 'Tokens one pass may feed once prompt chunks join it (0 = derived from the TPOT SLO and the server); verifications are capped by maxBatchTokens' },
  { name: 'WISP_MODE_SWITCHING', key: 'scheduler.modeSwitching', kind: 'boolean', description: 'Adaptive: revisit each session\'s mode (server decoding or edge speculation) at its rounds (default false: chosen once, at admission)' },
  { name: 'WISP_AGE_BOUND_MS', key: 'scheduler.ageBoundMs', kind: 'number', description: 'Longest wait before a request is served regardless of density, ms' },
  { name: 'WISP_TRUNCATION', key: 'scheduler.truncation', kind: 'boolean', description: 'WISP: allow verifying fewer draft tokens than sent' },
  { name: 'WISP_PIPELINED_DRAFTING', key: 'scheduler.pipelinedDrafting', kind: 'boolean', description: 'Draft the next round while verifying' },
  { name: 'WISP_K_MAX', key: 'controller.kMax', kind: 'integer', description: 'Most draft tokens per round' },
  { name: 'WISP_THRESHOLD', key: 'controller.threshold', kind: 'number', description: 'SLED: stop drafting when a token\'s top-1 probability is below this' },
  { name: 'WISP_MIN_ACCEPTANCE', key: 'controller.minAcceptance', kind: 'number', description: 'WISP: drop a drafted token predicted below this acceptance' },
  { name: 'WISP_WORKER_ID', key: 'worker.id', kind: 'string', description: 'Stable id of this verifier worker' },
  { name: 'WISP_IDLE_EVICT_MS', key: 'worker.idleEvictMs', kind: 'number', description: "Drop an idle session's KV cache after this long, ms" },
  { name: 'WISP_HEARTBEAT_MS', key: 'worker.heartbeatMs', kind: 'number', description: 'Worker heartbeat period, ms' },
  { name: 'WISP_HEARTBEAT_TTL_MS', key: 'worker.heartbeatTtlMs', kind: 'number', description: 'A worker silent this long is lost, ms' },
  { name: 'WISP_VERIFY_TIMEOUT_MS', key: 'edge.verifyTimeoutMs', kind: 'number', description: 'Resend a verification unanswered this long, ms' },
  { name: 'WISP_MAX_RETRIES', key: 'edge.maxRetries', kind: 'integer', description: 'Resends before a session fails' },
  { name: 'WISP_SESSION_TTL_MS', key: 'sessionTtlMs', kind: 'integer', description: 'Redis keys of an untouched session expire after this, ms' },
  { name: 'WISP_METRICS_PORT', key: 'telemetry.metricsPort', kind: 'integer', description: 'Port of the Prometheus /metrics endpoint (0 = none)' },
  { name: 'WISP_METRICS_HOST', key: 'telemetry.metricsHost', kind: 'string', description: 'Address the /metrics endpoint listens on' },
  { name: 'WISP_PRETTY_LOGS', key: 'telemetry.prettyLogs', kind: 'boolean', description: 'Log lines for people instead of JSON (default: when stderr is a terminal)' },
  { name: 'WISP_TRACING', key: 'telemetry.tracing', kind: 'boolean', description: 'Export OpenTelemetry traces (OTLP; also on when OTEL_EXPORTER_OTLP_ENDPOINT is set)' },
];

/** Every environment override, with the default of the key it sets. */
export const ENV_VARS: readonly EnvVar[] = ENV_TABLE.map((v) => ({ ...v, defaultValue: getPath(DEFAULT_CONFIG, v.key) }));

/** Reads a dotted key from a nested object. */
export function getPath(obj: unknown, key: string): unknown {
  let cur: unknown = obj;
  for (const part of key.split('.')) {
    if (typeof cur !== 'object' || cur === null || !Object.hasOwn(cur, part)) return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

/** Sets a dotted key in a nested object, creating plain objects on the way. */
export function setPath(obj: Record<string, unknown>, key: string, value: unknown): void {
  const parts = key.split('.');
  let cur = obj;
  for (const part of parts.slice(0, -1)) {
    if (typeof cur[part] !== 'object' || cur[part] === null) cur[part] = {};
    cur = cur[part] as Record<string, unknown>;
  }
  cur[parts[parts.length - 1]] = value;
}

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/**
 * Converts an env string to the knob's type. A string that does not convert is passed on
 * unchanged, so validation reports it with the value the user wrote.
 */
export function coerceEnvValue(kind: EnvKind, raw: string): unknown {
  const s = raw.trim();
  if (kind === 'number' || kind === 'integer') return NUMBER.test(s) ? Number(s) : raw;
  if (kind === 'boolean') {
    if (/^(true|1|yes|on)$/i.test(s)) return true;
    if (/^(false|0|no|off)$/i.test(s)) return false;
    return raw;
  }
  return raw;
}

/** The overrides that `env` sets, as a nested partial config, and which key came from which variable. */
export function envOverrides(env: Readonly<Record<string, string | undefined>>): { values: Record<string, unknown>; sources: Map<string, string> } {
  const values: Record<string, unknown> = {};
  const sources = new Map<string, string>();
  for (const v of ENV_VARS) {
    const raw = env[v.name];
    if (raw === undefined || raw === '') continue; // an empty variable means "not set"
    setPath(values, v.key, coerceEnvValue(v.kind, raw));
    sources.set(v.key, v.name);
  }
  return { values, sources };
}

function renderDefault(value: unknown): string {
  if (value === undefined) return '(unset)';
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** The env table as Markdown (variable, key, default, description) for the README. */
export function envTableMarkdown(): string {
  const rows = [
    '| Variable | Config key | Default | Description |',
    '| --- | --- | --- | --- |',
    `| \`${CONFIG_FILE_ENV}\` | — | (none) | Config file (YAML or JSON), when \`--config\` is not given |`,
  ];
  for (const v of ENV_VARS) rows.push(`| \`${v.name}\` | \`${v.key}\` | \`${renderDefault(v.defaultValue)}\` | ${v.description} |`);
  return rows.join('\n');
}
