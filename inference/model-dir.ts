/**
 * Checks a decoder model folder before anything loads it: the folder, `model.onnx`, a complete
 * `config.json`, and (once the graph is open) the inputs/outputs of the Optimum decoder layout.
 * Every failure is a typed error that names the problem and the path.
 */
import { readFile, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { z } from 'zod';
import {
  ContextOverflowError,
  ModelConfigError,
  ModelDirNotFoundError,
  ModelFileMissingError,
  ModelGraphError,
  TokenizerMismatchError,
} from './errors.ts';
import type { ModelInfo } from './types.ts';

const positiveInt = z.number().int().positive();
const tokenIdField = z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative()).min(1), z.null()]).optional();

/** The config.json fields wisp reads (HF names, with GPT-2's aliases accepted). */
const ConfigSchema = z
  .object({
    _name_or_path: z.string().optional(),
    vocab_size: positiveInt,
    num_hidden_layers: positiveInt,
    num_attention_heads: positiveInt,
    num_key_value_heads: positiveInt.optional(),
    hidden_size: positiveInt,
    head_dim: positiveInt.optional(),
    max_position_embeddings: positiveInt,
    eos_token_id: tokenIdField,
    bos_token_id: tokenIdField,
  })
  .passthrough();

/** GPT-2 style config names → the HF names above. */
const ALIASES: Record<string, string> = {
  n_layer: 'num_hidden_layers',
  n_head: 'num_attention_heads',
  n_embd: 'hidden_size',
  n_positions: 'max_position_embeddings',
};

/** A validated model folder. */
export interface ModelDir {
  dir: string;
  modelPath: string;
  configPath: string;
  /** Dimensions from config.json (numKvHeads/headDim may still be refined from the graph). */
  info: ModelInfo;
  /** The raw parsed config.json. */
  config: Record<string, unknown>;
}

function firstId(v: number | number[] | null | undefined): number | null {
  if (v === undefined || v === null) return null;
  return Array.isArray(v) ? v[0] : v;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/**
 * Validates `dir` as a decoder folder and reads its config.json.
 * @throws ModelDirNotFoundError, ModelFileMissingError, ModelConfigError
 */
export async function readModelDir(dir: string): Promise<ModelDir> {
  const abs = resolve(dir);
  try {
    if (!(await stat(abs)).isDirectory()) throw new ModelDirNotFoundError(abs);
  } catch (err) {
    if (err instanceof ModelDirNotFoundError) throw err;
    throw new ModelDirNotFoundError(abs);
  }
  const configPath = join(abs, 'config.json');
  const modelPath = join(abs, 'model.onnx');
  if (!(await isFile(configPath))) throw new ModelFileMissingError(configPath, 'config.json');
  if (!(await isFile(modelPath))) throw new ModelFileMissingError(modelPath, 'model.onnx');
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(configPath, 'utf8'));
  } catch (err) {
    throw new ModelConfigError(configPath, `not valid JSON (${(err as Error).message})`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ModelConfigError(configPath, 'expected a JSON object');
  const config = { ...(raw as Record<string, unknown>) };
  for (const [alias, name] of Object.entries(ALIASES)) if (config[name] === undefined && config[alias] !== undefined) config[name] = config[alias];
  const parsed = ConfigSchema.safeParse(config);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue.path.join('.') || '(root)';
    const problem = config[field] === undefined ? `missing field ${field}` : `field ${field}: ${issue.message}`;
    throw new ModelConfigError(configPath, problem);
  }
  const c = parsed.data;
  const numKvHeads = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % numKvHeads !== 0) {
    throw new ModelConfigError(configPath, `num_key_value_heads ${numKvHeads} does not divide num_attention_heads ${c.num_attention_heads}`);
  }
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(headDim)) throw new ModelConfigError(configPath, `hidden_size ${c.hidden_size} is not a multiple of num_attention_heads ${c.num_attention_heads} and head_dim is absent`);
  const info: ModelInfo = {
    name: c._name_or_path && c._name_or_path.length > 0 ? c._name_or_path : basename(abs),
    vocabSize: c.vocab_size,
    numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads,
    numKvHeads,
    headDim,
    hiddenSize: c.hidden_size,
    maxPositions: c.max_position_embeddings,
    eosTokenId: firstId(c.eos_token_id),
    bosTokenId: firstId(c.bos_token_id),
  };
  return { dir: abs, modelPath, configPath, info, config };
}

