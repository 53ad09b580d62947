import { WispError } from '../common/errors.ts';
/**
 * Typed errors of the inference core (model folders, tokenizers, runners, the forge).
 * Each has a stable `code` and a message that names the problem and, where there is one, the path.
 */

/** The inference core's errors (common/errors.ts WispError, snake_case codes). */
export class InferenceError extends WispError {}

/** The model folder does not exist or is not a folder. */
export class ModelDirNotFoundError extends InferenceError {
  constructor(readonly path: string) {
    super('model_dir_not_found', `model folder not found: ${path}`);
  }
}

/** A file the model folder must hold is missing (model.onnx, config.json, tokenizer.json). */
export class ModelFileMissingError extends InferenceError {
  constructor(readonly path: string, what: string) {
    super('model_file_missing', `${what} missing: ${path}`);
  }
}

/** config.json is not valid JSON, lacks a field, or has a field of the wrong kind. */
export class ModelConfigError extends InferenceError {
  constructor(readonly path: string, problem: string) {
    super('model_config_invalid', `invalid model config ${path}: ${problem}`);
  }
}

/** The ONNX graph lacks an input or output the decoder layout needs, or has one of the wrong shape. */
export class ModelGraphError extends InferenceError {
  constructor(readonly path: string, problem: string) {
    super('model_graph_invalid', `invalid decoder graph ${path}: ${problem}`);
  }
}

/** tokenizer.json / tokenizer_config.json could not be read or parsed. */
export class TokenizerLoadError extends InferenceError {
  constructor(readonly path: string, problem: string) {
    super('tokenizer_invalid', `cannot load tokenizer ${path}: ${problem}`);
  }
}

/** The tokenizer produces ids the model has no logits for (or a different EOS). */
export class TokenizerMismatchError extends InferenceError {
  constructor(problem: string) {
    super('tokenizer_mismatch', `tokenizer does not match the model: ${problem}`);
  }
}

/** A sequence would not fit the model's context (prompt + cache + new tokens > max positions). */
export class ContextOverflowError extends InferenceError {
  constructor(readonly length: number, readonly maxPositions: number, readonly model: string) {
    super(
      'prompt_too_long',
      `context overflow: ${length} tokens exceed the ${maxPositions}-token context of model ${model}`,
    );
  }
}

/** A token id outside the model's vocabulary was fed to the runner. */
export class TokenOutOfVocabError extends InferenceError {
  constructor(readonly tokenId: number, readonly vocabSize: number) {
    super('token_out_of_vocab', `token id ${tokenId} is outside the vocabulary (0..${vocabSize - 1})`);
  }
}

/** A cache handle was used with a runner that did not create it, after dispose, or rolled back past its end. */
export class CacheMisuseError extends InferenceError {
  constructor(problem: string) {
    super('cache_misuse', `kv cache misuse: ${problem}`);
  }
}

/** Invalid forge options (agreement out of range, draft depth ≥ layers, bad GQA split…). */
export class ForgeOptionsError extends InferenceError {
  constructor(problem: string) {
    super('forge_options_invalid', `invalid forge options: ${problem}`);
  }
}
