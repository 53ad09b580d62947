/**
 * The shapes of a run's results.json (`wisp sim`, `wisp bench`): one zod schema per part, the
 * types derived from them. The writers check a document against it before writing
 * (results/write.ts), and `wisp sim --replay` validates what it reads with it (sim/replay.ts).
 */
import { z } from 'zod';
import { ControllerKnobsSchema, DeviceProfileSchema, POLICIES, SchedulerKnobsSchema } from '../config/schema.ts';
import { SloSchema } from '../protocol/messages.ts';

const num = z.number().finite();
const nonNeg = num.min(0);
const tokenRange = z.object({ min: z.number().int().positive(), max: z.number().int().positive() });

/** Percentile summary of a sample. All fields are 0 for an empty sample. */
export const SummarySchema = z.object({ count: nonNeg, mean: num, p50: num, p90: num, p99: num, max: num });
export type Summary = z.infer<typeof SummarySchema>;

export const AcceptanceSummarySchema = z.object({
  /** Accepted drafts / drafts the target judged. */
  rate: nonNeg,
  /** Mean drafts accepted per verification round. */
  acceptedPerRound: nonNeg,
  /** Mean drafts sent per verification round. */
  draftedPerRound: nonNeg,
  /** Acceptance rate at each draft position (given it was judged). */
  byPosition: z.array(nonNeg),
});
export type AcceptanceSummary = z.infer<typeof AcceptanceSummarySchema>;

export const WastedDraftSummarySchema = z.object({
  /** Device time spent on drafts that were rejected, cut or discarded, ms (all sessions). */
  totalMs: nonNeg,
  /** Share of all drafting time that was wasted. */
  fraction: nonNeg,
  /** Wasted drafting time per generated token, ms. */
  msPerOutputToken: nonNeg,
});
export type WastedDraftSummary = z.infer<typeof WastedDraftSummarySchema>;

/** Server time in the measured window by kind, ms (summed over workers). */
export const ServerTimePartsSchema = z.object({ verify: nonNeg, decode: nonNeg, prefill: nonNeg, idle: nonNeg });
export type ServerTimeParts = z.infer<typeof ServerTimePartsSchema>;

/**
 * Where a session's time went, ms (per session), or per output token (per load). drafting: on
 * the critical path (not overlapped by verification); queue: waiting at the server for a pass;
 * verify: in server passes (verification, prefill, decode steps); memoryWait: waiting for
 * KV-cache memory before its prefill; network: the rest (links, broker, device overheads).
 */
export const SessionTimePartsSchema = z.object({ drafting: nonNeg, network: nonNeg, queue: nonNeg, verify: nonNeg, memoryWait: nonNeg });
export type SessionTimeParts = z.infer<typeof SessionTimePartsSchema>;

/** KV-cache memory over a load, from the workers' state after each pass. */
export const KvMemorySummarySchema = z.object({
  /** Tokens the server holds per worker; null = no limit modelled. */
  capacityTokens: nonNeg.nullable(),
  /** Mean and peak share of the capacity reserved (0 without a limit). */
  meanUtilisation: nonNeg,
  peakUtilisation: nonNeg,
  /** Mean and peak number of sessions waiting for memory. */
  meanWaiting: nonNeg,
  peakWaiting: nonNeg,
});
export type KvMemorySummary = z.infer<typeof KvMemorySummarySchema>;

export const ModeSummarySchema = z.object({
  decodedSessionShare: z.number().min(0).max(1),
  decodedTokenShare: z.number().min(0).max(1),
  /** Sessions whose mode the scheduler switched at least once (absent in reports from before switching). */
  switchedSessionShare: z.number().min(0).max(1).optional(),
  /** Mean draft tokens per round over the speculated sessions (0 when none). */
  meanDraftsPerRound: nonNeg,
});
export type ModeSummary = z.infer<typeof ModeSummarySchema>;

/** Everything measured at one load (one number of concurrent devices). */
export const LoadPointSchema = z.object({
  devices: z.number().int().positive(),
  /** Sessions judged. */
  sessions: nonNeg,
  /** Fraction of judged sessions that attained their SLO (0 when none were judged). */
  attainment: nonNeg,
  goodputTokS: nonNeg,
  /** Output tokens per second of all finished sessions. */
  throughputTokS: nonNeg,
  ttftMs: SummarySchema,
  tpotMs: SummarySchema,
  /** Device energy per generated token, J (finished sessions). */
  energyJPerToken: nonNeg,
  acceptance: AcceptanceSummarySchema,
  wastedDraft: WastedDraftSummarySchema,
  batchSize: SummarySchema,
  /** Estimator absolute percentage error over scheduled batches (0.05 = 5 %). */
  estimatorApe: SummarySchema,
  /** Mean queueing delay per server request (verification round or prefill), ms. */
  queueMsPerRound: nonNeg,
  /** Draft tokens cut by server-side truncation per verification round. */
  truncatedPerRound: nonNeg,
  /** Attainment by device class. */
  attainmentByClass: z.record(z.string(), nonNeg),
  /** Where the server's time went in the window (present when batches were given). */
  serverMs: ServerTimePartsSchema.optional(),
  /** Mean session time per output token by part, ms (finished sessions that report their parts). */
  sessionMsPerToken: SessionTimePartsSchema.optional(),
  kv: KvMemorySummarySchema.optional(),
  /** How the finished sessions were served: share of sessions and of output tokens the server decoded, and the mean drafts per round of the rest. */
  modes: ModeSummarySchema.optional(),
  /** A load run several times (`wisp bench --repeats`): this is the median run; the others' range. */
  repeats: z
    .object({
      runs: z.number().int().min(2),
      attainment: z.object({ min: nonNeg, max: nonNeg }),
      goodputTokS: z.object({ min: nonNeg, max: nonNeg }),
    })
    .optional(),
});
export type LoadPoint = z.infer<typeof LoadPointSchema>;

