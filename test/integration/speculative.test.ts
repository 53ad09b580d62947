/**
 * Speculative decoding on the forged ONNX model pairs: greedy output equals target-only output
 * token for token; sampled output follows the target's distribution (chi-square tests).
 */
import { expect } from 'chai';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { loadDecoder, type OnnxDecoderRunner } from '../../inference/onnx-runner.ts';
import { loadTokenizer, type WispTokenizer } from '../../inference/tokenizer.ts';
import { generateSpeculative, generateTarget } from '../../inference/speculative.ts';
import { logitsToProbs, sampleDraftToken, sampleIndex } from '../../inference/sampling.ts';
import { createRng, rngFor, uniformFor } from '../../inference/rng.ts';
import { verifySampled } from '../../inference/verify.ts';
import { InferenceError } from '../../inference/errors.ts';
import type { DecoderRunner, KvCacheHandle, SamplingParams, SparseDist } from '../../inference/types.ts';
import { chiSquare, chiSquareCritical001 } from '../helpers/chi-square.ts';

const PROMPTS = [
  'The town sat at the mouth of a slow river',
  'In the morning the boats went out',
  'The keeper of the lighthouse',
  'Children ran between the tables, and',
  'When the storms came in the autumn,',
  'She kept the light for many years.',
  'The baker said that',
  'A path ran beside the river',
  'The library had more books than shelves',
  'On the first warm day of the year',
  'Hello, world! 123',
  'zebra quantum xylophone',
];

const greedy: SamplingParams = { temperature: 0, topP: 1, seed: 0 };

async function lastRowAfter(runner: DecoderRunner, cache: KvCacheHandle, tokens: number[]): Promise<Float32Array> {
  const [logits] = await runner.forward([{ cache, tokens }]);
  return logits.slice(logits.length - runner.info.vocabSize);
}

