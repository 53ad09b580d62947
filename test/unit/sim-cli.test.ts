import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const bin = fileURLToPath(new URL('../../bin/wisp.js', import.meta.url));

describe('wisp sim (CLI)', function () {
  this.timeout(60_000);

  it('prints the summary and, with --json, the results as the last line; writes the report folder', async () => {
    const out = await mkdtemp(join(tmpdir(), 'wisp-sim-'));
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [bin, 'sim', '--scenario', 'tiny', '--devices', '1,3', '--duration-s', '4', '--no-variants', '--json', '--out', out]);
      const lines = stdout.trim().split('\n');
      const results = JSON.parse(lines[lines.length - 1]) as { kind: string; policies: Record<string, { capacity: number; goodputTokS: number }>; ratios: object };
      expect(results.kind).to.equal('sim');
      expect(Object.keys(results.policies)).to.deep.equal(['wisp', 'sled', 'centralized']);
      for (const p of Object.values(results.policies)) {
        expect(p.capacity).to.be.a('number');
        expect(p.goodputTokS).to.be.greaterThan(0);
      }
      expect(stdout).to.contain('WISP ratios:');
      expect((await readdir(out)).sort()).to.deep.equal(['attainment.svg', 'goodput.svg', 'report.md', 'results.json']);
      expect(JSON.parse(await readFile(join(out, 'results.json'), 'utf8'))).to.deep.include({ kind: 'sim' });
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });

  it('--replay refuses a folder that is no replayable bench report, saying why', async () => {
    const run = (dir: string) =>
      promisify(execFile)(process.execPath, [bin, 'sim', '--replay', dir]).then(
        () => null,
        (e: { stderr: string; code: number }) => e,
      );
    const missing = await run(join(tmpdir(), 'wisp-no-such-report'));
    expect(missing?.code).to.equal(1);
    expect(missing?.stderr).to.contain('--replay takes a folder written by wisp bench');
    const old = await mkdtemp(join(tmpdir(), 'wisp-old-report-'));
    try {
      await writeFile(join(old, 'results.json'), JSON.stringify({ kind: 'bench', policies: {}, slo: { ttftMs: 1, tpotMs: 1 } }));
      const stale = await run(old);
      expect(stale?.stderr).to.contain('not a live bench report the simulator can replay').and.contain('need a new wisp bench run');
    } finally {
      await rm(old, { recursive: true, force: true });
    }
  });

  it('names a bad option value', async () => {
    const err = await promisify(execFile)(process.execPath, [bin, 'sim', '--policies', 'wisp,fifo']).then(
      () => null,
      (e: { stderr: string }) => e,
    );
    expect(err?.stderr).to.contain('--policies: unknown policy "fifo"');
  });
});
