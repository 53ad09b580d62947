/**
 * End to end through `wisp up`'s roles (scheduler, 2 verifier workers, an edge fleet) on the
 * real RabbitMQ and Redis with the forged tiny models: every session's tokens equal what the
 * target alone produces (generateTarget, the function behind `wisp generate --mode target`).
 */
import { expect } from 'chai';
import { join } from 'node:path';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import { generateTarget } from '../../inference/speculative.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { layoutOf } from '../../policies/estimator.ts';
import { TEST_PROMPTS as PROMPTS, startTestSystem, targetTokens as referenceTokens, type TestSystem } from '../helpers/system.ts';

describe('end to end: wisp up (scheduler + 2 workers + edge fleet)', function () {
  this.timeout(120_000);
  let sys: TestSystem;
  let expected: number[][];
  const maxNewTokens = 24;

  before(async () => {
    expected = await referenceTokens(PROMPTS, maxNewTokens);
    sys = await startTestSystem({ devices: 8, workers: 2 });
  });
  after(async () => {
    await sys?.stop();
  });

  it('8 concurrent sessions produce exactly the target-only tokens', async () => {
    const results = await Promise.all(PROMPTS.map((prompt) => sys.client.submit({ prompt, maxNewTokens }, 60_000)));
    for (let i = 0; i < PROMPTS.length; i++) {
      expect(results[i].error, `prompt ${i}: ${JSON.stringify(results[i].error)}`).to.equal(null);
      expect(results[i].tokens, `prompt ${i} "${PROMPTS[i]}"`).to.deep.equal(expected[i]);
    }
    // The sessions were spread over both workers and really speculated.
    const drafted = results.reduce((a, r) => a + (r.stats?.drafted ?? 0), 0);
    expect(drafted).to.be.greaterThan(0);
    const perWorker = sys.up.workers.map((w) => w.executor()?.sessions.size ?? 0);
    expect(perWorker.every((n) => n > 0), `sessions per worker ${perWorker}`).to.equal(true);
  });

  it('says why each answer ended, as the target alone: its budget, an EOS, or the context its budget was clipped to', async () => {
    const pair = await ensureModelPair('tiny');
    const target = await loadDecoder(pair.targetDir, { threads: 1 });
    const tok = await loadTokenizer(pair.targetDir);
    try {
      const prompt = tok.encode(PROMPTS[1]);
      const greedy = { temperature: 0, topP: 1, seed: 0 };
      const short = await generateTarget(target, prompt, { maxNewTokens, sampling: greedy, eosTokenId: target.info.eosTokenId });
      // More than the 512-token context leaves room for: the device clips, and says so.
      const long = await generateTarget(target, prompt, { maxNewTokens: 8_192, sampling: greedy, eosTokenId: target.info.eosTokenId });
      expect([short.stopReason, long.stopReason], 'the references end by their budget and at the context').to.deep.equal(['length', 'context']);
      const [a, b] = await Promise.all([sys.client.submit({ prompt: PROMPTS[1], maxNewTokens }, 60_000), sys.client.submit({ prompt: PROMPTS[1], maxNewTokens: 8_192 }, 120_000)]);
      expect(a.error).to.equal(null);
      expect([a.tokens, a.stopReason]).to.deep.equal([short.tokens, short.stopReason]);
      expect(a.clipped).to.equal(undefined);
      expect(b.error).to.equal(null);
      expect(b.tokens).to.deep.equal(long.tokens);
      expect(b.stopReason).to.equal(long.stopReason);
      expect(b.clipped).to.deep.equal({ maxNewTokens: target.info.maxPositions - prompt.length });
    } finally {
      await target.dispose();
    }
  });

  it('streams text that decodes to the same tokens', async () => {
    const pair = await ensureModelPair('tiny');
    const tok = await loadTokenizer(join(pair.root, 'target'));
    const r = await sys.client.submit({ prompt: PROMPTS[0], maxNewTokens }, 60_000);
    expect(r.text).to.equal(tok.decode(expected[0]));
  });
});

