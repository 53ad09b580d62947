/**
 * In-process generation: plain autoregressive decoding with the target, and speculative decoding
 * (draft proposes, target verifies) with the same KV-cache invariant as the distributed system:
 *
 * - After a prefill of the prompt the target samples the first token (the session's TTFT token).
 * - The target cache always holds `committed − 1` tokens: a round feeds
 *   `[last committed token, d1..dn]`, verifies, and rolls back the rejected positions.
 * - The draft cache holds at most `committed − 1` tokens; each round first feeds whatever
 *   committed tokens it lacks (after a fully accepted round: dn and the bonus), then drafts.
 *
 * Every random decision is keyed by (seed, absolute position, purpose) (see rng.ts), so a run is
 * reproducible. Greedy speculative output equals greedy target output token for token.
 */
import type { DecoderRunner, KvCacheHandle, ModelInfo, SamplingParams, SparseDist } from './types.ts';
import { InferenceError, TokenOutOfVocabError } from './errors.ts';
import { assertFitsContext } from './model-dir.ts';
import { rngFor } from './rng.ts';
import { DEFAULT_DRAFT_TOP_K, checkShaping, sampleDraftToken, sampleTargetToken } from './sampling.ts';
import { verifyDraft } from './verify.ts';
import type { StopReason as WireStopReason } from '../protocol/messages.ts';

export interface GenerateOptions {
  /** Upper bound on generated tokens (EOS or a full context may stop earlier). */
  maxNewTokens: number;
  sampling: SamplingParams;
  /** Stop after this token (it is included in the output). Default: none. */
  eosTokenId?: number | null;
}

export interface SpeculativeOptions extends GenerateOptions {
  /** Draft tokens per round (K). */
  draftLen: number;
  /** Size of the draft's sparse top-k under sampling (default DEFAULT_DRAFT_TOP_K). */
  topK?: number;
}

export interface GenerationStats {
  /** Verification rounds (0 for plain decoding). */
  rounds: number;
  /** Draft tokens sent to verification. */
  drafted: number;
  /** Draft tokens the target accepted. */
  accepted: number;
}

/** Why in-process generation stopped (the protocol's StopReason, less the session-level ones). */
export type StopReason = Extract<WireStopReason, 'eos' | 'length' | 'context'>;

export interface GenerationResult {
  /** Generated token ids (the prompt excluded; EOS included when it stopped generation). */
  tokens: number[];
  stats: GenerationStats;
  stopReason: StopReason;
}

/**
 * A prompt must be non-empty, in the vocabulary, and leave room for at least one generated token
 * (prompt + generated never exceeds the model's maxPositions).
 */
export function checkPrompt(promptTokens: readonly number[], info: ModelInfo): void {
  if (promptTokens.length === 0) throw new InferenceError('empty_prompt', 'prompt is empty: at least one token is needed');
  assertFitsContext(info, promptTokens.length + 1);
  for (const t of promptTokens) {
    if (!Number.isInteger(t) || t < 0 || t >= info.vocabSize) throw new TokenOutOfVocabError(t, info.vocabSize);
  }
}

function checkCommon(runner: DecoderRunner, promptTokens: readonly number[], opts: GenerateOptions): void {
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 1) {
    throw new RangeError(`maxNewTokens must be an integer >= 1, got ${opts.maxNewTokens}`);
  }
  checkShaping(opts.sampling);
  if (!Number.isSafeInteger(opts.sampling.seed) || opts.sampling.seed < 0) {
    throw new RangeError(`sampling seed must be a non-negative integer, got ${opts.sampling.seed}`);
  }
  checkPrompt(promptTokens, runner.info);
}

/** Last row of a row-major logits matrix. */
function lastRow(logits: Float32Array, vocabSize: number): Float32Array {
  return logits.subarray(logits.length - vocabSize);
}

async function feed(runner: DecoderRunner, cache: KvCacheHandle, tokens: number[]): Promise<Float32Array> {
  const [logits] = await runner.forward([{ cache, tokens }]);
  return logits;
}

/** Appends `tokens` to `out` until EOS or the token budget; returns the stop reason if it stopped. */
function commit(out: number[], tokens: readonly number[], maxNewTokens: number, eos: number | null): StopReason | null {
  for (const t of tokens) {
    out.push(t);
    if (eos !== null && t === eos) return 'eos';
    if (out.length >= maxNewTokens) return 'length';
  }
  return null;
}

/**
 * Plain autoregressive decoding with the target: one forward pass per token. The token at
 * absolute position p is `sampleTargetToken(logits, sampling, p)`.
 * The sequence (prompt + generated) never exceeds the target's maxPositions.
 */