/** Results of one policy over a load sweep. */
export const PolicyResultSchema = z.object({
  /** Largest swept device count with attainment ≥ the target (0 when none). */
  capacity: nonNeg,
  /** Best goodput over the sweep, tokens/s. */
  goodputTokS: nonNeg,
  /** Device count at which the best goodput was reached. */
  goodputAtDevices: nonNeg,
  /** Device energy per generated token at capacity (or the smallest load when capacity is 0), J. */
  energyJPerToken: nonNeg,
  points: z.array(LoadPointSchema),
  /** A capacity search passed at its largest count: the capacity is at least `capacity`. */
  censored: z.boolean().optional(),
});
export type PolicyResult = z.infer<typeof PolicyResultSchema>;

/** WISP over a baseline: capacity and best-goodput ratios (null when the baseline's is 0). */
export const RatioSchema = z.object({ capacity: nonNeg.nullable(), goodput: nonNeg.nullable() });
export type Ratio = z.infer<typeof RatioSchema>;

/**
 * The result document of `wisp sim` and `wisp bench` (`--json` prints it as the last line):
 * `{"policies":{"wisp":{"capacity":…,"goodputTokS":…},"sled":{…},"centralized":{…}},…}`; any
 * other key is what the producer records besides (scenario, seed, variants, timings).
 */
/** Paced passes of one policy's runs: how many, how many overran their paced time, by how much at worst (ms). */
export const PaceCountsSchema = z.object({ passes: z.number().int().min(0), late: z.number().int().min(0), worstLateMs: nonNeg });

/** A live run paced to a serving engine (`wisp bench --pace`): which, and how faithfully. */
export const PacingSchema = z.object({
  /** The engine, gpu/model. */
  server: z.string(),
  /** Share of all passes that kept their paced time. */
  onTimeShare: z.number().min(0).max(1),
  total: PaceCountsSchema,
  byPolicy: z.partialRecord(z.enum(POLICIES), PaceCountsSchema),
});
export type Pacing = z.infer<typeof PacingSchema>;
export type PaceCounts = z.infer<typeof PaceCountsSchema>;

export const BenchResultsSchema = z.looseObject({
  kind: z.enum(['sim', 'bench']),
  policies: z.partialRecord(z.enum(POLICIES), PolicyResultSchema),
  /** WISP's ratios to each baseline present. */
  ratios: z.object({ vsCentralized: RatioSchema.optional(), vsSled: RatioSchema.optional() }),
  slo: SloSchema,
  /** Attainment a load must reach to count toward capacity (0.9). */
  attainmentTarget: nonNeg,
  /** A live run whose verifiers were paced to a serving engine. */
  pacing: PacingSchema.optional(),
});
export type BenchResults = z.infer<typeof BenchResultsSchema>;

/** The settings a live run's scheduler and devices used (results.json `settings`; the policy varies per run). */
export const LiveSettingsSchema = z.object({
  scheduler: SchedulerKnobsSchema,
  controller: ControllerKnobsSchema,
  devices: z.record(z.string(), DeviceProfileSchema),
});
export type LiveSettings = z.infer<typeof LiveSettingsSchema>;

/** What a live run measured of its own machinery (results.json `calibration`; bench/calibration.ts computes it). */
export const LiveCalibrationSchema = z.object({
  /** Prompt lengths the devices sent, tokens. */
  promptTokens: tokenRange,
  /** Tokens each finished session generated (the cap, or less at the model's context end). */
  outputTokens: tokenRange,
  /** Pause between a device's session ending and its next one starting, ms (client → broker → device). */
  thinkMs: nonNeg,
  /** Worker time per batch beyond the model: sampling, ledger writes, publishing replies, ms. */
  batchOverheadMs: nonNeg,
  /** A centralized decode step's cycle beyond the model (start to next start, less model time), ms. */
  stepOverheadMs: nonNeg,
  /**
   * A verified round's time not accounted for by the emulated network, queueing and the model,
   * ms: broker hops device → scheduler and worker → device, the worker's overhead before replying,
   * event-loop delays.
   */
  roundResidualMs: nonNeg,
  /** Broker latency per device ↔ server message implied by the residual, ms. */
  linkHopMs: nonNeg,
  /** Device time per kept draft token, per device profile, ms (≥ the paced profile time). */
  draftMsPerToken: z.record(z.string(), nonNeg),
  /** How many observations each figure rests on. */
  counts: z.object({ sessions: nonNeg, rounds: nonNeg, batches: nonNeg, steps: nonNeg }),
});
export type LiveCalibration = z.infer<typeof LiveCalibrationSchema>;
