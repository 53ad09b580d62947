/**
 * What a live `wisp bench` run measured about its own machinery, beyond the model's batch times
 * (server-profile.csv) and the draft pair's acceptance (acceptance-samples.jsonl): the costs the
 * simulator otherwise leaves out, so that `wisp sim --replay <report>` can rebuild the run on
 * simulated time and say how well it predicts it.
 *
 * All times are the live run's own (emulated) milliseconds. Means, because throughput adds
 * costs up (a median of skewed overheads undercounts them), but without the slowest 2 %, so
 * that a few stalls (a GC pause, a broker hiccup) do not move a per-message constant.
 */
import type { LiveCalibration } from '../results/schema.ts';
import type { RoundTiming, ServedPrompt } from '../actors/edge/device.ts';
import { isDecodeStep, type BatchReport } from '../machines/verifier-worker.ts';
import { WispError } from '../common/errors.ts';

export { LiveCalibrationSchema, type LiveCalibration } from '../results/schema.ts';

export class CalibrationError extends WispError {
  constructor(message: string) {
    super('bad_calibration', message);
  }
}

/** Mean without the slowest 2 % of the sample (0 for none). */
export function trimmedMean(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const sorted = [...xs].sort((a, b) => a - b);
  const kept = sorted.slice(0, sorted.length - Math.floor(sorted.length * 0.02));
  return kept.reduce((a, b) => a + b, 0) / kept.length;
}

/**
 * Derives the calibration from a live run's records.
 * @param served every prompt the devices served (finished or not)
 * @param rounds every verified round's timing as its device saw it
 * @param batches every batch and decode step the workers executed
 * @throws CalibrationError when the run served no session (nothing to calibrate from)
 */
export function calibrate(served: readonly ServedPrompt[], rounds: readonly RoundTiming[], batches: readonly BatchReport[]): LiveCalibration {
  const done = served.filter((s) => s.error === null && s.promptTokens > 0);
  if (done.length === 0) throw new CalibrationError('the live run finished no session: nothing to calibrate the simulator from');
  const prompts = done.map((s) => s.promptTokens);
  const outputs = done.map((s) => s.tokens.length);

  // Gaps between consecutive sessions of one device (its closed loop).
  const byDevice = new Map<string, ServedPrompt[]>();
  for (const s of served) {
    const list = byDevice.get(s.deviceId) ?? [];
    list.push(s);
    byDevice.set(s.deviceId, list);
  }
  const gaps: number[] = [];
  for (const list of byDevice.values()) {
    list.sort((a, b) => a.startedAtMs - b.startedAtMs);
    for (let i = 1; i < list.length; i++) {
      const gap = list[i].startedAtMs - list[i - 1].endedAtMs;
      // A device idle between loads of the sweep is not thinking: only back-to-back sessions count.
      if (gap >= 0 && gap < 1_000) gaps.push(gap);
    }
  }

  const overhead = (b: BatchReport) => Math.max(0, (b.busyMs ?? b.actualMs) - b.actualMs);
  const steps = batches.filter(isDecodeStep);
  const verifies = batches.filter((b) => !isDecodeStep(b));
  const batchOverheadMs = trimmedMean(verifies.map(overhead));
  // A decode step's overhead is its whole cycle beyond the model: from one step's start to the
  // next's (publishing tokens, the worker machine's turn, a status to the scheduler).
  const cycles: number[] = [];
  const timed = batches.filter((b) => b.startedAtMs !== undefined).sort((a, b) => a.startedAtMs! - b.startedAtMs!);
  for (let i = 0; i + 1 < timed.length; i++) {
    const a = timed[i];
    const b = timed[i + 1];
    if (!isDecodeStep(a) || !isDecodeStep(b)) continue;
    const beyond = b.startedAtMs! - a.startedAtMs! - a.actualMs;
    // Back-to-back steps only: a longer pause means nothing was decoding in between.
    if (beyond >= 0 && beyond < 10 * Math.max(1, a.actualMs)) cycles.push(beyond);
  }
  const stepOverheadMs = cycles.length > 0 ? trimmedMean(cycles) : trimmedMean(steps.map(overhead));

  const residuals = rounds.map((r) => r.roundTripMs - r.networkRttMs - r.queueMs - r.verifyMs);
  const roundResidualMs = Math.max(0, trimmedMean(residuals));

  const perClass = new Map<string, number[]>();
  for (const r of rounds) {
    const list = perClass.get(r.profileName) ?? [];
    list.push(...r.draftMsPerToken);
    perClass.set(r.profileName, list);
  }
  const draftMsPerToken: Record<string, number> = {};
  for (const [name, xs] of perClass) if (xs.length > 0) draftMsPerToken[name] = trimmedMean(xs);

  return {
    promptTokens: { min: Math.min(...prompts), max: Math.max(...prompts) },
    outputTokens: { min: Math.min(...outputs), max: Math.max(...outputs) },
    thinkMs: trimmedMean(gaps),
    batchOverheadMs,
    stepOverheadMs,
    roundResidualMs,
    // The residual holds two broker hops and the worker's overhead before it replies.
    linkHopMs: Math.max(0, (roundResidualMs - batchOverheadMs) / 2),
    draftMsPerToken,
    counts: { sessions: done.length, rounds: rounds.length, batches: verifies.length, steps: steps.length },
  };
}
