/**
 * A DecoderRunner that paces a real one to a serving engine's physics (`--pace gpu/model`): the
 * real model computes every token and its KV cache (so output stays exact, sampling included),
 * and each pass's logits are held until the engine cost model's time for that pass
 * (physics/pass-cost.ts) × the run's time scale has passed since the pass started. To the
 * scheduler, its estimator and the devices the worker then behaves like that GPU: memory-bound
 * passes, nearly free extra members up to the knee. A pass whose real compute took longer than
 * its paced time is late (it cannot be held back in time); each pass is reported (`onPass`), so a
 * run can count how faithfully it was paced (bench/live.ts).
 */
import type { EngineModel } from '../physics/pass-cost.ts';
import { enginePassCurveMs, enginePassMs } from './cost-model-runner.ts';
import type { DecoderRunner, ForwardItem, KvCacheHandle, ModelInfo } from './types.ts';

/** One paced pass: its modelled time and what the real model took, both ms on the run's clock. */
export interface PacedPass {
  pacedMs: number;
  computeMs: number;
  /** The real compute overran the paced time (the pass ended `computeMs − pacedMs` late). */
  late: boolean;
}

export interface PacedRunnerOptions {
  /** The serving engine whose pass time is kept (physics/engines.ts loadEngine). */
  engine: EngineModel;
  /** The run's time scale: paced time = engine time × timeScale (> 0). */
  timeScale: number;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  /** Called after every pass (benchmarks collect them). */
  onPass?: (pass: PacedPass) => void;
}

export class PacedRunner implements DecoderRunner {
  readonly info: ModelInfo;
  /** A serving engine lays passes out token-flat: the scheduler's estimator follows. */
  readonly passLayout = 'varlen' as const;
  readonly #inner: DecoderRunner;
  readonly #o: PacedRunnerOptions;
  readonly #now: () => number;
  readonly #sleep: (ms: number) => Promise<void>;

  /** @throws RangeError on a time scale that is not > 0 */
  constructor(inner: DecoderRunner, o: PacedRunnerOptions) {
    if (!(o.timeScale > 0) || !Number.isFinite(o.timeScale)) throw new RangeError(`pacing needs a time scale > 0, got ${o.timeScale}`);
    this.#inner = inner;
    this.#o = o;
    this.info = inner.info;
    this.#now = o.now ?? (() => performance.now());
    this.#sleep = o.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  }

  /** The engine's pass-time curve on the run's clock (the SLOs it is compared with are scaled alike). */
  passCurveMs(): number[] {
    return enginePassCurveMs(this.#o.engine).map((ms) => ms * this.#o.timeScale);
  }

  newCache(): KvCacheHandle {
    return this.#inner.newCache();
  }

  async forward(items: ForwardItem[]): Promise<Float32Array[]> {
    // The members' shapes as they enter the pass (forward appends to their caches).
    const pacedMs = enginePassMs(this.#o.engine, items) * this.#o.timeScale;
    const t0 = this.#now();
    const logits = await this.#inner.forward(items);
    const computeMs = this.#now() - t0;
    const late = computeMs > pacedMs;
    if (!late) await this.#sleep(pacedMs - computeMs);
    this.#o.onPass?.({ pacedMs, computeMs, late });
    return logits;
  }

  dispose(): Promise<void> {
    return this.#inner.dispose();
  }
}
