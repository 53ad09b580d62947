/**
 * Shared types of the inference core. Everything that runs a model (the verifier worker,
 * the emulated edge device, `wisp generate`, the benchmarks) talks to a decoder through
 * these interfaces, so the runner can be swapped (ONNX, cost-model) without touching callers.
 */

/** Dimensions of a decoder, read from its config.json and ONNX metadata. */
export interface ModelInfo {
  /** Folder name or config `_name_or_path`; used to match draft/target pairs and requests. */
  name: string;
  vocabSize: number;
  numLayers: number;
  numHeads: number;
  /** Key/value heads (< numHeads under grouped-query attention). */
  numKvHeads: number;
  headDim: number;
  hiddenSize: number;
  /** Longest context (prompt + generated) the model accepts, in tokens. */
  maxPositions: number;
  eosTokenId: number | null;
  bosTokenId: number | null;
}

/** One session's key/value cache. `length` counts tokens already processed. */
export interface KvCacheHandle {
  readonly length: number;
  /** Memory held by the cache's tensors, in bytes. */
  readonly bytes: number;
  /** Forget every position at or after `length` (used after rejected draft tokens). */
  rollback(length: number): void;
}

/** One session's share of a batched forward pass: `tokens` are appended to `cache`. */
export interface ForwardItem {
  cache: KvCacheHandle;
  tokens: number[];
}

/** A decoder that runs batched incremental forward passes over per-session caches. */
export interface DecoderRunner {
  readonly info: ModelInfo;
  /** How a pass is laid out (padded to its longest member, or token-flat); default padded. The scheduler's estimator family follows. */
  readonly passLayout?: 'padded' | 'varlen';
  /** A runner that knows its server's cost: the pass-time curve the scheduler's token budget is derived from (policies/pass-budget.ts). */
  passCurveMs?(): number[] | undefined;
  newCache(): KvCacheHandle;
  /**
   * Runs all items in one batch (padding and masks inside). For each item returns its
   * logits, `tokens.length × vocabSize`, row-major, and appends the tokens to its cache.
   */
  forward(items: ForwardItem[]): Promise<Float32Array[]>;
  dispose(): Promise<void>;
}

/** Sampling settings; temperature 0 means greedy. */
export interface SamplingParams {
  temperature: number;
  topP: number;
  seed: number;
}

/** A draft token's distribution as sent over the wire: the draft's renormalised top-k. */
export interface SparseDist {
  ids: number[];
  probs: number[];
}

/** Outcome of verifying one request's draft. */
export interface VerifyOutcome {
  /** How many draft tokens were accepted (a prefix). */
  accepted: number;
  /** The target's own token after the accepted prefix: the correction, or the bonus token. */
  token: number;
}
