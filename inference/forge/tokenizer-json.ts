/**
 * Writes a trained byte-level BPE as Hugging Face `tokenizer.json` + `tokenizer_config.json`
 * objects in the GPT-2 shape, which `@huggingface/tokenizers` and the Rust library both load.
 */
import type { BpeModel } from './bpe-trainer.ts';

/** The forged tokenizer's end-of-text token (also used as BOS, as in GPT-2). */
export const EOS_TOKEN = '<|endoftext|>';

/** The two files' contents, plus the EOS id (the last id). */
export interface TokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  eosTokenId: number;
  /** Number of ids the tokenizer can produce (bytes + merges + EOS). */
  vocabSize: number;
}

/** Builds the tokenizer files for `bpe`; EOS takes the id after the last merge. */
export function buildTokenizerFiles(bpe: BpeModel, maxLength: number): TokenizerFiles {
  const vocab: Record<string, number> = {};
  bpe.tokens.forEach((t, i) => {
    vocab[t] = i;
  });
  const eosTokenId = bpe.tokens.length;
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      { id: eosTokenId, content: EOS_TOKEN, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: { ...byteLevel, trim_offsets: false },
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: bpe.merges.map(([a, b]) => `${a} ${b}`),
    },
  };
  const tokenizerConfig = {
    tokenizer_class: 'GPT2Tokenizer',
    add_prefix_space: false,
    bos_token: EOS_TOKEN,
    eos_token: EOS_TOKEN,
    unk_token: EOS_TOKEN,
    pad_token: null,
    model_max_length: maxLength,
    // Without this the JS library rewrites spacing on decode ("Hello , world" → "Hello, world").
    clean_up_tokenization_spaces: false,
    added_tokens_decoder: {
      [String(eosTokenId)]: { content: EOS_TOKEN, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true },
    },
  };
  return { tokenizerJson, tokenizerConfig, eosTokenId, vocabSize: eosTokenId + 1 };
}
