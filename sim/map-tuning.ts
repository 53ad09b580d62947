/**
 * Best settings per policy in the regime map: each baseline is compared at the settings that
 * serve it best in that cell, not at one set of defaults that may suit another policy. The
 * candidates are the knobs a deployment of that policy would tune — the pass token budget and
 * chunking (every policy), batch size (the speculative policies' verify batches), SLED's
 * batching wait — one knob at a time from the defaults (the first candidate).
 *
 * A candidate's capacity search starts at the best capacity found so far: one that fails there
 * cannot win and costs one load; one that passes doubles and bisects from there, to the map's
 * precision. The winner has the largest capacity, then the highest goodput.
 */
import type { PolicyName } from '../config/schema.ts';
import type { SchedulerKnobs } from './types.ts';

export interface TuningCandidate {
  /** How the map names these settings. */
  label: string;
  scheduler: Partial<SchedulerKnobs>;
}

export const DEFAULT_SETTINGS_LABEL = 'defaults';

const COMMON: TuningCandidate[] = [
  { label: 'budget 256', scheduler: { passTokenBudget: 256 } },
  { label: 'budget 512', scheduler: { passTokenBudget: 512 } },
  { label: 'budget 2048', scheduler: { passTokenBudget: 2048 } },
  { label: 'no chunking', scheduler: { chunkedPrefill: false } },
];
const BIG_BATCHES: TuningCandidate = { label: 'batches of 64', scheduler: { bMax: 64, maxBatchTokens: 1024 } };

/** The settings tried for `policy`, defaults first. */
export function tuningCandidates(policy: PolicyName): TuningCandidate[] {
  const defaults: TuningCandidate = { label: DEFAULT_SETTINGS_LABEL, scheduler: {} };
  switch (policy) {
    case 'wisp':
    case 'adaptive':
      return [defaults, ...COMMON, BIG_BATCHES];
    case 'sled':
      return [defaults, ...COMMON, BIG_BATCHES, { label: 'wait 0 ms', scheduler: { waitMs: 0 } }, { label: 'wait 20 ms', scheduler: { waitMs: 20 } }];
    case 'centralized':
      return [defaults, ...COMMON];
  }
}

/** What a search found, as far as choosing among candidates goes. */
export interface CandidateFigures {
  capacity: number;
  goodputTokS: number;
  censored: boolean;
}

/** Whether `b` beats `a`: more capacity, or as much and more goodput. */
export function beats(b: CandidateFigures, a: CandidateFigures): boolean {
  return b.capacity > a.capacity || (b.capacity === a.capacity && b.goodputTokS > a.goodputTokS);
}

/**
 * Tries each candidate in order with `search(candidate, startDevices)` and keeps the best. The
 * defaults search from `firstStart`; every later one from the best capacity so far (a search
 * that fails at its first load has capacity 0 and loses). A censored best (at the search's top)
 * ends the tuning: no candidate can beat it by capacity.
 */
export function tuneSettings<R extends CandidateFigures>(candidates: readonly TuningCandidate[], firstStart: number, search: (c: TuningCandidate, startDevices: number) => R): { best: R; chosen: TuningCandidate; tried: { label: string; figures: R }[] } {
  let best: { r: R; c: TuningCandidate } | null = null;
  const tried: { label: string; figures: R }[] = [];
  for (const c of candidates) {
    if (best?.r.censored) break;
    const r = search(c, best ? Math.max(1, best.r.capacity) : firstStart);
    tried.push({ label: c.label, figures: r });
    if (!best || beats(r, best.r)) best = { r, c };
  }
  if (!best) throw new RangeError('tuneSettings needs at least one candidate');
  return { best: best.r, chosen: best.c, tried };
}
