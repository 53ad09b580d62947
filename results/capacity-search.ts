/**
 * The capacity search of `wisp sim map` and `wisp bench` (docs/design.md §6): double the device
 * count from a start until a load misses the attainment target (or the search's largest count),
 * then bisect between the last passing and the first failing count to a stated precision. Pure:
 * given the loads run so far it names the next count; the simulator runs it at once, the live
 * benchmark on the real system.
 */
import { ATTAINMENT_TARGET } from './metrics.ts';

/** How a capacity search proceeds. */
export interface CapacitySearch {
  /** First device count tried (≥ 1). */
  start: number;
  /** Largest count tried; a policy that passes there has a censored capacity (≥ max). */
  max: number;
  /** Bisection stops when the failing count is within this share of the passing one (and 1 device). */
  precision: number;
}

/** The precision both searches state (the map's `--precision` default, the live bench's): ±12.5 %. */
export const DEFAULT_SEARCH_PRECISION = 0.125;

/** What the search needs of a load it ran. */
export interface SearchedLoad {
  devices: number;
  attainment: number;
  /** Sessions judged in its window: while doubling, a load at which none started says nothing and the doubling goes on. */
  sessions: number;
}

/**
 * Where a search stands, from its loads in the order they ran: the last passing count and the
 * failing count above it (null while doubling). Once a load failed, every later load below the
 * target fails, sessions or not.
 */
export function searchBracket(loads: readonly SearchedLoad[]): { pass: number; fail: number | null } {
  let pass = 0;
  let fail: number | null = null;
  for (const l of loads) {
    if (l.attainment >= ATTAINMENT_TARGET) pass = Math.max(pass, l.devices);
    else if (fail !== null || l.sessions > 0) fail = fail === null ? l.devices : Math.min(fail, l.devices);
  }
  return { pass, fail };
}

/**
 * The next device count to run, or null when the search is done: `loads` are those run so far,
 * in the order they ran (a search starts with none).
 */
export function nextSearchCount(loads: readonly SearchedLoad[], search: CapacitySearch): number | null {
  if (loads.length === 0) return Math.max(1, Math.min(search.start, search.max));
  const { pass, fail } = searchBracket(loads);
  if (fail === null) {
    const last = loads[loads.length - 1].devices;
    return last >= search.max ? null : Math.min(search.max, last * 2);
  }
  if (fail - pass <= Math.max(1, search.precision * pass)) return null;
  const mid = Math.floor((pass + fail) / 2);
  return mid <= pass ? null : mid;
}

/** Whether a finished search's capacity is censored: no load it ran failed. */
export function searchCensored(loads: readonly SearchedLoad[]): boolean {
  return searchBracket(loads).fail === null;
}
