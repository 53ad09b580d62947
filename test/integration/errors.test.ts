/**
 * Requests the system cannot serve come back to the client as clear, typed errors (real broker,
 * Redis, forged tiny models): a prompt longer than the target's context, and a request for a
 * model no worker serves. A good session running beside them is unaffected.
 */
import { expect } from 'chai';
import { ensureModelPair, PRESET_DIMS } from '../../inference/forge/index.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import { generateTarget } from '../../inference/speculative.ts';
import { TEST_PROMPTS, startTestSystem, targetTokens, type TestSystem } from '../helpers/system.ts';

describe('errors back to the client', function () {
  this.timeout(60_000);
  let sys: TestSystem;
  const maxPositions = PRESET_DIMS.tiny.maxPositions;
  let modelName: string;

  before(async () => {
    sys = await startTestSystem({ devices: 3, workers: 1 });
    const pair = await ensureModelPair('tiny');
    const target = await loadDecoder(pair.targetDir, { threads: 1 });
    modelName = target.info.name;
    await target.dispose();
  });
  after(async () => {
    await sys?.stop();
  });

  it('a prompt longer than the context: prompt_too_long, naming both lengths', async () => {
    const promptTokens = Array.from({ length: maxPositions + 40 }, (_, i) => 10 + (i % 500));
    const r = await sys.client.submit({ promptTokens, maxNewTokens: 8 }, 20_000);
    expect(r.error?.code, JSON.stringify(r.error)).to.equal('prompt_too_long');
    expect(r.error?.message).to.include(`${maxPositions + 40} tokens`).and.include(`${maxPositions}-token context`);
    expect(r.tokens).to.deep.equal([]);
  });

  it('a prompt exactly as long as the context is refused too (no room for a token)', async () => {
    const promptTokens = Array.from({ length: maxPositions }, (_, i) => 10 + (i % 500));
    const r = await sys.client.submit({ promptTokens, maxNewTokens: 8 }, 20_000);
    expect(r.error?.code, JSON.stringify(r.error)).to.equal('prompt_too_long');
  });

  it('a prompt that fills the context up to its last slot ends with the target-only tokens', async () => {
    // Room for exactly 2 tokens: generation stops at the context as generateTarget does.
    const promptTokens = Array.from({ length: maxPositions - 2 }, (_, i) => 10 + ((i * 7) % 500));
    const pair = await ensureModelPair('tiny');
    const target = await loadDecoder(pair.targetDir, { threads: 1 });
    let want: number[];
    try {
      want = (await generateTarget(target, promptTokens, { maxNewTokens: 8, sampling: { temperature: 0, topP: 1, seed: 0 }, eosTokenId: target.info.eosTokenId })).tokens;
    } finally {
      await target.dispose();
    }
    const r = await sys.client.submit({ promptTokens, maxNewTokens: 8 }, 20_000);
    expect(r.error, JSON.stringify(r.error)).to.equal(null);
    expect(r.tokens).to.deep.equal(want);
  });

  it('a model no worker serves: unknown_model, naming what is served; a good session beside it finishes', async () => {
    const [expected] = await targetTokens([TEST_PROMPTS[0]], 12);
    const [bad, good] = await Promise.all([
      sys.client.submit({ prompt: TEST_PROMPTS[1], maxNewTokens: 12, model: 'no-such-model' }, 20_000),
      sys.client.submit({ prompt: TEST_PROMPTS[0], maxNewTokens: 12 }, 20_000),
    ]);
    expect(bad.error?.code, JSON.stringify(bad.error)).to.equal('unknown_model');
    expect(bad.error?.message).to.include('"no-such-model"').and.include(modelName);
    expect(good.error).to.equal(null);
    expect(good.tokens).to.deep.equal(expected);
  });

  it('the model the workers serve, asked for by name, is served', async () => {
    const [expected] = await targetTokens([TEST_PROMPTS[2]], 8);
    const r = await sys.client.submit({ prompt: TEST_PROMPTS[2], maxNewTokens: 8, model: modelName }, 20_000);
    expect(r.error, JSON.stringify(r.error)).to.equal(null);
    expect(r.tokens).to.deep.equal(expected);
  });
});
