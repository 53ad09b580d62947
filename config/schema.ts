/**
 * The one validated configuration of every wisp role (docs/design.md §2): its zod schema, with
 * messages written for people ("expected a positive integer"), and the cross-field rules.
 * Defaults live in defaults.ts; loading (file ← env ← overrides) in load.ts.
 */
import { z } from 'zod';
import { GPUS, MODELS } from '../physics/hardware.ts';

const POS_INT = 'expected a positive integer';
const NONNEG_INT = 'expected a non-negative integer';
const POS_NUM = 'expected a positive number';
const NONNEG_NUM = 'expected a non-negative number';
const UNIT = 'expected a number in [0, 1]';
const BOOL = 'expected true or false';
const STR = 'expected a non-empty string';
const PORT = 'expected a port number 0..65535';

const posInt = () => z.number({ error: POS_INT }).int({ error: POS_INT }).positive({ error: POS_INT }).max(Number.MAX_SAFE_INTEGER, { error: POS_INT });
const nonNegInt = () => z.number({ error: NONNEG_INT }).int({ error: NONNEG_INT }).min(0, { error: NONNEG_INT }).max(Number.MAX_SAFE_INTEGER, { error: NONNEG_INT });
const posNum = () => z.number({ error: POS_NUM }).positive({ error: POS_NUM }).finite({ error: POS_NUM });
const nonNegNum = () => z.number({ error: NONNEG_NUM }).min(0, { error: NONNEG_NUM }).finite({ error: NONNEG_NUM });
const unit = () => z.number({ error: UNIT }).min(0, { error: UNIT }).max(1, { error: UNIT });
const bool = () => z.boolean({ error: BOOL });
const str = () => z.string({ error: STR }).min(1, { error: STR });
const SERVER_ID = `expected gpu/model with gpu one of ${Object.keys(GPUS).join('|')} and model one of ${Object.keys(MODELS).join('|')}`;
const serverId = () =>
  z.string({ error: SERVER_ID }).refine((v) => {
    const [gpu, model, ...rest] = v.split('/');
    return rest.length === 0 && gpu in GPUS && model !== undefined && model in MODELS;
  }, { error: SERVER_ID });
const oneOf = <const T extends readonly [string, ...string[]]>(values: T) => z.enum(values, { error: `expected one of ${values.join('|')}` });
const url = (schemes: readonly string[]) => {
  const error = `expected an ${schemes.join(' or ')} URL`.replace(/^expected an (?=[^aeiou])/, 'expected a ');
  return z.string({ error }).refine((s) => schemes.some((p) => s.startsWith(p)) && canParseUrl(s), { error });
};

function canParseUrl(s: string): boolean {
  try {
    new URL(s);
    return true;
  } catch {
    return false;
  }
}

export const TlsSchema = z.strictObject({
  enabled: bool(),
  /** CA certificate file (PEM) to trust besides the system store. */
  caPath: str().optional(),
});
export type TlsConfig = z.infer<typeof TlsSchema>;

export const PowerSchema = z.strictObject({
  drafting: nonNegNum(),
  idle: nonNegNum(),
  transmitting: nonNegNum(),
});

/** An emulated edge device, in real-world units (scaled by `timeScale` when emulated). */
export const DeviceProfileSchema = z.strictObject({
  /** Time to draft one token with this device's draft model, ms. */
  draftMsPerToken: posNum(),
  /** Network round trip device ↔ server, ms. */
  rttMs: nonNegNum(),
  /** Uniform jitter added to each one-way trip, ± ms. */
  jitterMs: nonNegNum(),
  /** Which draft model folder the device runs (e.g. 'draft-1'). */
  draftModel: str(),
  /** Power draw by activity, W (for energy per token). */
  powerW: PowerSchema,
  /** Per-token agreement of its draft with the target, measured offline (e.g. from `wisp bench`'s acceptance samples): the adaptive policy's prior until the device has verified drafts of its own. */
  agreement: z.number().min(0).max(0.999).optional(),
});
export type DeviceProfile = z.infer<typeof DeviceProfileSchema>;

