/**
 * Drafting on an emulated edge device: the draft model proposes tokens one at a time, the
 * speculation controller decides when to stop, and each token takes at least the device
 * profile's time per token (the real compute here is far faster than a Jetson's or a Pi's).
 *
 * Pipelined drafting (a switch): while a round is being verified the device keeps drafting
 * past its draft, as if everything will be accepted. The first look-ahead token is its guess
 * of the target's bonus token; when the result accepts everything and the bonus matches the
 * guess, the tokens after it open the next round's draft without waiting. Randomness is keyed
 * by sequence position, so a look-ahead token is exactly the token fresh drafting would give.
 */
import type { DecoderRunner, KvCacheHandle, SamplingParams, SparseDist } from '../../inference/types.ts';
import { rngFor } from '../../inference/rng.ts';
import { DEFAULT_DRAFT_TOP_K, sampleDraftToken } from '../../inference/sampling.ts';
import { emptyDraft, keepDraftedToken, reuseLookahead, type DraftedToken, type DraftStopRule } from '../../edge/drafting.ts';
import type { DraftInput, DraftOutput } from '../../machines/edge-session.ts';

export type { DraftStopRule };

export interface DrafterDeps {
  runner: DecoderRunner;
  sampling: SamplingParams;
  stopRule: DraftStopRule;
  /** Emulated device time per drafted token, ms (already multiplied by timeScale). */
  paceMsPerToken: number;
  /** Waits `ms` (real timers live; simulated elsewhere). */
  sleep: (ms: number) => Promise<void>;
  now: () => number;
  eosTokenId: number | null;
  topK?: number;
}

interface Lookahead {
  /** Context the look-ahead continues: committed tokens + the draft under verification. */
  base: number[];
  tokens: (DraftedToken & { dist: SparseDist })[];
  cancelled: boolean;
  done: Promise<void>;
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** One session's draft model state: its KV cache, the tokens in it, and any look-ahead. */
export class SessionDrafter {
  readonly #deps: DrafterDeps;
  readonly #cache: KvCacheHandle;
  /** Tokens the cache holds, to find what is still valid when the context changes. */
  readonly #cached: number[] = [];
  #lookahead: Lookahead | null = null;
  /** Statistics of pipelined drafting: look-ahead tokens reused and thrown away. */
  readonly pipelined = { reused: 0, discarded: 0 };

  constructor(deps: DrafterDeps) {
    this.#deps = deps;
    this.#cache = deps.runner.newCache();
  }

  /** Draft model cache memory, bytes. */
  get kvBytes(): number {
    return this.#cache.bytes;
  }

  /** Draws the token after `context` (feeding what the cache lacks), paced to the device profile. */
  async #next(context: readonly number[]): Promise<DraftedToken & { dist: SparseDist }> {
    const d = this.#deps;
    const started = d.now();
    // Re-feed at least the last context token: its logits are what the next token comes from.
    const keep = Math.min(commonPrefix(this.#cached, context), context.length - 1);
    if (this.#cache.length > keep) this.#cache.rollback(keep);
    this.#cached.length = this.#cache.length;
    const pending = context.slice(this.#cache.length);
    const [logits] = await d.runner.forward([{ cache: this.#cache, tokens: pending }]);
    this.#cached.push(...pending);
    const V = d.runner.info.vocabSize;
    const s = sampleDraftToken(logits.subarray(logits.length - V), d.sampling, d.topK ?? DEFAULT_DRAFT_TOP_K, rngFor(d.sampling.seed, context.length, 'draft'));
    const spent = d.now() - started;
    if (spent < d.paceMsPerToken) await d.sleep(d.paceMsPerToken - spent);
    // The time the token really took (a timer fires late, a busy CPU drafts slower than the
    // profile): the simulator's replay of a live run is fed these.
    return { token: s.token, dist: s.dist, features: s.features, ms: Math.max(d.now() - started, d.paceMsPerToken) };
  }

  /** Drafts up to `input.maxDraft` tokens on top of `input.context`, reusing a matching look-ahead. */
  async draftRound(input: DraftInput): Promise<DraftOutput> {
    const out = emptyDraft();
    const dists: SparseDist[] = [];
    const keep = (t: DraftedToken, position: number): boolean => keepDraftedToken(out, t, position, this.#deps.stopRule, this.#deps.eosTokenId, dists);
    const ahead = await this.#stopLookahead();
    let carryOn = input.maxDraft > 0;
    if (ahead) {
      // Usable when the target accepted the whole draft and its bonus token equals our guess.
      const base = ahead.base;
      const matches =
        input.context.length === base.length + 1 &&
        ahead.tokens.length > 0 &&
        ahead.tokens[0].token === input.context[base.length] &&
        commonPrefix(base, input.context) === base.length;
      const reuse = reuseLookahead({ count: ahead.tokens.length, totalMs: ahead.tokens.reduce((a, t) => a + t.ms, 0), matches, tokenAt: (i) => ahead.tokens[i] }, input.maxDraft, out, keep);
      carryOn = reuse.carryOn;
      out.discardedDraftMs = reuse.discardedMs;
      this.pipelined.reused += out.tokens.length;
      this.pipelined.discarded += ahead.tokens.length - out.tokens.length - (matches ? 1 : 0);
    }
    while (carryOn && out.tokens.length < input.maxDraft) {
      const t = await this.#next([...input.context, ...out.tokens]);
      carryOn = keep(t, out.tokens.length);
    }
    if (this.#deps.sampling.temperature > 0) out.dists = dists;
    return out;
  }

  /** Starts drafting past `base` (committed + draft under verification) until stopped or `limit` tokens. */
  startLookahead(base: number[], limit: number): void {
    if (this.#lookahead || limit <= 0) return;
    const la: Lookahead = { base, tokens: [], cancelled: false, done: Promise.resolve() };
    la.done = (async () => {
      while (!la.cancelled && la.tokens.length < limit) {
        const t = await this.#next([...base, ...la.tokens.map((x) => x.token)]);
        la.tokens.push(t);
        if (this.#deps.eosTokenId !== null && t.token === this.#deps.eosTokenId) break;
      }
    })().catch(() => {
      la.tokens.length = 0; // a failed look-ahead is just not used
    });
    this.#lookahead = la;
  }

  async #stopLookahead(): Promise<Lookahead | null> {
    const la = this.#lookahead;
    if (!la) return null;
    la.cancelled = true;
    await la.done;
    this.#lookahead = null;
    return la;
  }

  /** Stops any look-ahead (session over). */
  async close(): Promise<void> {
    await this.#stopLookahead();
  }
}
