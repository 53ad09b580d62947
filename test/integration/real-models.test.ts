/**
 * Running with models of one's own (docs/operations.md, "Real models"): a device profile's
 * draft may live anywhere (an absolute path), and a draft whose tokenizer differs from the
 * target's is refused when the edge role starts, with an error naming both folders and the
 * difference. No real export can be downloaded here, so two forged pairs with different
 * vocabularies stand in for, say, a Qwen3 draft paired with a Llama target.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { checkDraftTokenizer, draftModelName, resolveDraftDir } from '../../actors/edge/draft-models.ts';
import { DEVICE_PROFILES } from '../../config/defaults.ts';
import { ensureModelPair, forgeModels } from '../../inference/forge/index.ts';
import { TokenizerMismatchError } from '../../inference/errors.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import { generateTarget } from '../../inference/speculative.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { startTestSystem } from '../helpers/system.ts';

const WISP = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'wisp.js');

describe('real models: per-device draft paths and the tokenizer check (integration)', function () {
  this.timeout(120_000);
  let dir: string;
  let tiny: Awaited<ReturnType<typeof ensureModelPair>>;
  /** A model root whose target is the tiny pair's and whose draft-1 comes from a pair with a 2048-token vocabulary. */
  let mixed: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'wisp-real-models-'));
    tiny = await ensureModelPair('tiny');
    // A second pair with another vocabulary (β set directly: no calibration needed for this).
    await forgeModels({ preset: 'tiny', vocabSize: 2048, beta: 0.1, outDir: join(dir, 'other') });
    mixed = join(dir, 'mixed');
    mkdirSync(mixed);
    symlinkSync(tiny.targetDir, join(mixed, 'target'));
    symlinkSync(join(dir, 'other', 'draft-1'), join(mixed, 'draft-1'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('resolves a profile\'s draft under the model root or at its own path, and names it for the wire', () => {
    expect(resolveDraftDir('/models/pair', 'draft-1')).to.equal('/models/pair/draft-1');
    expect(resolveDraftDir('/models/pair', '/opt/qwen3-0.6b-onnx')).to.equal('/opt/qwen3-0.6b-onnx');
    expect(draftModelName('draft-1')).to.equal('draft-1');
    expect(draftModelName('/opt/Qwen3-0.6B-ONNX/')).to.equal('Qwen3-0.6B-ONNX');
    expect(draftModelName('/opt/my model (int4)')).to.equal('my_model__int4_');
  });

  it('accepts a draft that shares the target\'s tokenizer and refuses one that does not', async () => {
    expect(await checkDraftTokenizer(tiny.targetDir, tiny.draftDirs[0])).to.match(/^[0-9a-f]{12}$/);
    const err = await checkDraftTokenizer(tiny.targetDir, join(dir, 'other', 'draft-1')).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(TokenizerMismatchError);
    expect((err as TokenizerMismatchError).code).to.equal('tokenizer_mismatch');
    expect((err as Error).message).to.equal(
      `tokenizer does not match the model: draft ${join(dir, 'other', 'draft-1')} and target ${tiny.targetDir} have different tokenizers (vocabularies of 1023 vs 2047 entries); a draft must use the target's tokenizer.json`,
    );
  });

  it('`wisp edge` with a mismatched pair stops at start with that error', async () => {
    const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [WISP, 'edge', '--devices', '1', '--model-dir', mixed, '--profile', 'raspberry-pi-5'], {
        env: { ...process.env, WISP_LOG_LEVEL: 'error', WISP_TRACING: 'false', WISP_METRICS_PORT: '0' },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let err = '';
      child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
      child.on('exit', (c) => resolve({ code: c, stderr: err }));
    });
    expect(code).to.equal(1);
    expect(stderr).to.contain(`wisp: [tokenizer_mismatch] tokenizer does not match the model: draft ${join(mixed, 'draft-1')} and target ${join(mixed, 'target')} have different tokenizers`);
  });

  it('a device profile whose draft is an absolute path serves sessions losslessly', async () => {
    const prompts = ['once upon a time', 'the old house on the hill'];
    // What the target alone produces (greedy): speculative output must equal it.
    const target = await loadDecoder(tiny.targetDir, { threads: 1 });
    const tok = await loadTokenizer(tiny.targetDir);
    const expected: number[][] = [];
    for (const p of prompts) expected.push((await generateTarget(target, tok.encode(p), { maxNewTokens: 12, sampling: { temperature: 0, topP: 1, seed: 0 }, eosTokenId: target.info.eosTokenId })).tokens);
    await target.dispose();
    const profile = { ...DEVICE_PROFILES['raspberry-pi-5'], draftModel: tiny.draftDirs[0] };
    const sys = await startTestSystem({ devices: 2, workers: 1, profiles: ['own-draft'] }, { devices: { 'own-draft': profile } });
    try {
      const results = await Promise.all(prompts.map((prompt) => sys.client.submit({ prompt, maxNewTokens: 12 })));
      results.forEach((r, i) => {
        expect(r.error).to.equal(null);
        expect(r.tokens).to.deep.equal(expected[i]);
      });
    } finally {
      await sys.stop();
    }
  });
});