/** The batch policies: the one list config, simulator, benchmarks and CLI read. */
export const POLICIES = ['wisp', 'sled', 'centralized', 'adaptive'] as const;
export type PolicyName = (typeof POLICIES)[number];

/** Whether `name` is one of POLICIES. */
export function isPolicyName(name: string): name is PolicyName {
  return (POLICIES as readonly string[]).includes(name);
}
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
export const MODEL_PRESETS = ['tiny', 'small'] as const;

/** The scheduler's knobs (config `scheduler` without the policy): the shape the simulator's scenarios use too. */
export const SchedulerKnobsSchema = z.strictObject({
  /** SLED: dispatch when this many requests wait; all policies: most members per batch. */
  bMax: posInt(),
  /** SLED: dispatch when the oldest request waited this long, ms. */
  waitMs: nonNegNum(),
  /** Cap on tokens fed in one batch (sum of n_i). */
  maxBatchTokens: posInt(),
  /** No request waits longer than this before it is served regardless of density, ms. */
  ageBoundMs: posNum(),
  /** WISP: may verify fewer draft tokens than sent when that keeps deadlines. */
  truncation: bool(),
  /** Device drafts the next round while the current one is being verified. */
  pipelinedDrafting: bool(),
  /** Prompts split into chunks that share passes with verifications and decode steps (off: each prompt a pass of its own). */
  chunkedPrefill: bool(),
  /** Tokens one pass may feed once prompt chunks join it (verified, decoded and chunk tokens); 0 = the rule of policies/pass-budget.ts. Verifications alone are capped by maxBatchTokens. */
  passTokenBudget: nonNegInt(),
  /** Adaptive: revisit each session's mode (server decoding or edge speculation) at its rounds; off: chosen once, at admission. */
  modeSwitching: bool(),
});
export type SchedulerKnobs = z.infer<typeof SchedulerKnobsSchema>;

export const SchedulerSettingsSchema = SchedulerKnobsSchema.extend({ policy: oneOf(POLICIES) });

/** The speculation controller's knobs (config `controller`). */
export const ControllerKnobsSchema = z.strictObject({
  /** Most draft tokens per round. */
  kMax: posInt(),
  /** SLED: stop drafting when a token's top-1 probability is below this (confidence threshold). */
  threshold: unit(),
  /** WISP: drop a drafted token whose predicted acceptance is below this (the rest is decided by rate). */
  minAcceptance: unit(),
});
export type ControllerKnobs = z.infer<typeof ControllerKnobsSchema>;

