/**
 * The paced runner (inference/paced-runner.ts) on a fake inner runner and a fake clock: each
 * pass is held until the engine's modelled time × the time scale, measured from the pass's
 * start; a pass whose compute overran is reported late and not held; the logits are the inner
 * runner's, untouched.
 */
import { expect } from 'chai';
import { enginePassCurveMs, enginePassMs } from '../../inference/cost-model-runner.ts';
import { PacedRunner, type PacedPass } from '../../inference/paced-runner.ts';
import type { DecoderRunner, ForwardItem, KvCacheHandle, ModelInfo } from '../../inference/types.ts';
import { loadEngine } from '../../physics/engines.ts';

const INFO: ModelInfo = { name: 'fake', vocabSize: 4, maxPositions: 64, numLayers: 1, numHeads: 1, numKvHeads: 1, headDim: 2, hiddenSize: 2, eosTokenId: null, bosTokenId: null };

function fakeCache(): KvCacheHandle & { grow(n: number): void } {
  let length = 0;
  return {
    get length() {
      return length;
    },
    get bytes() {
      return length * 8;
    },
    rollback(l: number) {
      length = l;
    },
    grow(n: number) {
      length += n;
    },
  };
}

/** A runner whose pass takes `computeMs` on the fake clock and returns each item's token ids as logits. */
function fakeInner(clock: { t: number }, computeMs: () => number): DecoderRunner & { disposed: boolean } {
  return {
    info: INFO,
    disposed: false,
    newCache: fakeCache,
    async forward(items: ForwardItem[]) {
      clock.t += computeMs();
      return items.map((it) => {
        (it.cache as ReturnType<typeof fakeCache>).grow(it.tokens.length);
        return Float32Array.from(it.tokens);
      });
    },
    async dispose() {
      this.disposed = true;
    },
  };
}

describe('paced runner', () => {
  const engine = loadEngine('a100-80gb/34b');

  it('holds a pass until its modelled time × the time scale, from the pass start, with the inner logits', async () => {
    const clock = { t: 1_000 };
    const slept: number[] = [];
    const passes: PacedPass[] = [];
    const inner = fakeInner(clock, () => 2);
    const runner = new PacedRunner(inner, { engine, timeScale: 0.5, now: () => clock.t, sleep: async (ms) => void (slept.push(ms), (clock.t += ms)), onPass: (p) => passes.push(p) });
    const caches = [runner.newCache(), runner.newCache()];
    (caches[1] as ReturnType<typeof fakeCache>).grow(40);
    const items = [
      { cache: caches[0], tokens: [1, 2, 3] },
      { cache: caches[1], tokens: [3] },
    ];
    // The modelled time is of the members as they enter the pass (before forward grows their caches).
    const expectedMs = enginePassMs(engine, items) * 0.5;
    expect(expectedMs).to.be.greaterThan(2);
    const start = clock.t;
    const logits = await runner.forward(items);
    expect(logits.map((l) => Array.from(l))).to.deep.equal([[1, 2, 3], [3]]);
    expect(clock.t - start).to.be.closeTo(expectedMs, 1e-9);
    expect(slept).to.have.length(1);
    expect(slept[0]).to.be.closeTo(expectedMs - 2, 1e-9);
    expect(passes).to.deep.equal([{ pacedMs: expectedMs, computeMs: 2, late: false }]);
  });

  it('reports a pass whose compute overran its paced time as late, and does not hold it', async () => {
    const clock = { t: 0 };
    const slept: number[] = [];
    let compute = 1_000;
    const passes: PacedPass[] = [];
    const runner = new PacedRunner(fakeInner(clock, () => compute), { engine, timeScale: 0.1, now: () => clock.t, sleep: async (ms) => void slept.push(ms), onPass: (p) => passes.push(p) });
    const item = () => ({ cache: runner.newCache(), tokens: [1] });
    const pacedMs = enginePassMs(engine, [item()]) * 0.1;
    await runner.forward([item()]);
    compute = 0;
    await runner.forward([item()]);
    expect(slept).to.have.length(1);
    expect(passes.map((p) => p.late)).to.deep.equal([true, false]);
    expect(passes[0].computeMs - passes[0].pacedMs, 'the late pass overran by').to.be.closeTo(1_000 - pacedMs, 1e-9);
  });

  it('reports the engine curve on the run clock, lays passes out token-flat, disposes the inner runner, and refuses a time scale of 0', async () => {
    const clock = { t: 0 };
    const inner = fakeInner(clock, () => 0);
    const runner = new PacedRunner(inner, { engine, timeScale: 0.25, now: () => clock.t, sleep: async () => {} });
    expect(runner.passLayout).to.equal('varlen');
    expect(runner.passCurveMs()).to.deep.equal(enginePassCurveMs(engine).map((ms) => ms * 0.25));
    await runner.dispose();
    expect(inner.disposed).to.equal(true);
    expect(() => new PacedRunner(inner, { engine, timeScale: 0 })).to.throw(RangeError, /time scale > 0/);
  });
});