describe('end to end: pipelined drafting with the WISP policy and truncation', function () {
  this.timeout(120_000);
  let sys: TestSystem;

  after(async () => {
    await sys?.stop();
  });

  it('stays lossless while reusing look-ahead drafts', async () => {
    const maxNewTokens = 32;
    const expected = await referenceTokens(PROMPTS, maxNewTokens);
    // A device far from the server (long round trip, fast drafting), so look-ahead has time to
    // draft several tokens while each round is verified.
    const far = { draftMsPerToken: 10, rttMs: 200, jitterMs: 0, draftModel: 'draft-1', powerW: { drafting: 4, idle: 0.5, transmitting: 1.5 } };
    sys = await startTestSystem(
      { devices: 4, workers: 1 },
      { timeScale: 0.1, devices: { far }, deviceProfile: 'far', scheduler: { policy: 'wisp', pipelinedDrafting: true, truncation: true } },
    );
    const results = await Promise.all(PROMPTS.map((prompt) => sys.client.submit({ prompt, maxNewTokens }, 60_000)));
    results.forEach((r, i) => {
      expect(r.error, JSON.stringify(r.error)).to.equal(null);
      expect(r.tokens, `prompt ${i}`).to.deep.equal(expected[i]);
    });
    const reused = sys.up.fleet.devices.reduce((a, d) => a + d.pipelined.reused, 0);
    expect(reused, 'look-ahead tokens reused as drafts').to.be.greaterThan(0);
  });
});

describe('end to end: centralized serving over a jittery network', function () {
  this.timeout(120_000);
  let sys: TestSystem;

  after(async () => {
    await sys?.stop();
  });

  it('streams every token in order (jitter never reorders a device link)', async () => {
    const maxNewTokens = 24;
    const expected = await referenceTokens(PROMPTS, maxNewTokens);
    // Jitter as large as the mean one-way delay: without in-order delivery chunks overtake each other.
    const jittery = { draftMsPerToken: 10, rttMs: 20, jitterMs: 20, draftModel: 'draft-1', powerW: { drafting: 4, idle: 0.5, transmitting: 1.5 } };
    sys = await startTestSystem(
      { devices: 8, workers: 1 },
      { timeScale: 1, devices: { jittery }, deviceProfile: 'jittery', scheduler: { policy: 'centralized' }, edge: { verifyTimeoutMs: 5_000, maxRetries: 1 } },
    );
    const results = await Promise.all(PROMPTS.map((prompt) => sys.client.submit({ prompt, maxNewTokens }, 60_000)));
    results.forEach((r, i) => {
      expect(r.error, JSON.stringify(r.error)).to.equal(null);
      expect(r.tokens, `prompt ${i}`).to.deep.equal(expected[i]);
    });
  });
});

describe('end to end: verifiers paced to a serving engine (models.pace)', function () {
  this.timeout(120_000);
  let sys: TestSystem;

  after(async () => {
    await sys?.stop();
  });

  for (const policy of ['adaptive', 'centralized'] as const) {
    it(`${policy}: the real target still computes every token (exact), each pass held for the engine's time`, async () => {
      const maxNewTokens = 24;
      const expected = await referenceTokens(PROMPTS, maxNewTokens);
      const passes: { pacedMs: number; computeMs: number; late: boolean }[] = [];
      await sys?.stop();
      sys = await startTestSystem(
        { devices: 4, workers: 1, hooks: { onPacedPass: (p) => passes.push(p) } },
        { timeScale: 0.2, models: { pace: 'a100-80gb/34b' }, scheduler: { policy } },
      );
      const results = await Promise.all(PROMPTS.map((prompt) => sys.client.submit({ prompt, maxNewTokens }, 60_000)));
      results.forEach((r, i) => {
        expect(r.error, JSON.stringify(r.error)).to.equal(null);
        expect(r.tokens, `prompt ${i}`).to.deep.equal(expected[i]);
      });
      expect(passes.length).to.be.greaterThan(0);
      // A 34B model's pass on an A100 reads ~68 GB of weights: tens of ms, here × 0.2.
      const pacedMs = passes.map((p) => p.pacedMs).sort((a, b) => a - b);
      expect(pacedMs[0]).to.be.greaterThan(2);
      // The worker reports the paced time as its pass time: the scheduler's estimator learns the engine.
      const worker = Object.values(sys.up.scheduler.snapshot().context.workers)[0];
      expect(worker && layoutOf(worker.estimator), 'a paced worker lays passes out like the engine').to.equal('varlen');
      expect(worker?.estimator.error.count, 'the estimator learnt from paced passes').to.be.greaterThan(0);
    });
  }
});
