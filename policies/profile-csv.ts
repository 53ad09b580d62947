/**
 * Parser for server latency profiles such as data/verify-profile-h200.csv (measured on an
 * H200; see data/README.md). Pure: takes the file's text, so the CLI, tests and simulator
 * decide where it comes from. Every row is checked — columns, numbers, and that the summary
 * columns agree with the per-request lists — and a bad row fails with its line number.
 */
import { ProfileCsvError } from './errors.ts';
import type { BatchShape } from './types.ts';

/** The header every profile starts with, in this order. */
export const PROFILE_COLUMNS = [
  'model',
  'kind',
  'B',
  'n_max',
  'L_max',
  'sum_n',
  'sum_L',
  'sum_nL',
  'ms_median',
  'ms_min',
  'ms_max',
  'per_request_n',
  'per_request_L',
] as const;

export type ProfileKind = 'grid' | 'mixed' | 'prefill';
const KINDS: readonly ProfileKind[] = ['grid', 'mixed', 'prefill'];

/** One measured batch. */
export interface ProfileRow {
  model: string;
  /** grid: B equal requests; mixed: random per-request shapes; prefill: B prompts, no cache. */
  kind: ProfileKind;
  B: number;
  nMax: number;
  LMax: number;
  sumN: number;
  sumL: number;
  sumNL: number;
  msMedian: number;
  msMin: number;
  msMax: number;
  /** Tokens fed per request (length B). For prefill rows: the (padded) prompt length. */
  perRequestN: number[];
  /** Cache length per request before the batch (length B; zeros for prefill rows). */
  perRequestL: number[];
  /** 1-based line number in the source text. */
  line: number;
}

/**
 * Parses and validates a profile CSV.
 * @param text the file's contents
 * @param source a name for error messages (usually the path)
 * @throws ProfileCsvError naming the file and line of the first problem
 */
export function parseProfileCsv(text: string, source = 'profile'): ProfileRow[] {
  const lines = text.split(/\r?\n/);
  const header = lines[0]?.trim() ?? '';
  if (header !== PROFILE_COLUMNS.join(',')) {
    throw new ProfileCsvError(`${source}:1: header must be "${PROFILE_COLUMNS.join(',')}", got "${header}"`, 1);
  }
  const rows: ProfileRow[] = [];
  for (let i = 1; i < lines.length; i++) {
    if (lines[i].trim() === '') continue;
    rows.push(parseLine(lines[i], i + 1, source));
  }
  if (rows.length === 0) throw new ProfileCsvError(`${source}: no data rows`, null);
  return rows;
}

function parseLine(text: string, line: number, source: string): ProfileRow {
  const fail = (why: string): never => {
    throw new ProfileCsvError(`${source}:${line}: ${why}`, line);
  };
  const f = text.split(',').map((s) => s.trim());
  if (f.length !== PROFILE_COLUMNS.length) fail(`expected ${PROFILE_COLUMNS.length} fields, got ${f.length}`);
  if (f.some((s) => s.includes('"'))) fail('quoted fields are not supported');
  const [model, kindText] = f;
  if (model === '') fail('model is empty');
  if (!KINDS.includes(kindText as ProfileKind)) fail(`kind must be one of ${KINDS.join('|')}, got "${kindText}"`);
  const kind = kindText as ProfileKind;
  const int = (col: number, min: number): number => {
    const v = Number(f[col]);
    if (f[col] === '' || !Number.isInteger(v) || v < min) fail(`${PROFILE_COLUMNS[col]} must be an integer ≥ ${min}, got "${f[col]}"`);
    return v;
  };
  const ms = (col: number): number => {
    const v = Number(f[col]);
    if (f[col] === '' || !Number.isFinite(v) || v <= 0) fail(`${PROFILE_COLUMNS[col]} must be a positive number of ms, got "${f[col]}"`);
    return v;
  };
  const B = int(2, 1);
  const nMax = int(3, 1);
  const LMax = int(4, 0);
  const sumN = int(5, 0);
  const sumL = int(6, 0);
  const sumNL = int(7, 0);
  const msMedian = ms(8);
  const msMin = ms(9);
  const msMax = ms(10);
  if (!(msMin <= msMedian && msMedian <= msMax)) fail(`need ms_min ≤ ms_median ≤ ms_max, got ${msMin}, ${msMedian}, ${msMax}`);
  const list = (col: number): number[] => {
    if (f[col] === '') return [];
    return f[col].split('/').map((s) => {
      const v = Number(s);
      if (s === '' || !Number.isInteger(v) || v < 0) fail(`${PROFILE_COLUMNS[col]} has a bad entry "${s}"`);
      return v;
    });
  };
  let perRequestN = list(11);
  let perRequestL = list(12);
  if (kind === 'prefill') {
    if (LMax !== 0) fail(`a prefill row has no cache: L_max must be 0, got ${LMax}`);
    if (perRequestN.length === 0) perRequestN = new Array<number>(B).fill(nMax);
    if (perRequestL.length === 0) perRequestL = new Array<number>(B).fill(0);
  }
  if (perRequestN.length !== B) fail(`per_request_n has ${perRequestN.length} entries, B is ${B}`);
  if (perRequestL.length !== B) fail(`per_request_L has ${perRequestL.length} entries, B is ${B}`);
  if (perRequestN.some((n) => n < 1)) fail('per_request_n entries must be ≥ 1');
  const check = (name: string, got: number, want: number): void => {
    if (got !== want) fail(`${name} is ${got} but the per-request lists give ${want}`);
  };
  check('n_max', nMax, Math.max(...perRequestN));
  check('L_max', LMax, Math.max(...perRequestL));
  if (kind === 'prefill') {
    // A prefill batch is B prompts padded to n_max; sum_n counts the padded tokens.
    check('sum_n', sumN, B * nMax);
  } else {
    check('sum_n', sumN, perRequestN.reduce((a, b) => a + b, 0));
    check('sum_L', sumL, perRequestL.reduce((a, b) => a + b, 0));
    check('sum_nL', sumNL, perRequestN.reduce((a, n, i) => a + n * perRequestL[i], 0));
  }
  return { model, kind, B, nMax, LMax, sumN, sumL, sumNL, msMedian, msMin, msMax, perRequestN, perRequestL, line };
}

/** The batch as the estimator sees it: one shape per request (prefill members have L = 0). */
export function rowShapes(row: ProfileRow): BatchShape[] {
  return row.perRequestN.map((n, i) => ({ n, L: row.kind === 'prefill' ? 0 : row.perRequestL[i] }));
}
