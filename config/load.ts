/**
 * Loading the config: defaults ← file (`--config FILE` or WISP_CONFIG; YAML or JSON) ← env
 * (ENV_VARS) ← programmatic overrides, then one validation. A wrong value is refused with
 * its key, the reason, the value and where it came from:
 *   config: scheduler.bMax: expected a positive integer, got "abc" (from WISP_B_MAX)
 */
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { DEFAULT_CONFIG } from './defaults.ts';
import { CONFIG_FILE_ENV, envOverrides, getPath } from './env.ts';
import { WispConfigSchema, type WispConfig } from './schema.ts';
import { WispError } from '../common/errors.ts';

export interface ConfigIssue {
  /** Dotted key, e.g. `scheduler.bMax` (`(root)` for the whole file). */
  key: string;
  reason: string;
  /** Where the offending value came from: an env variable name, the file path, or 'overrides'. */
  source?: string;
}

/** The config was refused. `message` has one line per issue; `issues` has them as data. */
export class ConfigError extends WispError {
  readonly issues: ConfigIssue[];
  constructor(issues: ConfigIssue[]) {
    super('invalid_config', issues.map(formatIssue).join('\n'));
    this.issues = issues;
  }
}

function formatIssue(i: ConfigIssue): string {
  return `config: ${i.key}: ${i.reason}${i.source ? ` (from ${i.source})` : ''}`;
}

export type DeepPartial<T> = T extends readonly unknown[] ? T : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;

export interface LoadConfigInput {
  /** Config file (YAML or JSON); default: env.WISP_CONFIG, else none. */
  file?: string;
  /** Environment to read overrides from; default process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Applied last (tests, CLI flags). */
  overrides?: DeepPartial<WispConfig>;
}

/**
 * Builds and validates the config. Pure over its inputs (the file is read, nothing else).
 * Throws ConfigError naming every wrong key.
 * @example const config = loadConfig({ file: opts.config }); // in a CLI command
 */
export function loadConfig(input: LoadConfigInput = {}): WispConfig {
  const env = input.env ?? process.env;
  const file = input.file ?? (env[CONFIG_FILE_ENV] || undefined);
  const fromFile = file === undefined ? {} : readConfigFile(file);
  const fromEnv = envOverrides(env);
  const overrides = (input.overrides ?? {}) as Record<string, unknown>;

  const merged = [fromFile, fromEnv.values, overrides].reduce<unknown>((acc, patch) => deepMerge(acc, patch), structuredClone(DEFAULT_CONFIG));
  const result = WispConfigSchema.safeParse(merged, { reportInput: true });
  if (result.success) return deepFreeze(result.data);

  const sourceOf = (key: string): string | undefined => {
    if (getPath(overrides, key) !== undefined) return 'overrides';
    const envName = fromEnv.sources.get(key);
    if (envName) return envName;
    if (file !== undefined && getPath(fromFile, key) !== undefined) return file;
    return undefined;
  };
  throw new ConfigError(result.error.issues.flatMap((issue) => toIssues(issue, sourceOf)));
}

function toIssues(issue: z.core.$ZodIssue, sourceOf: (key: string) => string | undefined): ConfigIssue[] {
  const key = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((k) => {
      const full = key ? `${key}.${k}` : k;
      return { key: full, reason: 'unknown key', source: sourceOf(full) };
    });
  }
  let reason = issue.message;
  if (issue.code === 'invalid_type' && reason.startsWith('Invalid input')) reason = `expected ${article(issue.expected)}`;
  reason += `, got ${renderValue(issue.input)}`;
  return [{ key: key || '(root)', reason, source: sourceOf(key) }];
}

function article(expected: string): string {
  return /^[aeiou]/.test(expected) ? `an ${expected}` : `a ${expected}`;
}

function renderValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return JSON.stringify(v);
}

/** Reads a YAML or JSON config file into a plain object (validation happens after merging). */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError([{ key: '(root)', reason: `cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` }]);
  }
  let data: unknown;
  try {
    data = extname(path).toLowerCase() === '.json' ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    const kind = extname(path).toLowerCase() === '.json' ? 'JSON' : 'YAML';
    const first = (err as Error).message.split('\n')[0];
    throw new ConfigError([{ key: '(root)', reason: `invalid ${kind} in ${path}: ${first}` }]);
  }
  if (data === null || data === undefined) return {}; // an empty file sets nothing
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new ConfigError([{ key: '(root)', reason: `expected a mapping of keys in ${path}, got ${renderValue(data)}` }]);
  }
  return data as Record<string, unknown>;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Objects merge key by key; anything else (arrays included) replaces; undefined leaves as is. */
function deepMerge(base: unknown, patch: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(patch)) return patch === undefined ? base : patch;
  const out: Record<string, unknown> = { ...base };
  // defineProperty: a "__proto__" key from a file stays an own key (refused as unknown), never a prototype.
  for (const [k, v] of Object.entries(patch)) {
    Object.defineProperty(out, k, { value: deepMerge(Object.hasOwn(base, k) ? base[k] : undefined, v), enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null) {
    for (const child of Object.values(v)) deepFreeze(child);
    Object.freeze(v);
  }
  return v;
}
