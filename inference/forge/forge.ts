/**
 * The model forge: from a seed, writes a target decoder, its drafts (the target's first
 * layers) and a shared byte-level BPE tokenizer, in the Hugging Face Optimum ONNX layout.
 * Deterministic: the same options give byte-identical files.
 */
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { ForgeOptionsError } from '../errors.ts';
import { trainByteLevelBpe } from './bpe-trainer.ts';
import { FORGE_CORPUS, FORGE_CORPUS_PARAGRAPHS } from './corpus.ts';
import { buildDecoderOnnx } from './decoder-graph.ts';
import { imprintBigrams } from './imprint.ts';
import {
  DEFAULT_AGREEMENT,
  MAX_AGREEMENT,
  MIN_AGREEMENT,
  PRESET_DIMS,
  betaForAgreement,
  type ForgePreset,
} from './presets.ts';
import { Prng } from './prng.ts';
import { calibrateBeta } from './calibrate.ts';
import { buildTokenizerFiles, type TokenizerFiles } from './tokenizer-json.ts';
import { randomLayer, scaleBranch, type DecoderDims, type DecoderWeights } from './weights.ts';

/** Bump whenever forged bytes change, so cached model folders are re-forged. */
export const FORGE_VERSION = 3;
/** Residual branch scale of layer 0 (shared by draft and target): small, so the imprint shows. */
export const FIRST_LAYER_SCALE = 0.1;
/** Position-embedding standard deviation (relative to embedding RMS 1). */
const POSITION_STD = 0.02;
/** Bigram smoothing of the imprint: a continuation seen once scores log(1 + 1/α) over unseen ones. */
const IMPRINT_ALPHA = 2e-4;
const LAYER_NORM_EPS = 1e-5;
/** Calibration text: up to this many chunks of this many corpus tokens (bounds its cost). */
const CALIBRATION_CHUNK = 32;
const CALIBRATION_CHUNKS = 24;

/** What to forge. Everything is optional; unset fields come from the preset. */
export interface ForgeOptions {
  preset?: ForgePreset;
  seed?: number;
  /**
   * Greedy (argmax) agreement of draft-1 with the target to aim for, 0.5–0.95: β is calibrated
   * per forge so that teacher-forced agreement over the corpus lands here (±0.01 on the
   * calibration text). Along the target's own greedy text agreement is typically 0.05–0.15 lower.
   */
  agreement?: number;
  /** Sets β (the later layers' residual branch scale) directly, overriding `agreement`'s map. */
  beta?: number;
  /** Key/value heads (< heads → grouped-query attention). */
  numKvHeads?: number;
  /** Write merged decoders with a `use_cache_branch` input (Optimum's decoder_model_merged). */
  merged?: boolean;
  /** Draft depths in layers (default [1]); each becomes `draft-<depth>/`. */
  drafts?: number[];
  numLayers?: number;
  hiddenSize?: number;
  numHeads?: number;
  vocabSize?: number;
  maxPositions?: number;
  intermediateSize?: number;
}

/** The options after defaults, as recorded in forge.json. */
export interface ResolvedForgeOptions {
  preset: ForgePreset;
  seed: number;
  agreement: number;
  /** β when set directly (null: derived from `agreement`). */
  beta: number | null;
  merged: boolean;
  drafts: number[];
  dims: DecoderDims;
}

/** What a forge run wrote. */
export interface ForgeManifest {
  forgeVersion: number;
  options: ResolvedForgeOptions;
  beta: number;
  /** The calibration that chose β (null when β was given). */
  calibration: ForgeRecord['calibration'];
  outDir: string;
  targetDir: string;
  draftDirs: string[];
  /** Ids the tokenizer produces (≤ dims.vocabSize). */
  tokenizerVocabSize: number;
  eosTokenId: number;
  forgeMs: number;
}

/** The content of `<out>/forge.json`: what determines the forged bytes, then what was derived. */
export interface ForgeRecord {
  forgeVersion: number;
  options: ResolvedForgeOptions;
  corpusSha256: string;
  /** β used: `options.beta`, or calibrated from `options.agreement`. */
  beta: number;
  /** Teacher-forced agreement measured at β on the calibration text (null when β was given). */
  calibration: { agreement: number; positions: number; evaluations: number } | null;
}

function isPositiveInt(n: number): boolean {
  return Number.isInteger(n) && n > 0;
}

