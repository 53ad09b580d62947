/**
 * Number flags, checked one way for every command: a rule says what a value must be; `parse`
 * checks a flag's text after commander has parsed the line (an OptionsError naming the flag),
 * `argParser` hands commander the same rule to check while it parses (commander names the flag).
 */
import { InvalidArgumentError } from 'commander';
import { OptionsError } from './errors.ts';

export interface NumberRule {
  check(n: number): boolean;
  /** What a value must be, for the message: "an integer ≥ 1". */
  expect: string;
}

export const POSITIVE_INT: NumberRule = { check: (n) => Number.isInteger(n) && n >= 1, expect: 'an integer ≥ 1' };
export const NON_NEG_INT: NumberRule = { check: (n) => Number.isInteger(n) && n >= 0, expect: 'an integer ≥ 0' };
export const POSITIVE: NumberRule = { check: (n) => Number.isFinite(n) && n > 0, expect: 'a positive number' };
export const NON_NEG: NumberRule = { check: (n) => Number.isFinite(n) && n >= 0, expect: 'a number ≥ 0' };
export const UNIT_OPEN: NumberRule = { check: (n) => n > 0 && n < 1, expect: 'a number in (0, 1)' };

/** A rule of the given bounds, inclusive. */
export function between(lo: number, hi: number, integer = false): NumberRule {
  return { check: (n) => Number.isFinite(n) && n >= lo && n <= hi && (!integer || Number.isInteger(n)), expect: `${integer ? 'an integer' : 'a number'} ${lo}..${hi}` };
}

/** `--flag`'s text as a number that keeps `rule`. */
export function parseNumber(flag: string, raw: string, rule: NumberRule): number {
  const n = raw.trim() === '' ? Number.NaN : Number(raw);
  if (!rule.check(n)) throw new OptionsError(`--${flag}: expected ${rule.expect}, got "${raw}"`);
  return n;
}

/** `--flag a,b,c`: a non-empty list of numbers that each keep `rule`. */
export function parseNumberList(flag: string, raw: string, rule: NumberRule): number[] {
  const parts = raw.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const xs = parts.map(Number);
  if (xs.length === 0 || xs.some((x) => !rule.check(x))) throw new OptionsError(`--${flag}: expected a comma-separated list, each ${rule.expect}, got "${raw}"`);
  return xs;
}

/** The same rule for commander's own parsing of an option's argument. */
export function argParser(rule: NumberRule): (raw: string) => number {
  return (raw) => {
    const n = raw.trim() === '' ? Number.NaN : Number(raw);
    if (!rule.check(n)) throw new InvalidArgumentError(`expected ${rule.expect}`);
    return n;
  };
}
