import { expect } from 'chai';
import { ATTAINMENT_TARGET } from '../../results/metrics.ts';
import { bestPolicy, mapTable, ratioText, svgRatioHeatmap } from '../../sim/map-report.ts';
import { assembleCells, capacityRatio, cellScenario, checkGrid, DEFAULT_MAP_GRID, DEFAULT_MAP_SETTINGS, mapCells, mapTasks, type MapCell, type MapGrid, type MapTaskResult } from '../../sim/map.ts';
import { runMapTasks } from '../../sim/map-runner.ts';
import { scenario } from '../../sim/scenarios.ts';
import { searchCapacity, sweepVariants, type RunSummary } from '../../sim/sweep.ts';

const small: MapGrid = { servers: ['a100-80gb/34b'], tpotMs: [150], mixes: ['jetson-orin-nano'], agreements: [0.85], policies: ['wisp', 'centralized'], seed: 1 };
const quick = { durationS: 12, warmupS: 1, search: { start: 1, max: 8, precision: 0.125 }, tune: false };

describe('sim: the regime map', () => {
  it('enumerates the default grid: 3 servers × 4 SLOs × 3 mixes × 2 agreements, in a fixed order', () => {
    const cells = mapCells(DEFAULT_MAP_GRID);
    expect(cells).to.have.length(72);
    expect(cells[0]).to.deep.equal({ server: 'a40-48gb/7b', tpotMs: 40, mix: 'jetson-orin-nano', agreement: 0.7 });
    expect(cells[1].agreement).to.equal(0.85);
    expect(mapTasks(DEFAULT_MAP_GRID, DEFAULT_MAP_SETTINGS)).to.have.length(288);
    expect(() => checkGrid({ ...small, tpotMs: [] })).to.throw(/--tpot-ms: at least one value/);
    expect(() => checkGrid({ ...small, mixes: ['phone:0'] })).to.throw(/weight > 0/);
  });

  it('a cell is the paper scenario with its server, TPOT SLO, devices and agreement', () => {
    const s = cellScenario({ server: 'h100-80gb/34b', tpotMs: 60, mix: 'jetson-orin-nano:1,raspberry-pi-5:3', agreement: 0.85 }, DEFAULT_MAP_SETTINGS, 7);
    const paper = scenario('paper');
    expect(s.server).to.deep.equal({ kind: 'engine', id: 'h100-80gb/34b', kvLimit: true });
    expect(s.slo).to.deep.equal({ ttftMs: paper.slo.ttftMs, tpotMs: 60 });
    expect(s.classes.map((c) => [c.name, c.weight, c.acceptance.agreement])).to.deep.equal([
      ['jetson-orin-nano', 1, 0.85],
      ['raspberry-pi-5', 3, 0.85],
    ]);
    expect(s.workload).to.deep.equal(paper.workload);
    expect([s.durationMs, s.warmupMs, s.seed]).to.deep.equal([60_000, 10_000, 7]);
  });

  it('searches capacity by doubling, then bisecting to the stated precision; a pass at the largest count is censored', () => {
    const s = cellScenario({ server: 'a100-80gb/34b', tpotMs: 150, mix: 'jetson-orin-nano', agreement: 0.85 }, quick, 1);
    const v = sweepVariants(s, ['centralized'], false)[0];
    const runs: RunSummary[] = [];
    const capped = searchCapacity({ scenario: s, policies: ['centralized'], extrasVariants: false }, v, { start: 1, max: 8, precision: 0.125 }, runs, { n: 0 });
    expect(runs.map((r) => r.devices)).to.deep.equal([1, 2, 4, 8]);
    expect(capped.censored).to.equal(true);
    expect(capped.capacity).to.equal(8);
    // A strict SLO the server cannot meet for many sessions: the search brackets the capacity.
    const strict = { ...s, slo: { ...s.slo, tpotMs: 60 } };
    const runs2: RunSummary[] = [];
    const r = searchCapacity({ scenario: strict, policies: ['centralized'], extrasVariants: false }, v, { start: 1, max: 512, precision: 0.125 }, runs2, { n: 0 });
    expect(r.censored).to.equal(false);
    const failing = r.points.filter((p) => p.attainment < ATTAINMENT_TARGET && p.devices > r.capacity).map((p) => p.devices);
    expect(failing.length).to.be.greaterThan(0);
    expect(Math.min(...failing) - r.capacity).to.be.at.most(Math.max(1, 0.125 * r.capacity));
  });

  it('runs the same map on one thread or two (deterministic searches), and assembles cells in grid order', async function () {
    this.timeout(60_000);
    const tasks = mapTasks({ ...small, tpotMs: [60, 150] }, quick);
    const one = await runMapTasks(tasks, 1);
    const two = await runMapTasks(tasks, 2);
    const strip = (rs: MapTaskResult[]) => JSON.stringify(rs.map((r) => ({ ...r, runs: r.runs.map((x) => ({ ...x, wallMs: 0 })) })));
    expect(strip(two)).to.equal(strip(one));
    const cells = assembleCells({ ...small, tpotMs: [60, 150] }, [...two].reverse());
    expect(cells.map((c) => c.tpotMs)).to.deep.equal([60, 150]);
    expect(Object.keys(cells[0].policies)).to.deep.equal(['wisp', 'centralized']);
  });

  it('ratios, the best policy, the table and the heatmap', () => {
    const f = (capacity: number, goodputTokS = 1, censored = false) => ({ capacity, goodputTokS, censored, settings: 'defaults' });
    expect(capacityRatio(f(8), f(4))).to.equal(2);
    expect(capacityRatio(f(3), f(0))).to.equal(Infinity);
    expect(capacityRatio(f(0), f(0))).to.equal(null);
    expect([ratioText(2), ratioText(Infinity), ratioText(null)]).to.deep.equal(['2.00x', '∞', '—']);
    const cell: MapCell = { server: 'a100-80gb/34b', tpotMs: 60, mix: 'phone', agreement: 0.7, policies: { wisp: f(8, 300), sled: f(2), centralized: f(8, 200, true) } };
    expect(bestPolicy(cell)).to.equal('wisp');
    expect(bestPolicy({ ...cell, policies: { wisp: f(0), centralized: f(0) } })).to.equal('none');
    const g: MapGrid = { ...small, mixes: ['phone'], tpotMs: [60], agreements: [0.7], policies: ['wisp', 'sled', 'centralized'] };
    const table = mapTable([cell], g);
    expect(table).to.contain('| a100-80gb/34b | 60 | phone | 0.7 | 8 | 2 | ≥8 | 300 | 1 | 200 | 1.00x | 4.00x | wisp | defaults | defaults | defaults |');
    const svg = svgRatioHeatmap([cell], g, 'wisp', 'sled', 'Capacity of wisp ÷ sled');
    expect(svg).to.contain('4.00x').and.contain('8/2').and.contain('a100-80gb/34b · phone');
  });
});
