/**
 * Configuration of one simulated run (one policy, one number of devices) and its result.
 */
import type { Slo } from '../protocol/messages.ts';
import type { ControllerKnobs, DeviceProfile, SchedulerKnobs as ConfigSchedulerKnobs } from '../config/schema.ts';
import type { BatchRecord, SessionRecord } from '../results/metrics.ts';
import type { PolicyName } from '../policies/types.ts';
import type { AcceptanceModel } from './acceptance.ts';
import type { ServerCostModel } from './server-cost.ts';

/** A class of edge device: its profile (draft speed, network, power) and its draft's acceptance. */
export interface DeviceClassSpec {
  /** Profile name, e.g. 'jetson-orin-nano' (config/defaults.ts DEVICE_PROFILES). */
  name: string;
  profile: DeviceProfile;
  acceptance: AcceptanceModel;
  /** Relative share of the devices (devices are dealt to classes in proportion, deterministically). */
  weight: number;
}

/** Inclusive integer range, drawn uniformly. */
export interface IntRange {
  min: number;
  max: number;
}

/** What each device asks for: one session after another (closed loop). */
export interface WorkloadSpec {
  promptTokens: IntRange;
  outputTokens: IntRange;
  /** Pause between the end of a device's session and its next prompt, ms. */
  thinkMs: number;
  /** Devices start their first session uniformly within this long, ms (avoids a lockstep start). */
  startSpreadMs: number;
}

/** The scheduler's knobs as the config has them (config/schema.ts); pipelined drafting is a run setting here. */
export type SchedulerKnobs = Omit<ConfigSchedulerKnobs, 'pipelinedDrafting'>;

export interface ServerSpec {
  cost: ServerCostModel;
  /** Target model name the workers report (and the sessions ask for). */
  model: string;
  vocabSize: number;
  maxPositions: number;
  /** Scheduler ↔ worker message latency, ms (co-located: ~0). */
  hopMs: number;
  /**
   * Broker latency on each device ↔ server message on top of the device's network, ms (0 when
   * the profile's round trip already covers it; a replayed live run measures it).
   */
  linkHopMs: number;
  /** Worker time per batch beyond the model (sampling, ledger writes, replies), ms; results leave after it. */
  batchOverheadMs: number;
  /** The same per centralized decode step, ms. */
  stepOverheadMs: number;
}

/** One simulated run. */
export interface SimRunConfig {
  policy: PolicyName;
  devices: number;
  workers: number;
  durationMs: number;
  /** Sessions that start before this are not judged, ms. */
  warmupMs: number;
  seed: number;
  slo: Slo;
  scheduler: SchedulerKnobs;
  /** Device drafts the next round while the current one is verified (an extra of ours; WISP only). */
  pipelinedDrafting: boolean;
  controller: ControllerKnobs;
  classes: DeviceClassSpec[];
  workload: WorkloadSpec;
  server: ServerSpec;
}

export interface SimRunResult {
  config: { policy: PolicyName; devices: number; workers: number; durationMs: number; warmupMs: number; seed: number };
  /** Sessions that started in the window [warmupMs, durationMs), each judged when it ended. */
  records: SessionRecord[];
  /** Server batches started in the window. */
  batches: BatchRecord[];
  windowMs: number;
  /** Simulated time the run stopped at (past durationMs while judged sessions drained). */
  endMs: number;
  sessionsStarted: number;
  /** Requests the scheduler refused (their sessions failed). */
  refused: number;
  events: number;
  /** Scheduler estimators at the end: running error per worker. */
  estimators: { workerId: string; ewmaApe: number; observations: number }[];
  /** Pipelined drafting: look-ahead rounds reused / started. */
  lookahead: { started: number; reused: number };
  wallMs: number;
}