/**
 * Applies defaults and checks the options.
 * @throws ForgeOptionsError naming the offending option.
 */
export function resolveForgeOptions(opts: ForgeOptions = {}): ResolvedForgeOptions {
  const preset = opts.preset ?? 'tiny';
  if (!(preset in PRESET_DIMS)) throw new ForgeOptionsError(`unknown preset "${preset}" (expected tiny or small)`);
  const base = PRESET_DIMS[preset];
  const numHeads = opts.numHeads ?? base.numHeads;
  const hiddenSize = opts.hiddenSize ?? base.hiddenSize;
  const dims: DecoderDims = {
    vocabSize: opts.vocabSize ?? base.vocabSize,
    numLayers: opts.numLayers ?? base.numLayers,
    hiddenSize,
    numHeads,
    numKvHeads: opts.numKvHeads ?? numHeads,
    headDim: hiddenSize / numHeads,
    intermediateSize: opts.intermediateSize ?? 4 * hiddenSize,
    maxPositions: opts.maxPositions ?? base.maxPositions,
  };
  for (const [k, v] of Object.entries(dims)) {
    if (!isPositiveInt(v)) throw new ForgeOptionsError(`${k} must be a positive integer, got ${v}`);
  }
  if (dims.hiddenSize < 8) throw new ForgeOptionsError(`hiddenSize must be at least 8, got ${dims.hiddenSize}`);
  if (dims.vocabSize < 300 || dims.vocabSize > 65536) throw new ForgeOptionsError(`vocabSize must be in 300..65536, got ${dims.vocabSize}`);
  if (dims.numHeads % dims.numKvHeads !== 0) {
    throw new ForgeOptionsError(`numKvHeads ${dims.numKvHeads} must divide numHeads ${dims.numHeads}`);
  }
  const seed = opts.seed ?? 1;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new ForgeOptionsError(`seed must be an integer in 0..4294967295, got ${seed}`);
  const agreement = opts.agreement ?? DEFAULT_AGREEMENT;
  if (!(agreement >= MIN_AGREEMENT && agreement <= MAX_AGREEMENT)) {
    throw new ForgeOptionsError(`agreement must be in ${MIN_AGREEMENT}..${MAX_AGREEMENT}, got ${agreement}`);
  }
  const beta = opts.beta ?? null;
  if (beta !== null && !(Number.isFinite(beta) && beta >= 0 && beta <= 1)) throw new ForgeOptionsError(`beta must be in 0..1, got ${beta}`);
  const drafts = Array.from(new Set(opts.drafts ?? [1])).sort((a, b) => a - b);
  if (drafts.length === 0) throw new ForgeOptionsError('at least one draft depth is needed');
  for (const depth of drafts) {
    if (!Number.isInteger(depth) || depth < 1 || depth >= dims.numLayers) {
      throw new ForgeOptionsError(`draft depth ${depth} must be an integer in 1..${dims.numLayers - 1}`);
    }
  }
  return { preset, seed, agreement, beta, merged: opts.merged ?? false, drafts, dims };
}

/** Extra training text so the tokenizer fills its vocabulary: case variants of the corpus words, numbers. */
function tokenizerWordList(): string {
  const words = Array.from(new Set(FORGE_CORPUS.match(/\p{L}+/gu) ?? []));
  const variants = new Set<string>();
  for (const w of words) {
    const lower = w.toLowerCase();
    for (const v of [lower, lower[0].toUpperCase() + lower.slice(1), lower.toUpperCase()]) {
      variants.add(v);
      variants.add(` ${v}`);
    }
  }
  for (let i = 0; i < 1000; i++) variants.add(` ${i}`);
  return Array.from(variants).join('\n');
}

/** sha256 of the corpus, recorded so an edited corpus invalidates cached models. */
export function corpusSha256(): string {
  return createHash('sha256').update(FORGE_CORPUS).digest('hex');
}

