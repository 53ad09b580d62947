/**
 * The edge drafter on the real forged draft model: pipelined look-ahead yields exactly the
 * tokens fresh drafting would, is reused only when the target's bonus matches its guess, and
 * survives a round whose last drafted token the controller dropped.
 */
import { expect } from 'chai';
import { SessionDrafter, type DraftStopRule } from '../../actors/edge/drafter.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import type { DecoderRunner } from '../../inference/types.ts';

const keepAll: DraftStopRule = { predict: () => 1, decide: () => 'keep' };

describe('SessionDrafter (pipelined drafting) on the tiny draft model', () => {
  let runner: DecoderRunner;
  const ctx = [5, 6, 7, 8, 9];
  const make = (stopRule: DraftStopRule = keepAll) =>
    new SessionDrafter({ runner, sampling: { temperature: 0, topP: 1, seed: 0 }, stopRule, paceMsPerToken: 0, sleep: async () => {}, now: () => performance.now(), eosTokenId: null });
  /** What drafting from scratch gives after `context`. */
  const fresh = async (context: number[], n: number) => (await make().draftRound({ sessionId: 'f', context, maxDraft: n, round: 1 })).tokens;

  before(async () => {
    runner = await loadDecoder((await ensureModelPair('tiny')).draftDirs[0], { threads: 1 });
  });
  after(async () => {
    await runner.dispose();
  });

  it('reuses look-ahead tokens when everything was accepted and the bonus matches the guess', async () => {
    const d = make();
    const r1 = await d.draftRound({ sessionId: 's', context: ctx, maxDraft: 3, round: 1 });
    const longer = await fresh(ctx, 8);
    expect(r1.tokens).to.deep.equal(longer.slice(0, 3));
    d.startLookahead([...ctx, ...r1.tokens], 5);
    await new Promise((r) => setTimeout(r, 100));
    const next = [...ctx, ...r1.tokens, longer[3]];
    const r2 = await d.draftRound({ sessionId: 's', context: next, maxDraft: 4, round: 2 });
    expect(r2.tokens).to.deep.equal(longer.slice(4, 8));
    expect(d.pipelined.reused).to.be.greaterThan(0);
  });

  it('throws the look-ahead away when the target corrected the draft', async () => {
    const d = make();
    const r1 = await d.draftRound({ sessionId: 's', context: ctx, maxDraft: 3, round: 1 });
    d.startLookahead([...ctx, ...r1.tokens], 5);
    await new Promise((r) => setTimeout(r, 100));
    // The target rejected the second draft token and answered 3 instead.
    const next = [...ctx, r1.tokens[0], 3];
    const r2 = await d.draftRound({ sessionId: 's', context: next, maxDraft: 3, round: 2 });
    expect(d.pipelined.reused).to.equal(0);
    expect(d.pipelined.discarded).to.be.greaterThan(0);
    expect(r2.discardedDraftMs).to.be.greaterThan(0);
    expect(r2.tokens).to.deep.equal(await fresh(next, 3));
  });

  it('look-ahead after a round whose last token the controller dropped still continues correctly', async () => {
    // Keep two tokens, then stop (the third is drafted, found unlikely, and dropped).
    const stopAt2: DraftStopRule = { predict: () => 0.5, decide: (_p, f) => (f.position >= 2 ? 'dropAndStop' : 'keep') };
    const d = make(stopAt2);
    const r1 = await d.draftRound({ sessionId: 's', context: ctx, maxDraft: 6, round: 1 });
    expect(r1.tokens).to.have.length(2);
    expect(r1.discardedDraftMs).to.be.greaterThan(0);
    d.startLookahead([...ctx, ...r1.tokens], 3);
    await new Promise((r) => setTimeout(r, 100));
    const longer = await fresh(ctx, 6);
    const next = [...ctx, ...r1.tokens, longer[2]];
    const r2 = await d.draftRound({ sessionId: 's', context: next, maxDraft: 2, round: 2 });
    expect(r2.tokens).to.deep.equal(longer.slice(3, 5));
  });
});