/** What the runner found in the graph. */
export interface DecoderGraphLayout {
  hasPositionIds: boolean;
  hasUseCacheBranch: boolean;
  /** Key/value heads and head size as declared by the past inputs (null when symbolic). */
  pastKvHeads: number | null;
  pastHeadDim: number | null;
}

/** An input's or output's name and shape as ORT reports it (string dims are symbolic). */
export interface GraphValue {
  name: string;
  shape?: ReadonlyArray<number | string>;
}

/**
 * Checks a graph's inputs/outputs against the decoder layout for `numLayers` layers.
 * @throws ModelGraphError naming the first missing input/output or bad shape.
 */
export function checkDecoderGraph(modelPath: string, inputs: readonly GraphValue[], outputs: readonly GraphValue[], numLayers: number): DecoderGraphLayout {
  const inNames = new Set(inputs.map((v) => v.name));
  const outNames = new Set(outputs.map((v) => v.name));
  const need = (names: Set<string>, name: string, kind: string): void => {
    if (!names.has(name)) throw new ModelGraphError(modelPath, `missing ${kind} "${name}"`);
  };
  need(inNames, 'input_ids', 'input');
  need(inNames, 'attention_mask', 'input');
  need(outNames, 'logits', 'output');
  for (let i = 0; i < numLayers; i++) {
    for (const kv of ['key', 'value']) {
      need(inNames, `past_key_values.${i}.${kv}`, 'input');
      need(outNames, `present.${i}.${kv}`, 'output');
    }
  }
  if (inNames.has(`past_key_values.${numLayers}.key`)) {
    throw new ModelGraphError(modelPath, `graph has more layers than config.json's num_hidden_layers ${numLayers}`);
  }
  const past = inputs.find((v) => v.name === 'past_key_values.0.key');
  const shape = past?.shape;
  if (shape && shape.length !== 4) throw new ModelGraphError(modelPath, `input "past_key_values.0.key" has rank ${shape.length}, expected 4 [batch, kv_heads, past, head_dim]`);
  const known = (d: number | string | undefined): number | null => (typeof d === 'number' && d > 0 ? d : null);
  return {
    hasPositionIds: inNames.has('position_ids'),
    hasUseCacheBranch: inNames.has('use_cache_branch'),
    pastKvHeads: known(shape?.[1]),
    pastHeadDim: known(shape?.[3]),
  };
}

/**
 * Checks that a tokenizer fits a model: every id it can produce has a logit, and the EOS ids agree.
 * @throws TokenizerMismatchError
 */
export function checkTokenizerMatchesModel(tokenizer: { vocabSize: number; eosTokenId: number | null }, info: ModelInfo): void {
  if (tokenizer.vocabSize > info.vocabSize) {
    throw new TokenizerMismatchError(
      `tokenizer has ${tokenizer.vocabSize} token ids but model ${info.name} has a vocabulary of ${info.vocabSize}`,
    );
  }
  if (tokenizer.eosTokenId !== null && info.eosTokenId !== null && tokenizer.eosTokenId !== info.eosTokenId) {
    throw new TokenizerMismatchError(`tokenizer EOS id ${tokenizer.eosTokenId} differs from model ${info.name}'s eos_token_id ${info.eosTokenId}`);
  }
}

/**
 * Throws when a sequence of `length` tokens (cache + new) does not fit the model's context.
 * @throws ContextOverflowError
 */
export function assertFitsContext(info: ModelInfo, length: number): void {
  if (length > info.maxPositions) throw new ContextOverflowError(length, info.maxPositions, info.name);
}
