/**
 * The regime map (`wisp sim map`): every policy over a grid of settings — server, TPOT SLO,
 * device mix, draft agreement — each cell a capacity search per policy on the paper scenario's
 * workload. It answers where edge speculation pays off and where centralized serving wins, from
 * the same engine model and the same scheduler, policy and controller code as everything else.
 *
 * Cells are independent, so `runMapTasks` spreads (cell, policy) searches over worker threads
 * (sim/map-worker.ts); each search is deterministic for the seed, so the map does not depend
 * on how many threads ran it.
 */
import { POLICIES, type PolicyName } from '../config/schema.ts';
import { WispError } from '../common/errors.ts';
import { applyScenarioOptions, parseMix } from './scenario-options.ts';
import { scenario, type Scenario } from './scenarios.ts';
import { DEFAULT_SETTINGS_LABEL, tuneSettings, tuningCandidates } from './map-tuning.ts';
import { DEFAULT_SEARCH_PRECISION, type CapacitySearch } from '../results/capacity-search.ts';
import { searchCapacity, sweepVariants, type RunSummary, type SearchedResult } from './sweep.ts';

export class MapConfigError extends WispError {
  constructor(message: string) {
    super('bad_map', message);
  }
}

/** The axes of a map. */
export interface MapGrid {
  servers: string[];
  tpotMs: number[];
  /** Device mixes in `--device-mix` form (`profile[:weight],…`). */
  mixes: string[];
  agreements: number[];
  policies: PolicyName[];
  seed: number;
}

/** How each cell is simulated. */
export interface MapRunSettings {
  durationS: number;
  warmupS: number;
  search: CapacitySearch;
  /** Each policy at its best settings in each cell (sim/map-tuning.ts); off: every policy at its defaults. */
  tune: boolean;
  /** Adaptive revisits each session's mode at its rounds (scheduler.modeSwitching); absent: chosen once, at admission. */
  modeSwitching?: boolean;
}

export const DEFAULT_MAP_GRID: MapGrid = {
  servers: ['a40-48gb/7b', 'a100-80gb/34b', 'h100-80gb/34b'],
  tpotMs: [40, 60, 100, 150],
  mixes: ['jetson-orin-nano', 'jetson-orin-nano:1,raspberry-pi-5:1', 'phone'],
  agreements: [0.7, 0.85],
  policies: [...POLICIES],
  seed: 1,
};

/**
 * 60 simulated seconds per load (10 s warm-up) and a search that doubles from 1 device to 512,
 * then bisects until the failing count is within 1/8 of the passing one, so a capacity is known
 * to ±12.5 % (±1 device). Tuned (each policy at its best settings), the default grid takes most
 * of an hour on two cores; `--no-tune`, about a quarter of that (README).
 */
export const DEFAULT_MAP_SETTINGS: MapRunSettings = { durationS: 60, warmupS: 10, search: { start: 1, max: 512, precision: DEFAULT_SEARCH_PRECISION }, tune: true };

/** One cell of the grid. */
export interface MapCellKey {
  server: string;
  tpotMs: number;
  mix: string;
  agreement: number;
}

/** What the map reports of one policy in one cell. */
export interface MapPolicyFigures {
  capacity: number;
  goodputTokS: number;
  /** Passed at the search's largest count: the capacity is at least this. */
  censored: boolean;
  /** The settings these figures were measured at (a label of sim/map-tuning.ts). */
  settings: string;
}

export interface MapCell extends MapCellKey {
  policies: Record<string, MapPolicyFigures>;
}

/** One unit of work: a policy's capacity search in one cell. */
export interface MapTask {
  cell: MapCellKey;
  policy: PolicyName;
  settings: MapRunSettings;
  seed: number;
}

export interface MapTaskResult {
  cell: MapCellKey;
  policy: PolicyName;
  result: SearchedResult;
  /** The settings `result` was measured at, and what every candidate tried reached. */
  settings: string;
  tried: { settings: string; capacity: number; goodputTokS: number }[];
  runs: RunSummary[];
}

/** Every cell of the grid, in a fixed order (server, TPOT, mix, agreement). */
export function mapCells(g: MapGrid): MapCellKey[] {
  checkGrid(g);
  const out: MapCellKey[] = [];
  for (const server of g.servers) for (const tpotMs of g.tpotMs) for (const mix of g.mixes) for (const agreement of g.agreements) out.push({ server, tpotMs, mix, agreement });
  return out;
}

