import { expect } from 'chai';
import { CostModelRunner, fakeNextToken } from '../../inference/cost-model-runner.ts';
import { argmax } from '../../inference/sampling.ts';
import type { ModelInfo } from '../../inference/types.ts';
import { loadEngine } from '../../physics/engines.ts';
import { passCost, prefillMember, verifyMember } from '../../physics/pass-cost.ts';
import { createEstimatorState, predictBatchMs } from '../../policies/estimator.ts';

const info: ModelInfo = { name: 'fake', vocabSize: 1024, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 8, hiddenSize: 32, maxPositions: 256, eosTokenId: 1023, bosTokenId: null };

describe('CostModelRunner (models.costModel)', () => {
  it('is a causal, deterministic model: logits depend only on the tokens before, in one pass or many', async () => {
    const runner = new CostModelRunner({ info, timeScale: 0 });
    const tokens = [5, 900, 17, 3, 3, 256];
    const whole = runner.newCache();
    const [all] = await runner.forward([{ cache: whole, tokens }]);
    const pieces = runner.newCache();
    const rows: number[] = [];
    for (const t of tokens) {
      const [row] = await runner.forward([{ cache: pieces, tokens: [t] }]);
      rows.push(argmax(row));
    }
    const V = info.vocabSize;
    tokens.forEach((t, j) => {
      const peak = argmax(all.subarray(j * V, (j + 1) * V));
      expect(peak).to.equal(rows[j]);
      expect(peak).to.equal(fakeNextToken(t, j, V, info.eosTokenId));
      expect(peak).to.be.within(0, V - 1);
      expect(peak).to.not.equal(info.eosTokenId);
    });
    expect(whole.length).to.equal(tokens.length);
    expect(whole.bytes).to.equal(tokens.length * info.numLayers * 2 * info.numKvHeads * info.headDim * 4);
    whole.rollback(2);
    expect(whole.length).to.equal(2);
    expect(() => whole.rollback(3)).to.throw(/cannot roll back to 3/);
  });

  it("sleeps the estimator's prediction for the batch, times the scale", async () => {
    const slept: number[] = [];
    const runner = new CostModelRunner({ info, timeScale: 0.5, sleep: async (ms) => void slept.push(ms) });
    const a = runner.newCache();
    const b = runner.newCache();
    await runner.forward([{ cache: a, tokens: [1, 2, 3] }, { cache: b, tokens: [4] }]);
    const prefill = predictBatchMs(createEstimatorState(), [{ n: 3, L: 0 }, { n: 1, L: 0 }]);
    await runner.forward([{ cache: a, tokens: [7, 8] }, { cache: b, tokens: [9] }]);
    const verify = predictBatchMs(createEstimatorState(), [{ n: 2, L: 3 }, { n: 1, L: 1 }]);
    expect(slept).to.deep.equal([prefill * 0.5, verify * 0.5]);
    expect(runner.sleptMs).to.be.closeTo((prefill + verify) * 0.5, 1e-9);
  });

  it('with an engine, sleeps the serving-engine cost model\'s pass time and says it lays passes out token-flat', async () => {
    const engine = loadEngine('a100-80gb/34b');
    const slept: number[] = [];
    const runner = new CostModelRunner({ info, timeScale: 0.5, engine, sleep: async (ms) => void slept.push(ms) });
    expect(runner.passLayout).to.equal('varlen');
    expect(new CostModelRunner({ info, timeScale: 0 }).passLayout).to.equal('padded');
    const a = runner.newCache();
    const b = runner.newCache();
    await runner.forward([{ cache: a, tokens: [1, 2, 3] }, { cache: b, tokens: [4] }]);
    await runner.forward([{ cache: a, tokens: [7, 8] }, { cache: b, tokens: [9] }]);
    const prefill = passCost(engine, [prefillMember(3), prefillMember(1)]).ms;
    const verify = passCost(engine, [verifyMember(2, 3), verifyMember(1, 1)]).ms;
    expect(slept).to.deep.equal([prefill * 0.5, verify * 0.5]);
  });

  it('refuses a cache made by another runner', async () => {
    const runner = new CostModelRunner({ info, timeScale: 0 });
    const foreign = { length: 0, bytes: 0, rollback: () => {} };
    let error: Error | null = null;
    await runner.forward([{ cache: foreign, tokens: [1] }]).catch((e: Error) => (error = e));
    expect(error).to.match(/another runner/);
  });
});