for (const preset of ['tiny', 'small'] as const) {
  describe(`speculative decoding (forged ${preset} pair)`, function () {
    this.timeout(240_000);
    let target: OnnxDecoderRunner;
    let draft: OnnxDecoderRunner;
    let tok: WispTokenizer;
    // Short generations on small keep the run short; tiny goes longer.
    const maxNewTokens = preset === 'tiny' ? 32 : 14;

    before(async () => {
      const pair = await ensureModelPair(preset);
      target = await loadDecoder(pair.targetDir, { threads: 1 });
      draft = await loadDecoder(pair.draftDirs[0], { threads: 1 });
      tok = await loadTokenizer(pair.targetDir);
    });
    after(async () => {
      await draft?.dispose();
      await target?.dispose();
    });

    it(`greedy output equals target-only output for ${PROMPTS.length} text and 3 random-token prompts, draft lengths 1–8`, async () => {
      let drafted = 0;
      let accepted = 0;
      let rounds = 0;
      let produced = 0;
      // Off-distribution prompts: the draft disagrees more there, which exercises the rollbacks.
      const rng = createRng(5);
      const randomPrompts = Array.from({ length: 3 }, () => Array.from({ length: 6 }, () => rng.nextUint32() % (target.info.vocabSize - 1)));
      for (const text of [...PROMPTS, ...randomPrompts]) {
        const prompt = typeof text === 'string' ? tok.encode(text) : text;
        const ref = await generateTarget(target, prompt, { maxNewTokens, sampling: greedy });
        expect(ref.tokens.length).to.be.greaterThan(0);
        for (let k = 1; k <= 8; k++) {
          const spec = await generateSpeculative(target, draft, prompt, { maxNewTokens, draftLen: k, sampling: greedy });
          expect(spec.tokens, `prompt "${text}", draftLen ${k}`).to.deep.equal(ref.tokens);
          expect(spec.stopReason).to.equal(ref.stopReason);
          expect(spec.stats.accepted).to.be.at.most(spec.stats.drafted);
          drafted += spec.stats.drafted;
          accepted += spec.stats.accepted;
          rounds += spec.stats.rounds;
          produced += spec.tokens.length;
        }
      }
      // The forged draft agrees with the target most of the time, so speculation commits more
      // than one token per target pass on average.
      expect(accepted / drafted).to.be.greaterThan(0.3);
      expect(rounds).to.be.lessThan(produced);
      expect(accepted, 'no draft token was ever rejected: the rollback paths went untested').to.be.lessThan(drafted);
    });

    it('stops at an EOS inside an accepted draft, EOS included, like target-only', async () => {
      const prompt = tok.encode(PROMPTS[1]);
      const ref = await generateTarget(target, prompt, { maxNewTokens, sampling: greedy });
      const eos = ref.tokens[Math.min(5, ref.tokens.length - 1)];
      const cut = ref.tokens.slice(0, ref.tokens.indexOf(eos) + 1);
      const refEos = await generateTarget(target, prompt, { maxNewTokens, sampling: greedy, eosTokenId: eos });
      expect(refEos.tokens).to.deep.equal(cut);
      expect(refEos.stopReason).to.equal('eos');
      for (const k of [1, 3, 8]) {
        const spec = await generateSpeculative(target, draft, prompt, { maxNewTokens, draftLen: k, sampling: greedy, eosTokenId: eos });
        expect(spec.tokens).to.deep.equal(cut);
        expect(spec.stopReason).to.equal('eos');
      }
    });

    it('truncates at maxNewTokens and at a full context exactly like target-only', async () => {
      const prompt = tok.encode(PROMPTS[0]);
      for (const n of [1, 2, 5]) {
        const ref = await generateTarget(target, prompt, { maxNewTokens: n, sampling: greedy });
        const spec = await generateSpeculative(target, draft, prompt, { maxNewTokens: n, draftLen: 4, sampling: greedy });
        expect(spec.tokens).to.deep.equal(ref.tokens);
        expect(spec.tokens.length).to.be.at.most(n);
      }
      // A prompt that leaves 5 free positions: both stop when prompt + output fills the context.
      const max = target.info.maxPositions;
      const filler = tok.encode(PROMPTS.join(' '));
      const long = Array.from({ length: max - 5 }, (_, i) => filler[i % filler.length]);
      const ref = await generateTarget(target, long, { maxNewTokens: 50, sampling: greedy });
      const spec = await generateSpeculative(target, draft, long, { maxNewTokens: 50, draftLen: 8, sampling: greedy });
      expect(spec.tokens).to.deep.equal(ref.tokens);
      if (ref.stopReason === 'context') expect(ref.tokens.length).to.equal(5);
      expect(spec.stopReason).to.equal(ref.stopReason);
    });

    it('refuses a prompt that leaves no room to generate (prompt_too_long), an empty prompt, and out-of-vocabulary ids', async () => {
      const max = target.info.maxPositions;
      const full = new Array(max).fill(5);
      const err = await generateSpeculative(target, draft, full, { maxNewTokens: 4, draftLen: 2, sampling: greedy }).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(InferenceError);
      expect((err as InferenceError).code).to.equal('prompt_too_long');
      expect((err as Error).message).to.include(`${max}-token context`);
      const empty = await generateTarget(target, [], { maxNewTokens: 4, sampling: greedy }).catch((e: unknown) => e);
      expect((empty as InferenceError).code).to.equal('empty_prompt');
      const oov = await generateTarget(target, [1, target.info.vocabSize], { maxNewTokens: 4, sampling: greedy }).catch((e: unknown) => e);
      expect((oov as InferenceError).code).to.equal('token_out_of_vocab');
    });
  });
}

