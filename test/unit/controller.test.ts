import { expect } from 'chai';
import {
  createControllerState,
  learnFromRound,
  predictAcceptance,
  decideDraftStep,
  type WispControllerState,
} from '../../policies/controller.ts';
import { PolicyConfigError } from '../../policies/errors.ts';
import type { DraftTokenFeatures } from '../../policies/types.ts';

const tok = (top1Prob: number, position = 0): DraftTokenFeatures => ({
  top1Prob,
  margin: Math.max(0, 2 * top1Prob - 1),
  entropy: 3 * (1 - top1Prob),
  logitSpread: 10,
  position,
});

describe('policies/controller (WISP, learned)', () => {
  it('default predictions rise with draft confidence', () => {
    const s = createControllerState({ kind: 'wisp' });
    const ps = [0.1, 0.3, 0.5, 0.7, 0.9, 0.99].map((p) => predictAcceptance(s, tok(p)));
    for (let i = 1; i < ps.length; i++) expect(ps[i]).to.be.greaterThan(ps[i - 1]);
    expect(ps[0]).to.be.lessThan(0.3);
    expect(ps[ps.length - 1]).to.be.greaterThan(0.85);
  });

  it('learning from accepted tokens moves the prediction up', () => {
    let s = createControllerState({ kind: 'wisp' });
    const f = tok(0.4);
    const before = predictAcceptance(s, f);
    for (let r = 0; r < 200; r++) s = learnFromRound(s, [f, f, f], 3);
    const after = predictAcceptance(s, f);
    expect(after).to.be.greaterThan(before + 0.2);
    expect(after).to.be.greaterThan(0.8);
  });

  it('learning from rejected tokens moves the prediction down', () => {
    let s = createControllerState({ kind: 'wisp' });
    const f = tok(0.95);
    const before = predictAcceptance(s, f);
    for (let r = 0; r < 200; r++) s = learnFromRound(s, [f, f], 0);
    const after = predictAcceptance(s, f);
    expect(after).to.be.lessThan(before - 0.3);
    expect(after).to.be.lessThan(0.3);
  });

  it('labels only judged tokens: accepted ones, then the first rejection', () => {
    const s0 = createControllerState({ kind: 'wisp' }) as WispControllerState;
    const feats = [tok(0.9, 0), tok(0.8, 1), tok(0.7, 2), tok(0.6, 3)];
    expect((learnFromRound(s0, feats, 1) as WispControllerState).updates).to.equal(2); // 1 accepted + 1 rejected
    expect((learnFromRound(s0, feats, 4) as WispControllerState).updates).to.equal(4); // all accepted
    // Truncated by the scheduler: only 2 drafts judged, both accepted; no rejection label.
    expect((learnFromRound(s0, feats, 2, 2) as WispControllerState).updates).to.equal(2);
    // The tokens after the first rejection teach nothing: same state as a 2-token round.
    expect(learnFromRound(s0, feats, 1)).to.deep.equal(learnFromRound(s0, feats.slice(0, 2), 1));
  });

  it('is pure: learning returns a new state and leaves the old one alone', () => {
    const s0 = createControllerState({ kind: 'wisp' });
    const copy = JSON.parse(JSON.stringify(s0));
    const s1 = learnFromRound(s0, [tok(0.5)], 1);
    expect(s0).to.deep.equal(copy);
    expect(s1).to.not.deep.equal(s0);
  });

  const step = (s: ReturnType<typeof createControllerState>, prediction: number, keptPredictions: number[], draftMsPerToken: number, roundOverheadMs: number) =>
    decideDraftStep(s, { prediction, position: keptPredictions.length, keptPredictions, draftMsPerToken, roundOverheadMs });

  it('always keeps the first token of a round (its verdict is the learning label)', () => {
    const s = createControllerState({ kind: 'wisp', minThreshold: 0.5 });
    expect(step(s, 0.01, [], 20, 100)).to.not.equal('dropAndStop');
  });

  it('drops a later token predicted below minThreshold, and stops', () => {
    const s = createControllerState({ kind: 'wisp', minThreshold: 0.3 });
    expect(step(s, 0.29, [0.9], 20, 100)).to.equal('dropAndStop');
    expect(step(s, Number.NaN, [0.9], 20, 100)).to.equal('dropAndStop');
  });

  it('drafts on while one more token adds more expected tokens per ms than the round delivers', () => {
    const s = createControllerState({ kind: 'wisp', minThreshold: 0.1 });
    // After one kept token with a = 0.9: P1 = 0.9, E1 = 1.9, T1 = 20 + 100 = 120 ms.
    // Next: 0.9 · 0.9 · 120 = 97.2 ≥ 1.9 · 20 = 38 → keep drafting.
    expect(step(s, 0.9, [], 20, 100)).to.equal('keep');
    // a = 0.3: 0.3 · 0.3 · 120 = 10.8 < 1.3 · 20 = 26 → keep this one, then send.
    expect(step(s, 0.3, [], 20, 100)).to.equal('keepAndStop');
  });

  it('a slow device stops earlier, a busy server makes longer drafts worth it', () => {
    const s = createControllerState({ kind: 'wisp', minThreshold: 0.1 });
    const kept = [0.8, 0.8];
    // P3 = 0.512, E3 = 1 + 0.8 + 0.64 + 0.512 = 2.952.
    // Fast device (10 ms/token), round overhead 60 ms: T = 90; 0.512·0.8·90 = 36.9 ≥ 29.5 → on.
    expect(step(s, 0.8, kept, 10, 60)).to.equal('keep');
    // Slow device (50 ms/token): T = 210; 0.512·0.8·210 = 86 < 147.6 → stop.
    expect(step(s, 0.8, kept, 50, 60)).to.equal('keepAndStop');
    // The same slow device with a busy server (overhead 600 ms): T = 750; 307 ≥ 147.6 → on.
    expect(step(s, 0.8, kept, 50, 600)).to.equal('keep');
  });

  it('stops at K_max', () => {
    const s = createControllerState({ kind: 'wisp', kMax: 3, minThreshold: 0.1 });
    expect(step(s, 0.99, [0.99, 0.99], 1, 1_000)).to.equal('keepAndStop');
  });

  it('rejects out-of-range options with a typed error', () => {
    expect(() => createControllerState({ kind: 'wisp', minThreshold: 1.5 })).to.throw(PolicyConfigError, /minThreshold must be in \[0, 1\], got 1.5/);
    expect(() => createControllerState({ kind: 'wisp', weights: [1, 2] })).to.throw(PolicyConfigError, /weights must be 6 finite numbers/);
    expect(() => createControllerState({ kind: 'sled', kMax: -1 })).to.throw(PolicyConfigError, /kMax/);
  });
});

