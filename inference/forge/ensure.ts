/**
 * `ensureModelPair`: the built-in model pair of a preset, forged on first use into the models
 * folder and reused afterwards. Safe across processes: each forges into its own temporary folder
 * and renames it into place; a loser of the race keeps the winner's (identical) folder.
 */
import { randomBytes } from 'node:crypto';
import { access, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  FORGE_VERSION,
  corpusSha256,
  forgeModels,
  resolveForgeOptions,
  type ForgeManifest,
  type ForgeOptions,
  type ForgeRecord,
} from './forge.ts';
import type { ForgePreset } from './presets.ts';

/** Where a preset's pair lives. */
export interface ModelPairLocation {
  /** The pair's folder (`<models>/<preset>`), holding forge.json. */
  root: string;
  targetDir: string;
  draftDirs: string[];
}

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The models folder: `$WISP_MODELS_DIR`, else `<repo>/.wisp/models`. */
export function defaultModelsDir(): string {
  return process.env.WISP_MODELS_DIR ?? join(REPO_ROOT, '.wisp', 'models');
}

/** The parts of forge.json that determine the forged bytes (β and calibration are derived). */
type ForgeKey = Pick<ForgeRecord, 'forgeVersion' | 'options' | 'corpusSha256'>;

/**
 * The built-in pairs carry two drafts of different depth (SLED's diverse draft models, one
 * shared tokenizer): the device profiles pick one each (config `devices.*.draftModel`).
 */
export const BUILT_IN_DRAFTS = [1, 2];

function expectedRecord(preset: ForgePreset): ForgeKey {
  return { forgeVersion: FORGE_VERSION, options: resolveForgeOptions({ preset, drafts: BUILT_IN_DRAFTS }), corpusSha256: corpusSha256() };
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** True when `dir` holds a complete forge of exactly `expected`. */
async function isCurrent(dir: string, expected: ForgeKey): Promise<boolean> {
  let found: ForgeRecord;
  try {
    found = JSON.parse(await readFile(join(dir, 'forge.json'), 'utf8')) as ForgeRecord;
  } catch {
    return false;
  }
  const key: ForgeKey = { forgeVersion: found.forgeVersion, options: found.options, corpusSha256: found.corpusSha256 };
  if (JSON.stringify(key) !== JSON.stringify(expected)) return false;
  const folders = ['target', ...expected.options.drafts.map((d) => `draft-${d}`)];
  for (const f of folders) {
    for (const file of ['model.onnx', 'config.json', 'tokenizer.json', 'tokenizer_config.json']) {
      if (!(await exists(join(dir, f, file)))) return false;
    }
  }
  return true;
}

function location(dir: string, expected: ForgeKey): ModelPairLocation {
  return {
    root: dir,
    targetDir: join(dir, 'target'),
    draftDirs: expected.options.drafts.map((d) => join(dir, `draft-${d}`)),
  };
}

const inFlight = new Map<string, Promise<ModelPairLocation>>();

/**
 * Returns the preset's forged target/draft pair, forging it on first use into
 * `<opts.root ?? $WISP_MODELS_DIR ?? <repo>/.wisp/models>/<preset>`. Reuses a folder whose
 * forge.json matches the current forge; replaces a stale one.
 */
export function ensureModelPair(preset: ForgePreset, opts: { root?: string } = {}): Promise<ModelPairLocation> {
  const dir = resolve(opts.root ?? defaultModelsDir(), preset);
  let p = inFlight.get(dir);
  if (!p) {
    p = ensureAt(dir, preset).finally(() => inFlight.delete(dir));
    inFlight.set(dir, p);
  }
  return p;
}

async function ensureAt(dir: string, preset: ForgePreset): Promise<ModelPairLocation> {
  const expected = expectedRecord(preset);
  if (await isCurrent(dir, expected)) return location(dir, expected);
  await installForged(dir, { preset, drafts: BUILT_IN_DRAFTS }, (d) => isCurrent(d, expected));
  return location(dir, expected);
}

/**
 * Forges into a temporary sibling of `dir`, then renames it into place. When another folder is
 * in the way it is kept if `keepExisting` says so (another process won the race with the same
 * forge), else moved aside and deleted. Readers never see a half-written folder.
 */
async function installForged(
  dir: string,
  options: ForgeOptions,
  keepExisting: (dir: string) => Promise<boolean>,
): Promise<ForgeManifest> {
  const base = dirname(dir);
  await mkdir(base, { recursive: true });
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const tmp = join(base, `.forging-${basename(dir)}-${tag}`);
  try {
    const m = await forgeModels({ ...options, outDir: tmp });
    const installed: ForgeManifest = {
      ...m,
      outDir: dir,
      targetDir: join(dir, 'target'),
      draftDirs: m.draftDirs.map((d) => join(dir, basename(d))),
    };
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await rename(tmp, dir);
        return installed;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      }
      if (await keepExisting(dir)) return installed;
      const stale = join(base, `.stale-${basename(dir)}-${tag}-${attempt}`);
      try {
        await rename(dir, stale);
        await rm(stale, { recursive: true, force: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    throw new Error(`could not install forged models at ${dir} (another process keeps replacing it)`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Forges `options` into `dir` atomically (temporary folder + rename), replacing whatever was
 * there. Use this rather than `forgeModels` for folders other processes may be reading.
 */
export function forgeModelsAtomic(options: ForgeOptions & { outDir: string }): Promise<ForgeManifest> {
  const { outDir, ...rest } = options;
  return installForged(resolve(outDir), rest, async () => false);
}
