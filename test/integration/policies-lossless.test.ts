/**
 * Every scheduling policy (`wisp`, `sled`, `centralized`, `adaptive`) stays lossless with truncation on,
 * on the real broker, Redis and the forged tiny models.
 *
 * - Greedy: token for token what the target alone produces (generateTarget).
 * - Sampling (temperature > 0). Every random decision is keyed by (seed, position, purpose)
 *   (inference/rng.ts), so what can be compared exactly depends on the serving mode:
 *   - centralized: the server samples each token itself with the 'target' stream at its
 *     position, exactly as generateTarget does → the outputs are equal token for token.
 *   - speculative (wisp, sled): a position inside a draft window commits the accepted draft
 *     token (drawn with the 'draft' stream) or the residual correction; a position after a
 *     fully accepted window commits the target's own draw. Both are deterministic in
 *     (prefix, seed, position), but which one a position gets depends on where rounds end
 *     (controller stops, truncation), so the sample path is NOT generateTarget's — rejection
 *     sampling only guarantees the same distribution. What the design does guarantee, and is
 *     checked here: (a) every committed token is one of the two outcomes the protocol allows at
 *     its position, recomputed in-process; (b) with fixed draft lengths (SLED with confidence
 *     threshold 0, which drafts K_max every round and is never truncated) the output equals
 *     in-process speculative sampling (generateSpeculative with draftLen = K_max) exactly.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import type { Sampling } from '../../protocol/messages.ts';
import type { PolicyName } from '../../config/schema.ts';
import { generateSpeculative, generateTarget } from '../../inference/speculative.ts';
import type { DecoderRunner } from '../../inference/types.ts';
import { firstDisallowed } from '../helpers/sampled-check.ts';
import { loadTinyPair, TEST_PROMPTS, startTestSystem, testConfig, type TestSystem } from '../helpers/system.ts';

const GREEDY: Sampling = { temperature: 0, topP: 1, seed: 0 };
const sampled = (i: number): Sampling => ({ temperature: 0.8, topP: 0.95, seed: 1_000 + i });
const MAX_NEW = 16;
const K_MAX = 4;

interface Models {
  target: DecoderRunner;
  draft: DecoderRunner;
  encode: (s: string) => number[];
  eos: number | null;
}

async function loadModels(): Promise<Models> {
  const { target, draft, tokenizer } = await loadTinyPair();
  return { target, draft, encode: (s) => tokenizer.encode(s), eos: target.info.eosTokenId };
}

async function runPolicy(policy: PolicyName, extra: Record<string, unknown> = {}): Promise<TestSystem> {
  return startTestSystem(
    { devices: 4, workers: 1 },
    { worker: { id: `pl-${randomUUID().slice(0, 6)}` }, scheduler: { policy, truncation: true }, controller: { kMax: K_MAX }, ...extra },
  );
}

describe('policies stay lossless (truncation on)', function () {
  this.timeout(60_000);
  const prompts = TEST_PROMPTS.slice(0, 4);
  let m: Models;
  let promptTokens: number[][];
  let greedyRef: number[][];
  let sampledRef: number[][];

  before(async () => {
    m = await loadModels();
    promptTokens = prompts.map((p) => m.encode(p));
    greedyRef = [];
    sampledRef = [];
    for (let i = 0; i < prompts.length; i++) {
      greedyRef.push((await generateTarget(m.target, promptTokens[i], { maxNewTokens: MAX_NEW, sampling: GREEDY, eosTokenId: m.eos })).tokens);
      sampledRef.push((await generateTarget(m.target, promptTokens[i], { maxNewTokens: MAX_NEW, sampling: sampled(i), eosTokenId: m.eos })).tokens);
    }
  });
  after(async () => {
    await m?.target.dispose();
    await m?.draft.dispose();
  });

  /** Greedy and sampled sessions of every prompt, all at once. */
  async function serve(sys: TestSystem) {
    const greedy = prompts.map((prompt) => sys.client.submit({ prompt, maxNewTokens: MAX_NEW, sampling: GREEDY }, 40_000));
    const samp = prompts.map((prompt, i) => sys.client.submit({ prompt, maxNewTokens: MAX_NEW, sampling: sampled(i) }, 40_000));
    const [g, s] = [await Promise.all(greedy), await Promise.all(samp)];
    for (const r of [...g, ...s]) expect(r.error, JSON.stringify(r.error)).to.equal(null);
    return { greedy: g, sampled: s };
  }

  for (const policy of ['wisp', 'sled'] as const) {
    describe(`${policy}`, () => {
      let sys: TestSystem;
      after(async () => {
        await sys?.stop();
      });

      it('greedy equals the target alone; sampled commits only what the protocol allows at each position', async () => {
        sys = await runPolicy(policy);
        const r = await serve(sys);
        r.greedy.forEach((g, i) => expect(g.tokens, `greedy prompt ${i}`).to.deep.equal(greedyRef[i]));
        for (let i = 0; i < prompts.length; i++) {
          expect(r.sampled[i].tokens.length, `sampled prompt ${i} length`).to.be.greaterThan(0);
          expect(await firstDisallowed(m, promptTokens[i], r.sampled[i].tokens, sampled(i)), `sampled prompt ${i}`).to.equal(null);
        }
        const drafted = [...r.greedy, ...r.sampled].reduce((a, x) => a + (x.stats?.drafted ?? 0), 0);
        expect(drafted, 'the devices drafted').to.be.greaterThan(0);
      });
    });
  }

  describe('adaptive: sessions the server decodes beside sessions their devices speculate, on one worker', () => {
    let sys: TestSystem;
    after(async () => {
      await sys?.stop();
    });

    it('each session is exact for its modes: greedy equals the target alone, switched or not; sampled decoded ones equal it too, speculated or switched ones commit only allowed tokens', async () => {
      // The devices' drafts agree with the target almost always (their profile says so): a round
      // then commits about K_max + 1 tokens.
      const profile = testConfig().deviceProfile;
      sys = await runPolicy('adaptive', { devices: { [profile]: { agreement: 0.99 } } });
      // A lenient TPOT SLO: decoding meets it, so the server decodes. One no pass can meet: the
      // mode predicted faster wins — with drafting free here (time scale 0) and rounds of
      // K_max + 1 tokens, speculation, as long as a pass is predicted to cost about the same
      // for 1 or 5 tokens per row.
      const lenient = { ttftMs: 60_000, tpotMs: 10_000 };
      const strict = { ttftMs: 60_000, tpotMs: 0.001 };
      const runs = prompts.flatMap((prompt, i) =>
        [lenient, strict].flatMap((slo) => [
          { i, slo, sampling: GREEDY, p: sys.client.submit({ prompt, maxNewTokens: MAX_NEW, sampling: GREEDY, slo }, 40_000) },
          { i, slo, sampling: sampled(i), p: sys.client.submit({ prompt, maxNewTokens: MAX_NEW, sampling: sampled(i), slo }, 40_000) },
        ]),
      );
      const modes: Record<string, number> = {};
      for (const run of runs) {
        const r = await run.p;
        expect(r.error, JSON.stringify(r.error)).to.equal(null);
        const mode = r.stats?.mode;
        expect(mode, 'the device reports the mode it was served in').to.be.oneOf(['speculative', 'centralized']);
        if (run.slo === lenient) expect(mode, 'a lenient SLO: the server decodes').to.equal('centralized');
        modes[mode!] = (modes[mode!] ?? 0) + 1;
        // A session the scheduler switched between modes (at a round) was served both ways.
        const switched = (r.stats?.modeSwitches ?? 0) > 0;
        if (switched) modes.switched = (modes.switched ?? 0) + 1;
        const decodedThroughout = mode === 'centralized' && !switched;
        const label = `prompt ${run.i}, ${mode}${switched ? ' (switched)' : ''}, ${run.sampling === GREEDY ? 'greedy' : 'sampled'}`;
        if (run.sampling === GREEDY) expect(r.tokens, label).to.deep.equal(greedyRef[run.i]);
        else if (decodedThroughout) expect(r.tokens, label).to.deep.equal(sampledRef[run.i]);
        else expect(await firstDisallowed(m, promptTokens[run.i], r.tokens, run.sampling), label).to.equal(null);
        if (decodedThroughout) expect(r.stats?.drafted, `${label}: no drafting`).to.equal(0);
        else expect(r.stats?.drafted, `${label}: drafted`).to.be.greaterThan(0);
        if (switched) expect(r.stats?.decodedTokens, `${label}: decoded tokens`).to.be.greaterThan(0).and.lessThan(r.tokens.length);
      }
      // The strict sessions speculate while the scheduler's estimator holds its priors (a pass
      // costs about the same for 1 or 5 tokens per row). Once it has learned this CPU, where a
      // pass costs in proportion to its tokens, decoding is faster for them too, and they decode
      // — the ones already speculating switched to the server at a round.
      expect((modes.speculative ?? 0) + (modes.switched ?? 0), 'some sessions speculated').to.be.greaterThan(0);
      expect(modes.centralized ?? 0, 'some sessions were decoded').to.be.at.least(8);
    });
  });

  describe('sled with fixed draft length (confidence threshold 0)', () => {
    let sys: TestSystem;
    after(async () => {
      await sys?.stop();
    });

    it('sampled output equals in-process speculative sampling (generateSpeculative, draftLen = K_max) exactly', async () => {
      sys = await runPolicy('sled', { controller: { kMax: K_MAX, threshold: 0 } });
      const r = await serve(sys);
      r.greedy.forEach((g, i) => expect(g.tokens, `greedy prompt ${i}`).to.deep.equal(greedyRef[i]));
      for (let i = 0; i < prompts.length; i++) {
        const spec = await generateSpeculative(m.target, m.draft, promptTokens[i], { maxNewTokens: MAX_NEW, sampling: sampled(i), eosTokenId: m.eos, draftLen: K_MAX });
        expect(r.sampled[i].tokens, `sampled prompt ${i}`).to.deep.equal(spec.tokens);
        expect(r.sampled[i].stats?.rounds, `rounds of prompt ${i}`).to.equal(spec.stats.rounds);
      }
    });
  });

  describe('centralized', () => {
    let sys: TestSystem;
    after(async () => {
      await sys?.stop();
    });

    it('greedy and sampled output both equal the target alone, token for token', async () => {
      sys = await runPolicy('centralized');
      const r = await serve(sys);
      r.greedy.forEach((g, i) => expect(g.tokens, `greedy prompt ${i}`).to.deep.equal(greedyRef[i]));
      r.sampled.forEach((s, i) => expect(s.tokens, `sampled prompt ${i}`).to.deep.equal(sampledRef[i]));
      const drafted = [...r.greedy, ...r.sampled].reduce((a, x) => a + (x.stats?.drafted ?? 0), 0);
      expect(drafted, 'no edge drafting in centralized mode').to.equal(0);
    });

    it('a session that arrives while another decodes is served beside it, not after it', async () => {
      // Heartbeats every 50 ms: one of them lands while the worker is stepping. (It used to say
      // 'busy' there, and the scheduler then held every new session until all decoding ended.)
      await sys.stop();
      sys = await startTestSystem(
        { devices: 2, workers: 1 },
        { worker: { id: `pl-${randomUUID().slice(0, 6)}`, heartbeatMs: 50 }, scheduler: { policy: 'centralized', truncation: true } },
      );
      const long = 250;
      const [longRef] = [(await generateTarget(m.target, promptTokens[0], { maxNewTokens: long, sampling: GREEDY, eosTokenId: m.eos })).tokens];
      const order: string[] = [];
      const a = sys.client.submit({ prompt: prompts[0], maxNewTokens: long }, 40_000).then((x) => (order.push('long'), x));
      const worker = sys.up.workers[0];
      const deadline = Date.now() + 10_000;
      while (!((worker.executor()?.decodeActive ?? 0) > 0) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 5));
      await new Promise((res) => setTimeout(res, 150)); // ≥ 2 heartbeats while stepping
      expect(worker.executor()?.decodeActive, 'the long session is still decoding').to.be.greaterThan(0);
      const b = sys.client.submit({ prompt: prompts[1], maxNewTokens: 8 }, 40_000).then((x) => (order.push('short'), x));
      const [ra, rb] = await Promise.all([a, b]);
      expect(ra.error ?? rb.error, JSON.stringify(ra.error ?? rb.error)).to.equal(null);
      expect(ra.tokens).to.deep.equal(longRef.slice(0, long));
      expect(rb.tokens).to.deep.equal(greedyRef[1].slice(0, 8));
      expect(order).to.deep.equal(['short', 'long']);
    });
  });
});
