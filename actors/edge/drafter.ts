/**
 * Drafting on an emulated edge device: the draft model proposes tokens one at a time, the
 * speculation controller decides when to stop, and each token takes at least the device
 * profile's time per token (the real compute here is far faster than a Jetson's or a Pi's).
 */
import type { DecoderRunner, KvCacheHandle, SamplingParams, SparseDist } from '../../inference/types.ts';
import { rngFor } from '../../inference/rng.ts';
import { DEFAULT_DRAFT_TOP_K, sampleDraftToken } from '../../inference/sampling.ts';
import type { DraftInput, DraftOutput } from '../../machines/edge-session.ts';
import type { DraftTokenFeatures } from '../../policies/types.ts';

/** The controller as the drafter sees it (WISP's learned predictor or SLED's threshold). */
export interface DraftStopRule {
  /** Predicted probability that this token is accepted (given the earlier ones were). */
  predict(features: DraftTokenFeatures): number;
  /** True when drafting should stop instead of keeping this token (its prediction is too low, or K_max). */
  shouldStop(prediction: number, features: DraftTokenFeatures): boolean;
}

/** One session's draft-side cache and the tokens it holds (to find the common prefix). */
export interface DraftSessionState {
  cache: KvCacheHandle;
  tokens: number[];
}

export interface DrafterDeps {
  runner: DecoderRunner;
  sampling: SamplingParams;
  stopRule: DraftStopRule;
  /** Emulated device time per drafted token, ms (already multiplied by timeScale). */
  paceMsPerToken: number;
  /** Waits `ms` (real timers live; simulated elsewhere). */
  sleep: (ms: number) => Promise<void>;
  now: () => number;
  topK?: number;
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** Drafts up to `input.maxDraft` tokens on top of `input.context`. */
export async function draftRound(state: DraftSessionState, input: DraftInput, deps: DrafterDeps, eosTokenId: number | null): Promise<DraftOutput> {
  const out: DraftOutput = { tokens: [], predictedAcceptance: [], features: [], draftMsPerToken: [] };
  if (input.maxDraft <= 0) return out;
  const dists: SparseDist[] = [];
  // Reuse what the cache already holds of this context; roll back what the target rejected.
  const keep = commonPrefix(state.tokens, input.context);
  if (state.cache.length > keep) state.cache.rollback(keep);
  state.tokens.length = Math.min(state.tokens.length, keep);
  let pending = input.context.slice(state.cache.length);
  const V = deps.runner.info.vocabSize;
  for (let j = 0; j < input.maxDraft; j++) {
    const started = deps.now();
    const [logits] = await deps.runner.forward([{ cache: state.cache, tokens: pending }]);
    state.tokens.push(...pending);
    const position = input.context.length + j;
    const s = sampleDraftToken(logits.subarray(logits.length - V), deps.sampling, deps.topK ?? DEFAULT_DRAFT_TOP_K, rngFor(deps.sampling.seed, position, 'draft'));
    const features: DraftTokenFeatures = { ...s.features, position: j };
    const prediction = deps.stopRule.predict(features);
    const spent = deps.now() - started;
    if (spent < deps.paceMsPerToken) await deps.sleep(deps.paceMsPerToken - spent);
    const tokenMs = Math.max(spent, deps.paceMsPerToken);
    // The controller predicts this token would be rejected: drop it and stop (its time is wasted).
    if (deps.stopRule.shouldStop(prediction, features)) {
      out.discardedDraftMs = (out.discardedDraftMs ?? 0) + tokenMs;
      break;
    }
    out.tokens.push(s.token);
    out.features.push(features);
    out.predictedAcceptance.push(prediction);
    out.draftMsPerToken.push(tokenMs);
    dists.push(s.dist);
    if (eosTokenId !== null && s.token === eosTokenId) break; // nothing after EOS can be committed
    pending = [s.token];
  }
  if (deps.sampling.temperature > 0) out.dists = dists;
  return out;
}
