import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { ForgeRecord } from '../../inference/forge/index.ts';

const run = promisify(execFile);
const WISP = resolve('bin/wisp.js');

describe('wisp models forge (CLI)', function () {
  this.timeout(60_000);
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wisp-forge-cli-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('forges with every option and prints where it wrote and how long it took', async () => {
    const out = join(dir, 'pair');
    const { stdout } = await run('node', [WISP, 'models', 'forge', '--preset', 'tiny', '--seed', '5', '--agreement', '0.7', '--gqa', '2', '--merged', '--drafts', '1,2', '--out', out]);
    expect(stdout).to.match(new RegExp(`^forged tiny pair in \\d+ ms → ${out}\\n`));
    expect(stdout).to.contain(`target   ${join(out, 'target')}  (4 layers, d 128, heads 4/2 kv, vocab 1024, context 512)`);
    expect(stdout).to.contain(`draft    ${join(out, 'draft-2')}  (2 layers)`);
    const rec = JSON.parse(await readFile(join(out, 'forge.json'), 'utf8')) as ForgeRecord;
    expect(rec.options).to.deep.include({ preset: 'tiny', seed: 5, agreement: 0.7, merged: true, drafts: [1, 2] });
    expect(rec.options.dims.numKvHeads).to.equal(2);
  });

  it('refuses a bad option with the flag named', async () => {
    const err = (await run('node', [WISP, 'models', 'forge', '--agreement', '1.5', '--out', join(dir, 'x')]).catch((e: unknown) => e)) as { code: number; stderr: string };
    expect(err.code).to.equal(1);
    expect(err.stderr).to.equal('wisp: [invalid_options] --agreement: Too big: expected number to be <=0.95\n');
    const err2 = (await run('node', [WISP, 'models', 'forge', '--drafts', '1,4', '--out', join(dir, 'y')]).catch((e: unknown) => e)) as { code: number; stderr: string };
    expect(err2.stderr).to.equal('wisp: [forge_options_invalid] invalid forge options: draft depth 4 must be an integer in 1..3\n');
  });
});
