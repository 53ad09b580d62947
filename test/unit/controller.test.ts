import { expect } from 'chai';
import {
  createControllerState,
  effectiveThreshold,
  learnFromRound,
  predictAcceptance,
  shouldStopDrafting,
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

  it('stops below the threshold and at K_max', () => {
    const s = createControllerState({ kind: 'wisp', threshold: 0.5, kMax: 4 });
    expect(shouldStopDrafting(s, { nextPrediction: 0.49, position: 0 })).to.equal(true);
    expect(shouldStopDrafting(s, { nextPrediction: 0.51, position: 0 })).to.equal(false);
    expect(shouldStopDrafting(s, { nextPrediction: 0.99, position: 4 })).to.equal(true);
    expect(shouldStopDrafting(s, { nextPrediction: Number.NaN, position: 1 })).to.equal(true);
  });

  it('lowers the threshold when the expected queueing delay is high, down to minThreshold', () => {
    const s = createControllerState({ kind: 'wisp', threshold: 0.5, minThreshold: 0.2, queueRefMs: 100 }) as WispControllerState;
    expect(effectiveThreshold(s, 0)).to.equal(0.5);
    expect(effectiveThreshold(s, 100)).to.equal(0.25);
    expect(effectiveThreshold(s, 10_000)).to.equal(0.2);
    expect(shouldStopDrafting(s, { nextPrediction: 0.4, position: 1, expectedQueueMs: 0 })).to.equal(true);
    expect(shouldStopDrafting(s, { nextPrediction: 0.4, position: 1, expectedQueueMs: 100 })).to.equal(false);
  });

  it('rejects out-of-range options with a typed error', () => {
    expect(() => createControllerState({ kind: 'wisp', threshold: 1.5 })).to.throw(PolicyConfigError, /threshold must be in \[0, 1\], got 1.5/);
    expect(() => createControllerState({ kind: 'wisp', weights: [1, 2] })).to.throw(PolicyConfigError, /weights must be 6 finite numbers/);
    expect(() => createControllerState({ kind: 'sled', kMax: -1 })).to.throw(PolicyConfigError, /kMax/);
  });
});

describe('policies/controller (SLED)', () => {
  it('stops when top-1 probability is below the confidence threshold or at K_max', () => {
    const s = createControllerState({ kind: 'sled', confidenceThreshold: 0.6, kMax: 5 });
    const p = (top1: number) => predictAcceptance(s, tok(top1));
    expect(p(0.73)).to.equal(0.73);
    expect(shouldStopDrafting(s, { nextPrediction: p(0.59), position: 0 })).to.equal(true);
    expect(shouldStopDrafting(s, { nextPrediction: p(0.61), position: 0 })).to.equal(false);
    expect(shouldStopDrafting(s, { nextPrediction: p(0.99), position: 5 })).to.equal(true);
    // The queue does not move SLED's bar.
    expect(shouldStopDrafting(s, { nextPrediction: p(0.59), position: 0, expectedQueueMs: 1e6 })).to.equal(true);
  });

  it('does not learn', () => {
    const s = createControllerState({ kind: 'sled' });
    expect(learnFromRound(s, [tok(0.9), tok(0.9)], 0)).to.equal(s);
  });
});
