import { expect } from 'chai';
import { capacity, type BenchResults, type PolicyResult } from '../../results/metrics.ts';
import { charts, paperComparisonTable, reportMarkdown, svgLineChart } from '../../results/report.ts';
import { scenario, type Scenario } from '../../sim/scenarios.ts';
import { runSweep, sweepVariants } from '../../sim/sweep.ts';


function small(): Scenario {
  const s = scenario('tiny');
  s.deviceCounts = [1, 4, 12];
  s.durationMs = 8_000;
  s.warmupMs = 1_000;
  return s;
}

/** Results without wall-clock fields, for comparing runs. */
function stable(r: BenchResults): unknown {
  return JSON.parse(JSON.stringify(r, (k, v) => (k === 'wallMs' || k === 'wallS' ? 0 : v)));
}

describe('sim: sweeps', () => {
  it('lists the policies, then WISP with each extra off', () => {
    const s = small();
    expect(sweepVariants(s, ['wisp', 'sled', 'centralized'], true).map((v) => [v.key, v.pipelinedDrafting, v.truncation])).to.deep.equal([
      ['wisp', true, true],
      ['sled', false, false],
      ['centralized', false, false],
      ['wisp-no-pipelining', false, true],
      ['wisp-no-truncation', true, false],
      ['wisp-no-extras', false, false],
    ]);
    s.pipelinedDrafting = false;
    expect(sweepVariants(s, ['wisp'], true).map((v) => v.key)).to.deep.equal(['wisp', 'wisp-no-truncation', 'wisp-no-extras']);
    expect(sweepVariants(s, ['sled'], true).map((v) => v.key)).to.deep.equal(['sled']);
  });

  it('computes capacity, goodput and ratios as defined, deterministically for a seed', () => {
    const s = small();
    s.refineSteps = 2;
    const a = runSweep({ scenario: s, policies: ['wisp', 'sled', 'centralized'], extrasVariants: false });
    const b = runSweep({ scenario: s, policies: ['wisp', 'sled', 'centralized'], extrasVariants: false });
    expect(stable(a)).to.deep.equal(stable(b));
    expect(Object.keys(a.policies)).to.deep.equal(['wisp', 'sled', 'centralized']);
    for (const r of Object.values(a.policies) as PolicyResult[]) {
      // Capacity by the definition over the points actually run (swept and bisected).
      expect(r.capacity).to.equal(capacity(r.points));
      const best = Math.max(...r.points.map((p) => p.goodputTokS));
      expect(r.goodputTokS).to.equal(best);
      for (const p of r.points) expect(p.attainment).to.be.within(0, 1);
      expect(r.points.length).to.be.at.least(3);
    }
    const { wisp, sled, centralized } = a.policies as Record<string, PolicyResult>;
    expect(a.ratios.vsSled?.goodput).to.equal(sled.goodputTokS === 0 ? null : wisp.goodputTokS / sled.goodputTokS);
    expect(a.ratios.vsCentralized?.capacity).to.equal(centralized.capacity === 0 ? null : wisp.capacity / centralized.capacity);
    // The same prompts for every policy: the lightest load's sessions are the same in number per policy (closed loop, one device).
    expect(a.kind).to.equal('sim');
    expect(a.slo).to.deep.equal(s.slo);
  });

  it('bisects between the last passing and the first failing count', () => {
    const s = small();
    s.deviceCounts = [1, 64];
    s.refineSteps = 3;
    const r = runSweep({ scenario: s, policies: ['sled'], extrasVariants: false }).policies.sled!;
    const devices = r.points.map((p) => p.devices);
    expect(devices[0]).to.equal(1);
    expect(devices[devices.length - 1]).to.equal(64);
    // 64 overloads one worker in this scenario; the bisection adds points in between.
    expect(r.points.find((p) => p.devices === 64)!.attainment).to.be.lessThan(0.9);
    expect(devices.length).to.equal(2 + 3);
    expect(r.capacity).to.equal(capacity(r.points));
  });

  it('renders charts, the paper comparison and report.md', () => {
    const s = small();
    s.deviceCounts = [1, 4];
    const res = runSweep({ scenario: s, policies: ['wisp', 'sled', 'centralized'], extrasVariants: true });
    const c = charts(res);
    expect(c.goodput).to.match(/^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    expect((c.goodput.match(/<polyline /g) ?? []).length).to.equal(6); // 3 policies + 3 WISP variants
    expect(c.attainment).to.contain('stroke-dasharray'); // the 90 % line
    const table = paperComparisonTable(res);
    expect(table).to.contain('| WISP paper (A100) | — | — | — | — | 2.10x | 4.10x | 1.94x | 3.70x |');
    expect(table.split('\n')).to.have.length(2 + 1 + 4);
    const md = reportMarkdown(res, { goodput: 'goodput.svg', attainment: 'attainment.svg' });
    expect(md).to.contain(`TTFT ≤ ${s.slo.ttftMs} ms and mean TPOT ≤ ${s.slo.tpotMs} ms`);
    expect(md).to.contain('![goodput](goodput.svg)');
    const empty = svgLineChart({ title: 'none', xLabel: 'x', yLabel: 'y', series: [] });
    expect(empty).to.contain('</svg>');
  });

  it('keeps the measured naive server as scenario hf-eager-h200 (a padded profile), and names each server', () => {
    const s = scenario('hf-eager-h200');
    s.deviceCounts = [2];
    s.durationMs = 6_000;
    s.warmupMs = 1_000;
    s.refineSteps = 0;
    const r = runSweep({ scenario: s, policies: ['wisp'], extrasVariants: false });
    const sc = r.scenario as { server: string; serverDescription: string; kvCapacityTokens: number | null };
    expect(sc.server).to.equal('profile:qwen3-32b');
    expect(sc.serverDescription).to.contain('Hugging Face transformers').and.contain('padded');
    expect(sc.kvCapacityTokens).to.equal(null);
    expect(r.policies.wisp!.points[0].sessions).to.be.greaterThan(0);
    const paper = scenario('paper');
    expect(paper.server).to.deep.equal({ kind: 'engine', id: 'a100-80gb/34b', kvLimit: true });
    expect(scenario('h100').server).to.deep.include({ id: 'h100-80gb/34b' });
    expect(scenario('sled').server).to.deep.include({ id: 'a40-48gb/7b' });
  });
});
