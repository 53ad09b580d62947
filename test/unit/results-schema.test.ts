import { expect } from 'chai';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isWispError } from '../../common/errors.ts';
import { BenchResultsSchema } from '../../results/schema.ts';
import { writeRunReport } from '../../results/write.ts';
import { scenario } from '../../sim/scenarios.ts';
import { runSweep } from '../../sim/sweep.ts';

describe('results/schema: the one shape of results.json', () => {
  it('a simulated sweep matches it, extras included, and is written as it is', async () => {
    const s = scenario('tiny');
    s.deviceCounts = [2];
    s.durationMs = 5_000;
    s.warmupMs = 500;
    const r = runSweep({ scenario: s, policies: ['wisp', 'centralized'], extrasVariants: false });
    const parsed = BenchResultsSchema.parse(JSON.parse(JSON.stringify(r)));
    expect(parsed.policies.wisp!.points[0].serverMs).to.not.equal(undefined);
    expect((parsed as Record<string, unknown>).scenario).to.deep.include({ server: 'a100-80gb/34b' });
    const dir = await mkdtemp(join(tmpdir(), 'wisp-results-'));
    try {
      await writeRunReport(r, dir);
      expect(JSON.parse(await readFile(join(dir, 'results.json'), 'utf8')).policies.centralized.capacity).to.equal(r.policies.centralized!.capacity);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the writer refuses a document of another shape, naming the field', async () => {
    const bad = { kind: 'sim', policies: { wisp: { capacity: -1, goodputTokS: 0, goodputAtDevices: 0, energyJPerToken: 0, points: [] } }, ratios: {}, slo: { ttftMs: 1, tpotMs: 1 }, attainmentTarget: 0.9 };
    const err = await writeRunReport(bad as never, join(tmpdir(), 'wisp-never-written')).catch((e: unknown) => e);
    expect(isWispError(err, 'bad_results')).to.equal(true);
    expect((err as Error).message).to.contain('policies.wisp.capacity');
  });
});