export const WispConfigSchema = z
  .strictObject({
    amqpUrl: url(['amqp://', 'amqps://']),
    amqpTls: TlsSchema,
    redisUrl: url(['redis://', 'rediss://']),
    redisTls: TlsSchema,
    /** Prefix of every Redis key (several deployments, or tests, can share one Redis). */
    redisKeyPrefix: z.string({ error: 'expected a string' }).max(64, { error: 'expected at most 64 characters' }),
    logLevel: oneOf(LOG_LEVELS),
    models: z.strictObject({
      /** Built-in forged model pair used when modelDir is not set. */
      preset: oneOf(MODEL_PRESETS),
      /** Folder with target and draft-N model folders (Optimum ONNX layout); wins over preset. */
      modelDir: str().optional(),
      /** onnxruntime intra-op threads per session. */
      threads: posInt(),
      /**
       * Verifier workers run no target model: each pass sleeps for the serving-engine cost model's
       * time of `server` (× timeScale) and returns deterministic fake logits
       * (inference/cost-model-runner.ts).
       */
      costModel: z.strictObject({ enabled: bool(), timeScale: nonNegNum(), server: serverId() }),
      /**
       * Verifier workers run the real target, each pass held until the serving-engine cost
       * model's time for it on this server (× timeScale) has passed (inference/paced-runner.ts).
       */
      pace: serverId().optional(),
    }),
    /** Multiplies every emulated device time (drafting, network); 0 = no emulated delays. */
    timeScale: nonNegNum(),
    /** Profile an edge device process emulates (a key of `devices`). */
    deviceProfile: str(),
    devices: z.record(z.string(), DeviceProfileSchema),
    /** Default SLO of a prompt that brings none. */
    slo: z.strictObject({ ttftMs: posNum(), tpotMs: posNum() }),
    scheduler: SchedulerSettingsSchema,
    controller: ControllerKnobsSchema,
    worker: z.strictObject({
      /** Stable id of this verifier worker (names its queue); unset: the role makes one. */
      id: str().optional(),
      /** Drop a session's KV cache after this long without a request, ms. */
      idleEvictMs: posNum(),
      heartbeatMs: posNum(),
      /** A worker whose heartbeat is older than this is considered lost, ms. */
      heartbeatTtlMs: posNum(),
    }),
    edge: z.strictObject({
      /** Stable id of this edge device (names its queues); unset: the role makes one. */
      deviceId: str().optional(),
      /** Resend a verification that got no result in this long, ms. */
      verifyTimeoutMs: posNum(),
      maxRetries: nonNegInt(),
    }),
    /** Redis keys of an untouched session expire after this long, ms. */
    sessionTtlMs: posInt(),
    /** Metrics and tracing (telemetry/): what each role process exposes. */
    telemetry: z.strictObject({
      /** Port of the role process's Prometheus `/metrics` endpoint; 0 = no endpoint. */
      metricsPort: z.number({ error: PORT }).int({ error: PORT }).min(0, { error: PORT }).max(65_535, { error: PORT }),
      /** Address the metrics endpoint listens on (0.0.0.0 in a container). */
      metricsHost: str(),
      /**
       * Export OpenTelemetry traces over OTLP (endpoint: OTEL_EXPORTER_OTLP_ENDPOINT). Also on
       * when that variable is set. Set it in the environment (WISP_TRACING) so tracing starts
       * before the broker and Redis libraries load; from a file only our own spans are traced.
       */
      tracing: bool(),
      /** Log lines for people instead of JSON; unset: when stderr is a terminal. */
      prettyLogs: bool().optional(),
    }),
  })
  .superRefine((c, ctx) => {
    if (c.worker.heartbeatTtlMs <= c.worker.heartbeatMs)
      ctx.addIssue({
        code: 'custom',
        path: ['worker', 'heartbeatTtlMs'],
        message: `must exceed worker.heartbeatMs (${c.worker.heartbeatMs})`,
        input: c.worker.heartbeatTtlMs,
      });
    if (!Object.hasOwn(c.devices, c.deviceProfile))
      ctx.addIssue({
        code: 'custom',
        path: ['deviceProfile'],
        message: `unknown device profile (known: ${Object.keys(c.devices).sort().join(', ')})`,
        input: c.deviceProfile,
      });
    if (c.amqpTls.enabled && !c.amqpUrl.startsWith('amqps://'))
      ctx.addIssue({ code: 'custom', path: ['amqpUrl'], message: 'amqpTls.enabled needs an amqps:// URL', input: c.amqpUrl });
    if (c.models.pace !== undefined && c.models.costModel.enabled)
      ctx.addIssue({ code: 'custom', path: ['models', 'pace'], message: 'pacing runs the real target: it cannot be combined with models.costModel.enabled', input: c.models.pace });
    if (c.models.pace !== undefined && !(c.timeScale > 0))
      ctx.addIssue({ code: 'custom', path: ['models', 'pace'], message: 'pacing holds each pass for its time × timeScale: timeScale must be > 0', input: c.models.pace });
    if (c.redisTls.enabled && !c.redisUrl.startsWith('rediss://'))
      ctx.addIssue({ code: 'custom', path: ['redisUrl'], message: 'redisTls.enabled needs a rediss:// URL', input: c.redisUrl });
  });

export type WispConfig = z.infer<typeof WispConfigSchema>;
