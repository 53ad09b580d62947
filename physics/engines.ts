/**
 * The engine presets by name (`gpu/model`, e.g. `a100-80gb/34b`), built from the GPU and model
 * presets and the measured operator file of that pair shipped in data/vidur/. The one place in
 * physics/ that reads files; everything else there is pure.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { WispError } from '../common/errors.ts';
import { GPUS, MODELS, type GpuSpec, type ModelShape } from './hardware.ts';
import { parseVidurMlpCsv, type LinearCurve } from './operator-profile.ts';
import { checkFits, engineModel, type EngineModel, type EngineOptions } from './pass-cost.ts';

export class EngineSpecError extends WispError {
  constructor(message: string) {
    super('bad_server_spec', message);
  }
}

export const GPU_NAMES = Object.keys(GPUS);
export const MODEL_NAMES = Object.keys(MODELS);

/** The folder of the Vidur operator files (a copy inside the repository, with its licence). */
export const VIDUR_DIR = fileURLToPath(new URL('../data/vidur/', import.meta.url));

/** Splits `gpu/model` into its presets. @throws EngineSpecError naming the known presets */
export function parseServerId(id: string): { gpu: GpuSpec; model: ModelShape } {
  const parts = id.split('/');
  if (parts.length !== 2) throw new EngineSpecError(`server "${id}" is not of the form gpu/model (e.g. a100-80gb/34b)`);
  const gpu = GPUS[parts[0]];
  if (!gpu) throw new EngineSpecError(`unknown GPU "${parts[0]}" (known: ${GPU_NAMES.join(', ')})`);
  const model = MODELS[parts[1]];
  if (!model) throw new EngineSpecError(`unknown model "${parts[1]}" (known: ${MODEL_NAMES.join(', ')})`);
  return { gpu, model };
}

/** The operator file of a GPU/model pair, relative to data/vidur/. */
export function operatorFileName(gpu: GpuSpec, model: ModelShape): string {
  return `${gpu.vidurPrefix}-${model.vidurModel}-mlp.csv`;
}

const curves = new Map<string, LinearCurve>();

/** The linear-operator curve of a pair, read once per process. */
export function linearCurveOf(gpu: GpuSpec, model: ModelShape, dir = VIDUR_DIR): LinearCurve {
  const file = operatorFileName(gpu, model);
  const key = `${dir}|${file}`;
  const known = curves.get(key);
  if (known) return known;
  let text: string;
  try {
    text = readFileSync(`${dir}${file}`, 'utf8');
  } catch (e) {
    throw new EngineSpecError(`no measured operator file for ${gpu.name}/${model.name} (${dir}${file}: ${(e as Error).message})`);
  }
  const curve = parseVidurMlpCsv(text, file);
  const s = curve.shape;
  if (s.dModel !== model.dModel || s.heads !== model.heads || s.kvHeads !== model.kvHeads || s.mlpHidden !== model.mlpHidden) {
    throw new EngineSpecError(`${file} was measured on another model shape (d_model ${s.dModel}, heads ${s.heads}/${s.kvHeads}, MLP ${s.mlpHidden}) than preset ${model.name}`);
  }
  curves.set(key, curve);
  return curve;
}

/**
 * The engine of `gpu/model`.
 * @throws EngineSpecError for an unknown preset or a pair that does not fit in memory
 */
export function loadEngine(id: string, o: EngineOptions = {}): EngineModel {
  const { gpu, model } = parseServerId(id);
  try {
    checkFits(gpu, model, o);
  } catch (e) {
    throw new EngineSpecError((e as Error).message);
  }
  return engineModel(gpu, model, linearCurveOf(gpu, model), o);
}

/** Every pair that fits, as `gpu/model`. */
export function servableServerIds(): string[] {
  const out: string[] = [];
  for (const g of GPU_NAMES) {
    for (const m of MODEL_NAMES) {
      try {
        loadEngine(`${g}/${m}`);
        out.push(`${g}/${m}`);
      } catch {
        // not servable (does not fit, or no measured operator file)
      }
    }
  }
  return out;
}