export async function generateTarget(
  target: DecoderRunner,
  promptTokens: readonly number[],
  opts: GenerateOptions,
): Promise<GenerationResult> {
  checkCommon(target, promptTokens, opts);
  const V = target.info.vocabSize;
  const eos = opts.eosTokenId ?? null;
  const cache = target.newCache();
  const out: number[] = [];
  let position = promptTokens.length;
  let logits = await feed(target, cache, [...promptTokens]);
  for (;;) {
    const token = sampleTargetToken(lastRow(logits, V), opts.sampling, position);
    const stop = commit(out, [token], opts.maxNewTokens, eos);
    if (stop) return { tokens: out, stats: { rounds: 0, drafted: 0, accepted: 0 }, stopReason: stop };
    position++;
    if (position >= target.info.maxPositions) return { tokens: out, stats: { rounds: 0, drafted: 0, accepted: 0 }, stopReason: 'context' };
    logits = await feed(target, cache, [token]);
  }
}

/**
 * Speculative decoding in one process: each round the draft proposes up to `draftLen` tokens
 * (fewer near the token budget or at a drafted EOS), the target verifies them in one forward
 * pass (verifyDraft: greedy or rejection sampling), and the accepted prefix plus the target's
 * own token is committed. Output is exactly the target's: greedy output equals generateTarget's.
 */
export async function generateSpeculative(
  target: DecoderRunner,
  draft: DecoderRunner,
  promptTokens: readonly number[],
  opts: SpeculativeOptions,
): Promise<GenerationResult> {
  checkCommon(target, promptTokens, opts);
  if (!Number.isInteger(opts.draftLen) || opts.draftLen < 0) throw new RangeError(`draftLen must be an integer >= 0, got ${opts.draftLen}`);
  const topK = opts.topK ?? DEFAULT_DRAFT_TOP_K;
  if (!Number.isInteger(topK) || topK < 1) throw new RangeError(`topK must be an integer >= 1, got ${topK}`);
  const V = target.info.vocabSize;
  if (draft.info.vocabSize !== V) {
    throw new RangeError(`draft vocabulary (${draft.info.vocabSize}) differs from the target's (${V}); they must share a tokenizer`);
  }
  const eos = opts.eosTokenId ?? null;
  const { sampling, maxNewTokens } = opts;
  const stats: GenerationStats = { rounds: 0, drafted: 0, accepted: 0 };
  const seq = [...promptTokens];
  const out: number[] = [];

  // Prefill: the target's first token (what a worker answers to SessionOpen).
  const tCache = target.newCache();
  const prefill = await feed(target, tCache, seq);
  const first = sampleTargetToken(lastRow(prefill, V), sampling, seq.length);
  seq.push(first);
  let stop = commit(out, [first], maxNewTokens, eos);
  const dCache = draft.newCache();

  while (!stop) {
    const remaining = Math.min(maxNewTokens - out.length, target.info.maxPositions - seq.length);
    if (remaining <= 0) {
      stop = 'context';
      break;
    }
    // Room: n drafts must leave one slot for the target's token; the draft feeds committed−1+n tokens.
    const n = Math.max(0, Math.min(opts.draftLen, remaining - 1, draft.info.maxPositions - seq.length + 1));
    const drafts: number[] = [];
    const dists: SparseDist[] = [];
    let pending = seq.slice(dCache.length);
    for (let j = 0; j < n; j++) {
      const logits = await feed(draft, dCache, pending);
      const position = seq.length + j;
      const s = sampleDraftToken(lastRow(logits, V), sampling, topK, rngFor(sampling.seed, position, 'draft'));
      drafts.push(s.token);
      dists.push(s.dist);
      if (eos !== null && s.token === eos) break; // nothing after EOS can be committed
      pending = [s.token];
    }
    const committedBefore = seq.length;
    const logits = await feed(target, tCache, [seq[seq.length - 1], ...drafts]);
    const outcome = verifyDraft(drafts, dists, logits, V, sampling, committedBefore);
    stats.rounds++;
    stats.drafted += drafts.length;
    stats.accepted += outcome.accepted;
    const fresh = [...drafts.slice(0, outcome.accepted), outcome.token];
    seq.push(...fresh);
    // Invariant: both caches hold at most committed − 1 tokens.
    tCache.rollback(seq.length - 1);
    if (dCache.length > seq.length - 1) dCache.rollback(seq.length - 1);
    stop = commit(out, fresh, maxNewTokens, eos);
  }
  return { tokens: out, stats, stopReason: stop };
}