function configJson(
  o: ResolvedForgeOptions,
  layers: number,
  role: 'target' | 'draft',
  name: string,
  eosTokenId: number,
  beta: number,
): Record<string, unknown> {
  const dm = o.dims;
  return {
    _name_or_path: name,
    architectures: ['WispForgedForCausalLM'],
    model_type: 'wisp_forged',
    vocab_size: dm.vocabSize,
    num_hidden_layers: layers,
    num_attention_heads: dm.numHeads,
    num_key_value_heads: dm.numKvHeads,
    hidden_size: dm.hiddenSize,
    head_dim: dm.headDim,
    intermediate_size: dm.intermediateSize,
    max_position_embeddings: dm.maxPositions,
    layer_norm_epsilon: LAYER_NORM_EPS,
    bos_token_id: eosTokenId,
    eos_token_id: eosTokenId,
    torch_dtype: 'float32',
    use_cache: true,
    wisp: {
      forgeVersion: FORGE_VERSION,
      preset: o.preset,
      seed: o.seed,
      agreement: o.agreement,
      beta,
      role,
      ...(role === 'draft' ? { draftDepth: layers } : {}),
      merged: o.merged,
    },
  };
}

interface ForgedTokenizer {
  files: TokenizerFiles;
  /** The corpus as imprinted: EOS, the paragraphs separated by single newlines, EOS. */
  sequence: number[];
}

// The tokenizer depends only on the vocabulary size and context: train it once per process.
const tokenizerMemo = new Map<string, ForgedTokenizer>();

function forgeTokenizer(vocabSize: number, maxPositions: number): ForgedTokenizer {
  const key = `${vocabSize}:${maxPositions}`;
  let t = tokenizerMemo.get(key);
  if (!t) {
    // Corpus pre-tokens outweigh the variant list, so corpus words merge first.
    const bpe = trainByteLevelBpe(
      [
        { text: FORGE_CORPUS, weight: 1000 },
        { text: tokenizerWordList(), weight: 1 },
      ],
      vocabSize - 1,
    );
    const files = buildTokenizerFiles(bpe, maxPositions);
    const tokenizer = new Tokenizer(files.tokenizerJson, files.tokenizerConfig);
    // Paragraphs joined by one newline (two would teach "\n" → "\n" loops); EOS only at the ends,
    // so EOS after a sentence stays rare and sessions run to their token budget, as with real models.
    const encode = (text: string): number[] => tokenizer.encode(text, { add_special_tokens: false }).ids;
    const newline = encode('\n');
    const sequence = [files.eosTokenId];
    FORGE_CORPUS_PARAGRAPHS.forEach((p, i) => sequence.push(...(i > 0 ? newline : []), ...encode(p)));
    sequence.push(files.eosTokenId);
    t = { files, sequence };
    tokenizerMemo.set(key, t);
  }
  return t;
}

/** Equal-length teacher-forcing chunks of the corpus for calibration (bounded work per evaluation). */
function calibrationChunks(sequence: number[], maxPositions: number): number[][] {
  const len = Math.min(CALIBRATION_CHUNK, maxPositions);
  const chunks: number[][] = [];
  for (let at = 0; at + len <= sequence.length; at += len) chunks.push(sequence.slice(at, at + len));
  if (chunks.length <= CALIBRATION_CHUNKS) return chunks;
  const step = chunks.length / CALIBRATION_CHUNKS;
  return Array.from({ length: CALIBRATION_CHUNKS }, (_, i) => chunks[Math.floor(i * step)]);
}

/**
 * `wisp-<preset>` plus the options that differ from the preset's defaults (so variants get
 * different model names): e.g. `wisp-tiny-s5-a0.7-kv2-merged`.
 */
export function modelNamePrefix(o: ResolvedForgeOptions): string {
  const base = resolveForgeOptions({ preset: o.preset });
  const parts = [`wisp-${o.preset}`];
  if (o.seed !== base.seed) parts.push(`s${o.seed}`);
  if (o.beta !== null) parts.push(`b${o.beta}`);
  else if (o.agreement !== base.agreement) parts.push(`a${o.agreement}`);
  for (const k of ['numLayers', 'hiddenSize', 'numHeads', 'vocabSize', 'maxPositions', 'intermediateSize'] as const) {
    if (o.dims[k] !== base.dims[k]) parts.push(`${k}${o.dims[k]}`);
  }
  if (o.dims.numKvHeads !== o.dims.numHeads) parts.push(`kv${o.dims.numKvHeads}`);
  if (o.merged) parts.push('merged');
  return parts.join('-');
}