/** @throws MapConfigError on an empty axis or a value out of range (device mixes and servers are checked when built) */
export function checkGrid(g: MapGrid): void {
  const axes: [string, unknown[]][] = [['servers', g.servers], ['tpot-ms', g.tpotMs], ['mixes', g.mixes], ['agreements', g.agreements], ['policies', g.policies]];
  for (const [name, values] of axes) if (values.length === 0) throw new MapConfigError(`--${name}: at least one value is needed`);
  for (const t of g.tpotMs) if (!(t > 0)) throw new MapConfigError(`--tpot-ms: every SLO must be > 0 ms, got ${t}`);
  for (const a of g.agreements) if (!(a > 0 && a < 1)) throw new MapConfigError(`--agreements: every agreement must be in (0, 1), got ${a}`);
  for (const m of g.mixes) parseMix(m);
}

/** The scenario of one cell: the paper scenario's workload with the cell's server, SLO, devices and agreement. */
export function cellScenario(cell: MapCellKey, settings: MapRunSettings, seed: number): Scenario {
  return applyScenarioOptions(scenario('paper'), {
    server: cell.server,
    tpotMs: cell.tpotMs,
    deviceMix: parseMix(cell.mix),
    agreement: cell.agreement,
    durationS: settings.durationS,
    warmupS: settings.warmupS,
    seed,
  });
}

/** Runs one task (a worker thread calls this; so do tests). */
export function runMapTask(t: MapTask): MapTaskResult {
  const base = cellScenario(t.cell, t.settings, t.seed);
  const runs: RunSummary[] = [];
  const candidates = t.settings.tune ? tuningCandidates(t.policy) : tuningCandidates(t.policy).slice(0, 1);
  const { best, chosen, tried } = tuneSettings(candidates, t.settings.search.start, (c, start) => {
    const s: Scenario = { ...base, scheduler: { ...base.scheduler, ...c.scheduler, ...(t.settings.modeSwitching ? { modeSwitching: true } : {}) } };
    const variant = sweepVariants(s, [t.policy], false)[0];
    const own: RunSummary[] = [];
    const r = searchCapacity({ scenario: s, policies: [t.policy], extrasVariants: false }, variant, { ...t.settings.search, start }, own, { n: 0 });
    runs.push(...own.map((x) => ({ ...x, key: c.label === DEFAULT_SETTINGS_LABEL ? x.key : `${x.key} (${c.label})` })));
    return r;
  });
  return {
    cell: t.cell,
    policy: t.policy,
    result: best,
    settings: chosen.label,
    tried: tried.map((x) => ({ settings: x.label, capacity: x.figures.capacity, goodputTokS: x.figures.goodputTokS })),
    runs,
  };
}

/** All tasks of a grid: each cell × each policy. */
export function mapTasks(g: MapGrid, settings: MapRunSettings): MapTask[] {
  return mapCells(g).flatMap((cell) => g.policies.map((policy) => ({ cell, policy, settings, seed: g.seed })));
}

const cellId = (c: MapCellKey): string => `${c.server}|${c.tpotMs}|${c.mix}|${c.agreement}`;

/** Folds task results into cells, in grid order. */
export function assembleCells(g: MapGrid, results: readonly MapTaskResult[]): MapCell[] {
  const byCell = new Map<string, MapTaskResult[]>();
  for (const r of results) {
    const k = cellId(r.cell);
    byCell.set(k, [...(byCell.get(k) ?? []), r]);
  }
  return mapCells(g).map((cell) => {
    const policies: Record<string, MapPolicyFigures> = {};
    for (const p of g.policies) {
      const r = (byCell.get(cellId(cell)) ?? []).find((x) => x.policy === p);
      if (r) policies[p] = { capacity: r.result.capacity, goodputTokS: r.result.goodputTokS, censored: r.result.censored, settings: r.settings };
    }
    return { ...cell, policies };
  });
}

/** The capacity ratios the map shows: WISP over each baseline, and adaptive over each other policy, of those in the grid. */
export function ratioPairs(policies: readonly PolicyName[]): [PolicyName, PolicyName][] {
  const wanted: [PolicyName, PolicyName][] = [
    ['wisp', 'centralized'],
    ['wisp', 'sled'],
    ['adaptive', 'centralized'],
    ['adaptive', 'sled'],
    ['adaptive', 'wisp'],
  ];
  return wanted.filter(([a, b]) => policies.includes(a) && policies.includes(b));
}

/** a / b as the map shows it: null when both are 0, Infinity when only b is. */
export function capacityRatio(a: MapPolicyFigures | undefined, b: MapPolicyFigures | undefined): number | null {
  if (!a || !b) return null;
  if (b.capacity === 0) return a.capacity === 0 ? null : Infinity;
  return a.capacity / b.capacity;
}