describe('speculative sampling (forged tiny pair): output follows the target distribution', function () {
  this.timeout(240_000);
  let target: OnnxDecoderRunner;
  let draft: OnnxDecoderRunner;
  let tok: WispTokenizer;
  const shaping = { temperature: 0.9, topP: 0.95 };
  const topK = 8;

  before(async () => {
    const pair = await ensureModelPair('tiny');
    target = await loadDecoder(pair.targetDir, { threads: 1 });
    draft = await loadDecoder(pair.draftDirs[0], { threads: 1 });
    tok = await loadTokenizer(pair.targetDir);
  });
  after(async () => {
    await draft?.dispose();
    await target?.dispose();
  });

  it('next-token frequencies at a fixed context (verification rounds of 3 real drafts) match p; a wrong residual fails', async () => {
    const context = tok.encode('In the morning the boats went out, and');
    const last = context[context.length - 1];
    const V = target.info.vocabSize;
    // Both caches hold committed − 1 tokens, as in a session between rounds.
    const tc = target.newCache();
    const dc = draft.newCache();
    await target.forward([{ cache: tc, tokens: context.slice(0, -1) }]);
    await draft.forward([{ cache: dc, tokens: context.slice(0, -1) }]);
    const base = context.length - 1;
    const p = logitsToProbs(await lastRowAfter(target, tc, [last]), shaping);
    tc.rollback(base);

    const N = 3000;
    const counts = new Array(V).fill(0);
    const wrongCounts = new Array(V).fill(0);
    const pos0 = context.length;
    for (let seed = 0; seed < N; seed++) {
      const s = { ...shaping, seed };
      const drafts: number[] = [];
      const dists: SparseDist[] = [];
      let pending = [last];
      for (let j = 0; j < 3; j++) {
        const d = sampleDraftToken(await lastRowAfter(draft, dc, pending), s, topK, rngFor(seed, pos0 + j, 'draft'));
        drafts.push(d.token);
        dists.push(d.dist);
        pending = [d.token];
      }
      dc.rollback(base);
      const [logits] = await target.forward([{ cache: tc, tokens: [last, ...drafts] }]);
      tc.rollback(base);
      const r = verifySampled(drafts, dists, logits, V, s, pos0);
      counts[r.accepted > 0 ? drafts[0] : r.token]++;
      // The classic bug, on the same draws: the correction drawn from p instead of the residual.
      const p0 = logitsToProbs(logits.subarray(0, V), s);
      const q0 = dists[0].probs[dists[0].ids.indexOf(drafts[0])];
      const acceptWrong = uniformFor(seed, pos0, 'accept') < p0[drafts[0]] / q0;
      wrongCounts[acceptWrong ? drafts[0] : sampleIndex(p0, uniformFor(seed, pos0, 'residual'))]++;
    }
    const good = chiSquare(counts, p, N);
    expect(good.stat, `chi2 ${good.stat.toFixed(2)}, df ${good.df}`).to.be.below(chiSquareCritical001(good.df));
    const bad = chiSquare(wrongCounts, p, N);
    expect(bad.stat, `wrong residual: chi2 ${bad.stat.toFixed(2)}, df ${bad.df}`).to.be.above(chiSquareCritical001(bad.df));
  });

  it('the joint of the first three generated tokens of generateSpeculative matches the target (chi-square)', async () => {
    const prompt = tok.encode('The keeper of the lighthouse');
    const N = 2500;
    const seen = new Map<string, number>();
    for (let seed = 0; seed < N; seed++) {
      const out = await generateSpeculative(target, draft, prompt, {
        maxNewTokens: 3,
        draftLen: 2,
        topK,
        sampling: { ...shaping, seed },
      });
      expect(out.tokens).to.have.length(3);
      const key = out.tokens.join(',');
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    // Cells fixed before looking at the counts: every 3-token continuation with expected count
    // ≥ 5 under the target (enumerated with target forwards), and one pooled cell for the rest.
    const cells: Array<{ key: string; prob: number }> = [];
    const cache = target.newCache();
    const p0 = logitsToProbs(await lastRowAfter(target, cache, prompt), shaping);
    const L = prompt.length;
    for (let a = 0; a < p0.length; a++) {
      if (p0[a] * N < 5) continue;
      cache.rollback(L);
      const p1 = logitsToProbs(await lastRowAfter(target, cache, [a]), shaping);
      for (let b = 0; b < p1.length; b++) {
        if (p0[a] * p1[b] * N < 5) continue;
        cache.rollback(L + 1);
        const p2 = logitsToProbs(await lastRowAfter(target, cache, [b]), shaping);
        for (let c = 0; c < p2.length; c++) {
          const prob = p0[a] * p1[b] * p2[c];
          if (prob * N >= 5) cells.push({ key: `${a},${b},${c}`, prob });
        }
      }
    }
    const counts = cells.map((c) => seen.get(c.key) ?? 0);
    const probs = cells.map((c) => c.prob);
    const rest = 1 - probs.reduce((x, y) => x + y, 0);
    counts.push(N - counts.reduce((x, y) => x + y, 0));
    probs.push(rest);
    expect(cells.length).to.be.greaterThan(5);
    const r = chiSquare(counts, probs, N);
    expect(r.stat, `chi2 ${r.stat.toFixed(2)}, df ${r.df}`).to.be.below(chiSquareCritical001(r.df));
  });

  it('is reproducible from the seed, and the seed matters', async () => {
    const prompt = tok.encode('She kept the light');
    const run = (seed: number) => generateSpeculative(target, draft, prompt, { maxNewTokens: 24, draftLen: 4, topK, sampling: { ...shaping, seed } });
    const a = await run(7);
    const b = await run(7);
    expect(b.tokens).to.deep.equal(a.tokens);
    expect(b.stats).to.deep.equal(a.stats);
    const others = await Promise.all([8, 9, 10].map(run));
    expect(others.some((o) => o.tokens.join() !== a.tokens.join())).to.equal(true);
  });
});