describe('policies/controller (SLED)', () => {
  it('stops when top-1 probability is below the confidence threshold or at K_max', () => {
    const s = createControllerState({ kind: 'sled', confidenceThreshold: 0.6, kMax: 5 });
    const p = (top1: number) => predictAcceptance(s, tok(top1));
    const at = (prediction: number, position: number) =>
      decideDraftStep(s, { prediction, position, keptPredictions: new Array(position).fill(0.9), draftMsPerToken: 20, roundOverheadMs: 100 });
    expect(p(0.73)).to.equal(0.73);
    expect(at(p(0.59), 1)).to.equal('dropAndStop');
    expect(at(p(0.61), 1)).to.equal('keep');
    // The first token is always sent, and K_max ends the round.
    expect(at(p(0.59), 0)).to.equal('keepAndStop');
    expect(at(p(0.99), 4)).to.equal('keepAndStop');
    // Device speed and server load do not move SLED's bar.
    expect(decideDraftStep(s, { prediction: p(0.59), position: 1, keptPredictions: [0.9], draftMsPerToken: 1, roundOverheadMs: 1e6 })).to.equal('dropAndStop');
  });

  it('does not learn', () => {
    const s = createControllerState({ kind: 'sled' });
    expect(learnFromRound(s, [tok(0.9), tok(0.9)], 0)).to.equal(s);
  });
});
