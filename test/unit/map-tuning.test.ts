import { expect } from 'chai';
import { POLICIES } from '../../config/schema.ts';
import { SchedulerKnobsSchema } from '../../config/schema.ts';
import { DEFAULT_CONFIG } from '../../config/defaults.ts';
import { runMapTask } from '../../sim/map.ts';
import { beats, DEFAULT_SETTINGS_LABEL, tuneSettings, tuningCandidates, type CandidateFigures, type TuningCandidate } from '../../sim/map-tuning.ts';

describe('sim map: each policy at its best settings per cell', () => {
  it('tries the defaults first, then one knob at a time; every candidate is a valid scheduler setting', () => {
    for (const p of POLICIES) {
      const c = tuningCandidates(p);
      expect(c[0], p).to.deep.equal({ label: DEFAULT_SETTINGS_LABEL, scheduler: {} });
      expect(new Set(c.map((x) => x.label)).size, `${p}: labels unique`).to.equal(c.length);
      for (const x of c) {
        const { pipelinedDrafting: _p, policy: _q, ...knobs } = DEFAULT_CONFIG.scheduler;
        expect(SchedulerKnobsSchema.omit({ pipelinedDrafting: true }).safeParse({ ...knobs, ...x.scheduler }).success, `${p}: ${x.label}`).to.equal(true);
      }
    }
    expect(tuningCandidates('sled').map((c) => c.label)).to.include('wait 0 ms');
    expect(tuningCandidates('centralized').map((c) => c.label)).to.not.include('wait 0 ms');
  });

  it('keeps the largest capacity, then the highest goodput; later searches start at the best so far; a censored best ends it', () => {
    const cands: TuningCandidate[] = ['defaults', 'a', 'b', 'c'].map((label) => ({ label, scheduler: {} }));
    const figures: Record<string, CandidateFigures> = {
      defaults: { capacity: 8, goodputTokS: 100, censored: false },
      a: { capacity: 0, goodputTokS: 0, censored: false }, // failed at its first load (8)
      b: { capacity: 8, goodputTokS: 120, censored: false },
      c: { capacity: 6, goodputTokS: 500, censored: false },
    };
    const starts: [string, number][] = [];
    const r = tuneSettings(cands, 1, (c, start) => {
      starts.push([c.label, start]);
      return figures[c.label];
    });
    expect(starts).to.deep.equal([['defaults', 1], ['a', 8], ['b', 8], ['c', 8]]);
    expect(r.chosen.label).to.equal('b');
    expect(r.tried.map((t) => t.label)).to.deep.equal(['defaults', 'a', 'b', 'c']);
    expect(beats(figures.c, figures.b)).to.equal(false);

    const censored = tuneSettings(cands, 1, (c) => ({ capacity: 512, goodputTokS: 1, censored: c.label === 'defaults' }));
    expect(censored.tried.map((t) => t.label)).to.deep.equal(['defaults']);
  });

  it('a tuned cell is never below its defaults, and names the settings that won', function () {
    this.timeout(120_000);
    const cell = { server: 'a40-48gb/7b', tpotMs: 60, mix: 'jetson-orin-nano', agreement: 0.85 };
    const settings = { durationS: 20, warmupS: 2, search: { start: 1, max: 64, precision: 0.25 } };
    const plain = runMapTask({ cell, policy: 'centralized', settings: { ...settings, tune: false }, seed: 1 });
    const tuned = runMapTask({ cell, policy: 'centralized', settings: { ...settings, tune: true }, seed: 1 });
    expect(plain.settings).to.equal(DEFAULT_SETTINGS_LABEL);
    expect(plain.tried).to.have.length(1);
    expect(tuned.tried[0]).to.deep.equal(plain.tried[0]);
    expect(tuned.tried.map((t) => t.settings)).to.deep.equal(tuningCandidates('centralized').map((c) => c.label).slice(0, tuned.tried.length));
    expect(tuned.result.capacity).to.be.at.least(plain.result.capacity);
    const winner = tuned.tried.find((t) => t.settings === tuned.settings)!;
    expect(winner.capacity).to.equal(tuned.result.capacity);
    for (const t of tuned.tried) expect(t.capacity, t.settings).to.be.at.most(tuned.result.capacity);
    // The runs of each candidate are kept, named by their settings.
    expect(tuned.runs.some((r) => r.key.includes('(budget 512)'))).to.equal(true);
  });
});
