/**
 * Loads any Hugging Face `tokenizer.json` (with its `tokenizer_config.json` when present)
 * through `@huggingface/tokenizers`, behind a small interface the rest of wisp uses.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { TokenizerLoadError } from './errors.ts';

/** A loaded tokenizer: text ↔ token ids. */
export interface WispTokenizer {
  /** Encodes text to ids (no special tokens added). */
  encode(text: string): number[];
  /** Decodes ids to text (special tokens kept, spacing untouched). */
  decode(ids: number[]): string;
  /** One past the largest id the tokenizer can produce (vocabulary + added tokens). */
  readonly vocabSize: number;
  /** The end-of-sequence id from tokenizer_config.json's `eos_token`, or null. */
  readonly eosTokenId: number | null;
}

/** Keys @huggingface/tokenizers reads without checking; absent ones must be present as null. */
const TOP_LEVEL_KEYS = ['added_tokens', 'normalizer', 'pre_tokenizer', 'post_processor', 'decoder'] as const;

async function readJson(path: string, required: boolean): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !required) return null;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new TokenizerLoadError(path, 'file not found');
    throw new TokenizerLoadError(path, (err as Error).message);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new TokenizerLoadError(path, `not valid JSON (${(err as Error).message})`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new TokenizerLoadError(path, 'expected a JSON object');
  }
  return value as Record<string, unknown>;
}

/** The content of a special-token entry in tokenizer_config.json (string or AddedToken object). */
function tokenContent(entry: unknown): string | null {
  if (typeof entry === 'string') return entry;
  if (entry && typeof entry === 'object' && typeof (entry as { content?: unknown }).content === 'string') {
    return (entry as { content: string }).content;
  }
  return null;
}

/**
 * Loads the tokenizer in `dir` (`tokenizer.json`, optional `tokenizer_config.json`).
 * @throws TokenizerLoadError naming the file when it is missing, not JSON, or not a tokenizer.
 */
export async function loadTokenizer(dir: string): Promise<WispTokenizer> {
  const jsonPath = join(dir, 'tokenizer.json');
  const tokenizerJson = (await readJson(jsonPath, true))!;
  const config = (await readJson(join(dir, 'tokenizer_config.json'), false)) ?? {};
  if (!tokenizerJson.model || typeof tokenizerJson.model !== 'object') {
    throw new TokenizerLoadError(jsonPath, 'no "model" object');
  }
  for (const key of TOP_LEVEL_KEYS) if (!(key in tokenizerJson)) tokenizerJson[key] = key === 'added_tokens' ? [] : null;
  // Keep decoded text exactly as tokenised unless the config explicitly asks for clean-up.
  const effectiveConfig = { ...config, clean_up_tokenization_spaces: config.clean_up_tokenization_spaces === true };
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tokenizerJson, effectiveConfig);
  } catch (err) {
    throw new TokenizerLoadError(jsonPath, (err as Error).message);
  }
  let maxId = -1;
  for (const id of tok.get_vocab(true).values()) if (id > maxId) maxId = id;
  const eosText = tokenContent(config.eos_token);
  const eosTokenId = eosText === null ? null : (tok.token_to_id(eosText) ?? null);
  return {
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    // The library refuses an empty id list; an empty sequence is simply empty text.
    decode: (ids) => (ids.length === 0 ? '' : tok.decode(ids, { skip_special_tokens: false })),
    vocabSize: maxId + 1,
    eosTokenId,
  };
}