/** Builds the tokenizer and all weights (layers ≥ 1 at branch scale 1, i.e. before β). */
function forgeWeights(o: ResolvedForgeOptions): { weights: DecoderWeights; tok: ForgedTokenizer } {
  const dims = o.dims;
  const root = new Prng(o.seed);
  const tok = forgeTokenizer(dims.vocabSize, dims.maxPositions);
  const { wte, lmHead } = imprintBigrams({
    sequence: tok.sequence,
    vocabSize: dims.vocabSize,
    hiddenSize: dims.hiddenSize,
    alpha: IMPRINT_ALPHA,
    usableVocab: tok.files.vocabSize,
    powerIterations: 1,
    prng: root.fork('imprint'),
  });
  const layers = Array.from({ length: dims.numLayers }, (_, i) =>
    randomLayer(dims, root.fork(`layer.${i}`), i === 0 ? FIRST_LAYER_SCALE : 1),
  );
  const weights: DecoderWeights = {
    dims,
    wte,
    wpe: root.fork('wpe').uniformArray(dims.maxPositions * dims.hiddenSize, POSITION_STD),
    layers,
    lnfScale: new Float32Array(dims.hiddenSize).fill(1),
    lnfBias: new Float32Array(dims.hiddenSize),
    lmHead,
  };
  return { weights, tok };
}

/**
 * Forges a target/draft pair (and any extra drafts) into `opts.outDir`:
 * `target/`, `draft-<depth>/` (model.onnx, config.json, tokenizer.json, tokenizer_config.json)
 * and `forge.json`. Overwrites files of the same names.
 * @throws ForgeOptionsError on invalid options.
 */
export async function forgeModels(opts: ForgeOptions & { outDir: string }): Promise<ForgeManifest> {
  const t0 = performance.now();
  if (endianness() !== 'LE') throw new ForgeOptionsError('the forge writes little-endian raw tensors and needs a little-endian host');
  const o = resolveForgeOptions(opts);
  const { weights, tok: forged } = forgeWeights(o);
  let beta = o.beta;
  let calibration: ForgeRecord['calibration'] = null;
  if (beta === null) {
    const c = await calibrateBeta(weights, calibrationChunks(forged.sequence, o.dims.maxPositions), o.agreement, betaForAgreement(o.agreement), LAYER_NORM_EPS);
    beta = c.beta;
    calibration = { agreement: c.agreement, positions: c.positions, evaluations: c.evaluations };
  }
  for (let i = 1; i < weights.layers.length; i++) scaleBranch(weights.layers[i], beta);
  const tok = forged.files;
  const prefix = modelNamePrefix(o);
  const tokenizerJson = JSON.stringify(tok.tokenizerJson);
  const tokenizerConfig = JSON.stringify(tok.tokenizerConfig, null, 2);
  const writeModel = async (dirName: string, layers: number, role: 'target' | 'draft'): Promise<string> => {
    const dir = join(opts.outDir, dirName);
    const name = `${prefix}-${dirName}`;
    await mkdir(dir, { recursive: true });
    const onnx = buildDecoderOnnx(weights, { numLayers: layers, merged: o.merged, name, layerNormEps: LAYER_NORM_EPS });
    await Promise.all([
      writeFile(join(dir, 'model.onnx'), onnx),
      writeFile(join(dir, 'config.json'), JSON.stringify(configJson(o, layers, role, name, tok.eosTokenId, beta), null, 2) + '\n'),
      writeFile(join(dir, 'tokenizer.json'), tokenizerJson),
      writeFile(join(dir, 'tokenizer_config.json'), tokenizerConfig + '\n'),
    ]);
    return dir;
  };
  await mkdir(opts.outDir, { recursive: true });
  const targetDir = await writeModel('target', o.dims.numLayers, 'target');
  const draftDirs: string[] = [];
  for (const depth of o.drafts) draftDirs.push(await writeModel(`draft-${depth}`, depth, 'draft'));
  const record: ForgeRecord = { forgeVersion: FORGE_VERSION, options: o, corpusSha256: corpusSha256(), beta, calibration };
  await writeFile(join(opts.outDir, 'forge.json'), JSON.stringify(record, null, 2) + '\n');
  return {
    forgeVersion: FORGE_VERSION,
    options: o,
    beta,
    calibration,
    outDir: opts.outDir,
    targetDir,
    draftDirs,
    tokenizerVocabSize: tok.vocabSize,
    eosTokenId: tok.eosTokenId,
    forgeMs: performance.now() - t0,
  };
}
