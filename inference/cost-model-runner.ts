/**
 * A DecoderRunner that runs no model: each forward pass sleeps for the time the serving-engine
 * cost model (physics/pass-cost.ts) gives its members — or, when no engine is given, what an
 * estimator predicts — then returns deterministic fake logits. With it a verifier worker
 * behaves, to the scheduler and the devices, like a large server model at almost no CPU cost:
 * load and fault tests run 1,000 sessions on a laptop.
 *
 * The fake model is causal and deterministic: the logits at absolute position p after token t
 * peak at `fakeNextToken(t, p)`, so `generateTarget` with this runner is the reference a
 * cost-model deployment must reproduce token for token (losslessness is still checked).
 */
import { passCost, type EngineModel } from '../physics/pass-cost.ts';
import { createEstimatorState, passMemberOf, predictBatchMs, type EstimatorState, type PassLayout } from '../policies/estimator.ts';
import { passCurveMs } from '../policies/pass-budget.ts';
import type { BatchShape } from '../policies/types.ts';
import { CacheMisuseError } from './errors.ts';
import type { DecoderRunner, ForwardItem, KvCacheHandle, ModelInfo } from './types.ts';

export interface CostModelRunnerOptions {
  /** Dimensions of the model this runner stands in for (vocabulary, KV layout, context). */
  info: ModelInfo;
  /** Predicted time is multiplied by this before sleeping (0 = no sleep). */
  timeScale: number;
  /** The serving engine whose pass time is slept (physics/engines.ts loadEngine). */
  engine?: EngineModel;
  /** Without an engine: the estimator whose prediction is slept; default the built-in padded (H200) prior. */
  estimator?: EstimatorState;
  /** How to wait, ms (tests may pass a simulated clock's sleep). */
  sleep?: (ms: number) => Promise<void>;
}

/** The serving engine's time for a pass of `items` as they stand before it runs, ms (physics/pass-cost.ts). */
export function enginePassMs(engine: EngineModel, items: readonly ForwardItem[]): number {
  if (items.length === 0) return 0;
  return passCost(engine, items.map((i) => passMemberOf({ n: i.tokens.length, L: i.cache.length }))).ms;
}

/** The engine's pass-time curve (policies/pass-budget.ts), ms. */
export function enginePassCurveMs(engine: EngineModel): number[] {
  return passCurveMs((shapes) => passCost(engine, shapes.map(passMemberOf)).ms);
}

/** Height of the peak logit; the rest of the row is 0 (greedy picks the peak, sampling mostly). */
const PEAK_LOGIT = 12;

/** The fake model's preferred token after `token` at absolute position `position`. */
export function fakeNextToken(token: number, position: number, vocabSize: number, eosTokenId: number | null): number {
  // 32-bit integer mix (murmur3 finaliser) of the pair: spread over the vocabulary, no cycles of length 1.
  let h = (Math.imul(token + 1, 0x9e3779b1) ^ Math.imul(position + 1, 0x85ebca6b)) >>> 0;
  h = (h ^ (h >>> 16)) >>> 0;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h = (h ^ (h >>> 13)) >>> 0;
  let next = h % vocabSize;
  // Sessions run to their token budget: the fake model never ends one early.
  if (next === eosTokenId) next = (next + 1) % vocabSize;
  return next;
}

/** A cache that only counts positions; its bytes are what the real model's cache would hold (float32). */
class CountingCache implements KvCacheHandle {
  #length = 0;
  constructor(private readonly bytesPerToken: number) {}
  get length(): number {
    return this.#length;
  }
  get bytes(): number {
    return this.#length * this.bytesPerToken;
  }
  rollback(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.#length) {
      throw new CacheMisuseError(`cannot roll back to ${length}: the cache holds ${this.#length} positions`);
    }
    this.#length = length;
  }
  /** @internal */
  grow(by: number): void {
    this.#length += by;
  }
}

export class CostModelRunner implements DecoderRunner {
  readonly info: ModelInfo;
  /** A serving engine lays passes out token-flat; an estimator's family says how it was measured. */
  readonly passLayout: PassLayout;
  readonly #engine: EngineModel | null;
  readonly #estimator: EstimatorState;
  readonly #timeScale: number;
  readonly #sleep: (ms: number) => Promise<void>;
  readonly #bytesPerToken: number;
  /** Model time slept so far, ms (for reports). */
  sleptMs = 0;

  constructor(opts: CostModelRunnerOptions) {
    this.info = { ...opts.info, name: opts.info.name };
    this.#engine = opts.engine ?? null;
    this.#estimator = opts.estimator ?? createEstimatorState();
    this.passLayout = this.#engine ? 'varlen' : (this.#estimator.layout ?? 'padded');
    this.#timeScale = opts.timeScale;
    this.#sleep = opts.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    const { numLayers, numKvHeads, headDim } = opts.info;
    this.#bytesPerToken = numLayers * 2 * numKvHeads * headDim * 4;
  }

  newCache(): KvCacheHandle {
    return new CountingCache(this.#bytesPerToken);
  }

  /** The engine's pass-time curve (policies/pass-budget.ts), ms before timeScale; none without an engine. */
  passCurveMs(): number[] | undefined {
    return this.#engine ? enginePassCurveMs(this.#engine) : undefined;
  }

  /** The modelled time of this pass, ms (before timeScale). */
  predictMs(items: readonly ForwardItem[]): number {
    if (this.#engine) return enginePassMs(this.#engine, items);
    const shapes: BatchShape[] = items.map((i) => ({ n: i.tokens.length, L: i.cache.length }));
    return shapes.length === 0 ? 0 : predictBatchMs(this.#estimator, shapes);
  }

  async forward(items: ForwardItem[]): Promise<Float32Array[]> {
    for (const it of items) {
      if (!(it.cache instanceof CountingCache)) throw new CacheMisuseError('a cache made by another runner was passed to the cost-model runner');
      if (it.tokens.length === 0) throw new CacheMisuseError('forward with no tokens');
    }
    const ms = this.predictMs(items) * this.#timeScale;
    if (ms > 0) {
      await this.#sleep(ms);
      this.sleptMs += ms;
    }
    const V = this.info.vocabSize;
    return items.map((it) => {
      const cache = it.cache as CountingCache;
      const start = cache.length;
      const out = new Float32Array(it.tokens.length * V);
      it.tokens.forEach((t, j) => {
        out[j * V + fakeNextToken(t, start + j, V, this.info.eosTokenId)] = PEAK_LOGIT;
      });
      cache.grow(it.tokens.length);
      return out;
    });
  }

  async dispose(): Promise<void> {}
}
