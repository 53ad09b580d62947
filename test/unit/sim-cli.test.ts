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
      expect(Object.keys(results.policies)).to.deep.equal(['wisp', 'sled', 'centralized', 'adaptive']);
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

  it('runs any engine with --server and names the server in the report; refuses one that does not fit', async () => {
    const out = await mkdtemp(join(tmpdir(), 'wisp-sim-server-'));
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [bin, 'sim', '--scenario', 'tiny', '--server', 'h100-80gb/7b', '--devices', '2', '--duration-s', '4', '--no-variants', '--policies', 'centralized', '--json', '--out', out]);
      const results = JSON.parse(stdout.trim().split('\n').pop()!) as { scenario: { server: string; serverDescription: string; kvCapacityTokens: number } };
      expect(results.scenario.server).to.equal('h100-80gb/7b');
      expect(results.scenario.serverDescription).to.contain('H100').and.contain('Llama-2-7B');
      expect(results.scenario.kvCapacityTokens).to.be.greaterThan(10_000);
      expect(stdout).to.contain('Where the time goes').and.contain('server: decode');
      expect(await readFile(join(out, 'report.md'), 'utf8')).to.contain('Server: **h100-80gb/7b**');
    } finally {
      await rm(out, { recursive: true, force: true });
    }
    const err = await promisify(execFile)(process.execPath, [bin, 'sim', '--server', 'a40-48gb/34b']).then(
      () => null,
      (e: { stderr: string }) => e,
    );
    expect(err?.stderr).to.equal('wisp: [bad_server_spec] model 34b does not fit on a40-48gb: 67.5 GB of bf16 weights and a 16384-token KV cache need more than the 43.5 GB the engine may use\n');
  });

  it('sim map: cells as the last line with --json, heatmaps, a table and results.json in the report folder', async () => {
    const out = await mkdtemp(join(tmpdir(), 'wisp-map-'));
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [
        bin, 'sim', 'map', '--servers', 'a100-80gb/34b', '--tpot-ms', '150', '--mixes', 'jetson-orin-nano;phone', '--agreements', '0.85',
        '--duration-s', '8', '--warmup-s', '1', '--max-devices', '4', '--jobs', '2', '--json', '--out', out,
      ]);
      const doc = JSON.parse(stdout.trim().split('\n').pop()!) as { cells: { server: string; tpotMs: number; mix: string; agreement: number; policies: Record<string, { capacity: number; goodputTokS: number }> }[] };
      expect(doc.cells.map((c) => [c.server, c.tpotMs, c.mix, c.agreement])).to.deep.equal([
        ['a100-80gb/34b', 150, 'jetson-orin-nano', 0.85],
        ['a100-80gb/34b', 150, 'phone', 0.85],
      ]);
      for (const c of doc.cells) {
        expect(Object.keys(c.policies)).to.deep.equal(['wisp', 'sled', 'centralized', 'adaptive']);
        for (const f of Object.values(c.policies)) expect(f.capacity).to.be.within(0, 4);
      }
      expect((await readdir(out)).sort()).to.deep.equal(['capacity-adaptive-vs-centralized.svg', 'capacity-adaptive-vs-sled.svg', 'capacity-adaptive-vs-wisp.svg', 'capacity-wisp-vs-centralized.svg', 'capacity-wisp-vs-sled.svg', 'report.md', 'results.json']);
      const report = await readFile(join(out, 'report.md'), 'utf8');
      expect(report).to.contain('Capacity precision').and.contain('| a100-80gb/34b | 150 | Jetson | 0.85 |');
      expect(await readFile(join(out, 'capacity-wisp-vs-centralized.svg'), 'utf8')).to.match(/^<svg[\s\S]*<\/svg>$/);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });

  it('sim map refuses an unknown server or device profile before running anything', async () => {
    const fail = (args: string[]) =>
      promisify(execFile)(process.execPath, [bin, 'sim', 'map', ...args]).then(
        () => null,
        (e: { stderr: string }) => e,
      );
    expect((await fail(['--servers', 'a100-80gb/13b']))?.stderr).to.contain('unknown model "13b"');
    expect((await fail(['--mixes', 'jetson-orin-nano;toaster']))?.stderr).to.contain('unknown device profile "toaster"');
    expect((await fail(['--agreements', '1.2']))?.stderr).to.contain('--agreements: every agreement must be in (0, 1)');
  });

  it('wisp server-cost prints a pass\'s modelled time with its breakdown, or {ms, parts} with --json', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [bin, 'server-cost', '--gpu', 'a100-80gb', '--model', '34b', '--batch', '32x5@2048']);
    expect(stdout).to.match(/^a100-80gb\/34b: NVIDIA A100 SXM 80 GB, 34B-class dense decoder \(CodeLlama-34B shapes, standing in for Qwen3-32B\)\n/);
    expect(stdout).to.match(/pass: 32 × 5 @ 2048 \(160 tokens, 65696 KV positions read, 160 logit rows\)/);
    expect(stdout).to.match(/ {2}total +\d+\.\d\d ms/);
    const json = await promisify(execFile)(process.execPath, [bin, 'server-cost', '--server', 'a100-80gb/34b', '--prefill', '1x512', '--json']);
    const r = JSON.parse(json.stdout) as { ms: number; parts: Record<string, number> };
    expect(Object.keys(r)).to.deep.equal(['ms', 'parts']);
    expect(Object.keys(r.parts)).to.deep.equal(['linear', 'attention', 'lmHead', 'overhead']);
    expect(r.ms).to.be.closeTo(r.parts.linear + r.parts.attention + r.parts.lmHead + r.parts.overhead, 1e-9);
    const bad = await promisify(execFile)(process.execPath, [bin, 'server-cost', '--server', 'a100-80gb/34b', '--batch', '32x5']).then(
      () => null,
      (e: { stderr: string }) => e,
    );
    expect(bad?.stderr).to.contain('[bad_pass_spec]').and.contain('needs its cached length');
  });
});
