import { expect } from 'chai';
import {
  AcceptanceModelError,
  empiricalAcceptance,
  fitParametricAcceptance,
  parametricAcceptance,
  parseAcceptanceSamples,
  solveLatentMean,
} from '../../sim/acceptance.ts';
import { deriveSeed, Rng } from '../../sim/random.ts';
import { DEFAULT_SERVER_PROFILE, loadServerProfile } from '../../sim/scenarios.ts';
import { ServerProfileError, serverCostFromProfile } from '../../sim/server-cost.ts';
import { rowShapes } from '../../policies/profile-csv.ts';

describe('sim: acceptance models', () => {
  it('parametric: mean acceptance matches the agreement, and the draft\'s confidence carries signal', () => {
    for (const agreement of [0.6, 0.8]) {
      const m = parametricAcceptance({ agreement });
      const rng = new Rng(7);
      let accepted = 0;
      let top1Accepted = 0;
      let top1Rejected = 0;
      const n = 20_000;
      for (let i = 0; i < n; i++) {
        const d = m.draw(rng, m.sessionOffset(rng), 0);
        if (d.accepted) {
          accepted++;
          top1Accepted += d.features.top1Prob;
        } else top1Rejected += d.features.top1Prob;
        expect(d.features.margin).to.be.within(0, d.features.top1Prob);
      }
      expect(accepted / n).to.be.closeTo(agreement, 0.015);
      expect(top1Accepted / accepted).to.be.greaterThan(top1Rejected / (n - accepted) + 0.1);
    }
  });

  it('solves the latent mean so that E[sigmoid] is the target', () => {
    expect(solveLatentMean(0.5, 1.5)).to.be.closeTo(0, 1e-6);
    expect(solveLatentMean(0.7, 0)).to.be.closeTo(Math.log(0.7 / 0.3), 1e-6);
    expect(() => parametricAcceptance({ agreement: 1 })).to.throw(AcceptanceModelError, /agreement must be in \(0, 1\)/);
  });

  it('empirical: resamples observed tokens by position; fitted parametric matches their mean', () => {
    const text = [
      '{"position":0,"top1Prob":0.9,"entropy":0.3,"margin":0.8,"logitSpread":12,"accepted":true}',
      '{"position":0,"top1Prob":0.8,"entropy":0.5,"margin":0.6,"logitSpread":10,"accepted":true}',
      '',
      '{"position":1,"top1Prob":0.3,"entropy":2.0,"margin":0.1,"logitSpread":4,"accepted":false}',
    ].join('\n');
    const samples = parseAcceptanceSamples(text, 'obs.jsonl');
    expect(samples).to.have.length(3);
    const m = empiricalAcceptance(samples);
    const rng = new Rng(1);
    for (let i = 0; i < 50; i++) {
      expect(m.draw(rng, 0, 0).accepted).to.equal(true);
      const later = m.draw(rng, 0, 5); // beyond the observed positions: the last observed one
      expect(later.accepted).to.equal(false);
      expect(later.features.position).to.equal(5);
    }
    expect(m.meanAcceptance).to.be.closeTo(2 / 3, 1e-12);
    expect(fitParametricAcceptance(samples).agreement).to.be.closeTo(2 / 3, 1e-12);
    expect(() => parseAcceptanceSamples('{"position":0}\n', 'bad.jsonl')).to.throw(AcceptanceModelError, /^bad\.jsonl:1: /);
    expect(() => parseAcceptanceSamples('not json', 'bad.jsonl')).to.throw(AcceptanceModelError, /bad\.jsonl:1: invalid JSON/);
  });
});

describe('sim: server cost and seeds', () => {
  const rows = loadServerProfile(DEFAULT_SERVER_PROFILE);

  it('fits the H200 profile closely and its noise averages to one', () => {
    const cost = serverCostFromProfile(rows, 'qwen3-32b', 0);
    expect(cost.fitMape).to.be.lessThan(0.1);
    for (const r of rows.filter((x) => x.model === 'qwen3-32b' && x.kind === 'grid')) {
      expect(Math.abs(cost.meanBatchMs(rowShapes(r)) - r.msMedian) / r.msMedian, `line ${r.line}`).to.be.lessThan(0.35);
    }
    const noisy = serverCostFromProfile(rows, 'qwen3-32b', 0.1);
    const shapes = [{ n: 5, L: 512 }];
    const rng = new Rng(3);
    let sum = 0;
    for (let i = 0; i < 20_000; i++) sum += noisy.batchMs(shapes, rng);
    expect(sum / 20_000 / noisy.meanBatchMs(shapes)).to.be.closeTo(1, 0.01);
  });

  it('names the models a profile has when asked for another', () => {
    expect(() => serverCostFromProfile(rows, 'llama')).to.throw(ServerProfileError, /no rows of model "llama" \(it has: qwen3-32b, qwen3-8b\)/);
  });

  it('derives distinct, stable seeds per stream and device', () => {
    expect(deriveSeed(1, 1, 0)).to.equal(deriveSeed(1, 1, 0));
    const seeds = new Set<number>();
    for (let s = 1; s <= 3; s++) for (let i = 0; i < 100; i++) seeds.add(deriveSeed(1, s, i));
    expect(seeds.size).to.equal(300);
  });
});
