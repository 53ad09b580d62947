/**
 * Chunked prefill is lossless: with prompts fed in chunks of ~16–24 tokens (a pass token budget
 * of 24), every policy gives what it gives with each prompt in one pass, and what the target
 * alone gives — greedy token for token; sampled token for token where the sample path is fixed
 * (centralized serving; SLED with a fixed draft length, equal to in-process speculative
 * sampling). Prompts longer than several chunks (boundaries falling inside words) and one
 * shorter than a chunk, on the real broker, Redis and the forged tiny models.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import type { PolicyName } from '../../config/schema.ts';
import { generateSpeculative, generateTarget } from '../../inference/speculative.ts';
import type { DecoderRunner } from '../../inference/types.ts';
import type { BatchReport } from '../../machines/verifier-worker.ts';
import type { Sampling } from '../../protocol/messages.ts';
import { loadTinyPair, startTestSystem, type TestSystem } from '../helpers/system.ts';

const PROMPTS = [
  'the old house on the hill stood alone at the end of a long and winding road where the wind came down from the mountains every evening and the children of the village told stories about the lights that moved behind its windows',
  'once upon a time there was a river that ran through a quiet town where nobody ever locked a door and every morning the baker sang while the bread rose',
  'she opened the door and',
];
const GREEDY: Sampling = { temperature: 0, topP: 1, seed: 0 };
const sampled = (i: number): Sampling => ({ temperature: 0.8, topP: 0.95, seed: 7_000 + i });
const MAX_NEW = 12;
const K_MAX = 4;
const BUDGET = 24;

describe('chunked prefill is lossless (prompts in chunks of a 24-token pass budget)', function () {
  this.timeout(90_000);
  let target: DecoderRunner;
  let draft: DecoderRunner;
  let tokens: number[][];
  let greedyRef: number[][];
  let sampledRef: number[][];

  before(async () => {
    let tokenizer;
    ({ target, draft, tokenizer } = await loadTinyPair());
    tokens = PROMPTS.map((p) => tokenizer.encode(p));
    expect(tokens[0].length, 'the longest prompt spans several chunks').to.be.greaterThan(2 * BUDGET);
    expect(tokens[2].length, 'the last is shorter than one chunk').to.be.lessThan(16);
    const eos = target.info.eosTokenId;
    greedyRef = [];
    sampledRef = [];
    for (let i = 0; i < PROMPTS.length; i++) {
      greedyRef.push((await generateTarget(target, tokens[i], { maxNewTokens: MAX_NEW, sampling: GREEDY, eosTokenId: eos })).tokens);
      sampledRef.push((await generateTarget(target, tokens[i], { maxNewTokens: MAX_NEW, sampling: sampled(i), eosTokenId: eos })).tokens);
    }
  });
  after(async () => {
    await target?.dispose();
    await draft?.dispose();
  });

  /** Every prompt, greedy and sampled, all at once, on a fresh system; and the passes it ran. */
  async function serve(policy: PolicyName, chunked: boolean, controller: Record<string, number> = {}) {
    const reports: BatchReport[] = [];
    const sys: TestSystem = await startTestSystem(
      { devices: 4, workers: 1, hooks: { onBatch: (r) => reports.push(r) } },
      {
        worker: { id: `cp-${randomUUID().slice(0, 6)}` },
        scheduler: { policy, truncation: true, chunkedPrefill: chunked, passTokenBudget: BUDGET },
        controller: { kMax: K_MAX, ...controller },
      },
    );
    try {
      const g = PROMPTS.map((prompt) => sys.client.submit({ prompt, maxNewTokens: MAX_NEW, sampling: GREEDY }, 60_000));
      const s = PROMPTS.map((prompt, i) => sys.client.submit({ prompt, maxNewTokens: MAX_NEW, sampling: sampled(i) }, 60_000));
      const [greedy, samp] = [await Promise.all(g), await Promise.all(s)];
      for (const r of [...greedy, ...samp]) expect(r.error, JSON.stringify(r.error)).to.equal(null);
      // Passes that fed a prompt chunk over earlier chunks of the same prompt (L > 0, prefill).
      const laterChunks = reports.flatMap((r) => r.shapes).filter((x) => x.prefill === true && x.L > 0).length;
      return { greedy: greedy.map((r) => r.tokens), sampled: samp.map((r) => r.tokens), laterChunks };
    } finally {
      await sys.stop();
    }
  }

  for (const policy of ['wisp', 'sled', 'centralized'] as const) {
    it(`${policy}: greedy output with and without chunking equals the target alone`, async () => {
      const on = await serve(policy, true);
      expect(on.laterChunks, 'prompts went in several chunks').to.be.greaterThan(4);
      on.greedy.forEach((t, i) => expect(t, `chunked, prompt ${i}`).to.deep.equal(greedyRef[i]));
      const off = await serve(policy, false);
      expect(off.laterChunks, 'without chunking every prompt is one pass').to.equal(0);
      off.greedy.forEach((t, i) => expect(t, `unchunked, prompt ${i}`).to.deep.equal(greedyRef[i]));
      if (policy === 'centralized') {
        // The server samples each token itself: the sample path is the target's, chunks or not.
        on.sampled.forEach((t, i) => expect(t, `chunked sampled, prompt ${i}`).to.deep.equal(sampledRef[i]));
        off.sampled.forEach((t, i) => expect(t, `unchunked sampled, prompt ${i}`).to.deep.equal(sampledRef[i]));
      }
    });
  }

  it('sled with a fixed draft length: sampled output, chunked or not, equals in-process speculative sampling', async () => {
    const on = await serve('sled', true, { threshold: 0 });
    const off = await serve('sled', false, { threshold: 0 });
    for (let i = 0; i < PROMPTS.length; i++) {
      const spec = await generateSpeculative(target, draft, tokens[i], { maxNewTokens: MAX_NEW, sampling: sampled(i), eosTokenId: target.info.eosTokenId, draftLen: K_MAX });
      expect(on.sampled[i], `chunked, prompt ${i}`).to.deep.equal(spec.tokens);
      expect(off.sampled[i], `unchunked, prompt ${i}`).to.deep.equal(spec.tokens);
    }
  });
});
