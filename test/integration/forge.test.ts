import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { FORGE_CORPUS } from '../../inference/forge/corpus.ts';
import {
  AGREEMENT_PROMPTS,
  corpusSequences,
  measureGreedyAgreement,
  measureTeacherForcedAgreement,
} from '../../inference/forge/agreement.ts';
import { ensureModelPair, forgeModels, type ForgeRecord } from '../../inference/forge/index.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';

const run = promisify(execFile);

async function filesUnder(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(root, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name).slice(root.length + 1));
  }
  return out.sort();
}

async function measure(targetDir: string, draftDir: string): Promise<{ teacher: number; greedy: number }> {
  const tok = await loadTokenizer(targetDir);
  const t = await loadDecoder(targetDir, { threads: 1 });
  const d = await loadDecoder(draftDir, { threads: 1 });
  try {
    const teacher = (await measureTeacherForcedAgreement(t, d, corpusSequences(tok))).agreement;
    const greedy = (await measureGreedyAgreement(t, d, AGREEMENT_PROMPTS.map((p) => tok.encode(p)), 24)).agreement;
    return { teacher, greedy };
  } finally {
    await t.dispose();
    await d.dispose();
  }
}

describe('model forge', function () {
  this.timeout(120_000);
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wisp-forge-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes the Optimum layout: target/, draft-<depth>/, forge.json, shared tokenizer files', async () => {
    const m = await forgeModels({ preset: 'tiny', seed: 3, drafts: [1, 2], outDir: join(dir, 'a') });
    expect(await filesUnder(join(dir, 'a'))).to.deep.equal([
      'draft-1/config.json', 'draft-1/model.onnx', 'draft-1/tokenizer.json', 'draft-1/tokenizer_config.json',
      'draft-2/config.json', 'draft-2/model.onnx', 'draft-2/tokenizer.json', 'draft-2/tokenizer_config.json',
      'forge.json',
      'target/config.json', 'target/model.onnx', 'target/tokenizer.json', 'target/tokenizer_config.json',
    ]);
    expect(m.targetDir).to.equal(join(dir, 'a', 'target'));
    expect(m.draftDirs).to.deep.equal([join(dir, 'a', 'draft-1'), join(dir, 'a', 'draft-2')]);
    const cfg = JSON.parse(await readFile(join(m.targetDir, 'config.json'), 'utf8'));
    expect(cfg).to.deep.include({
      model_type: 'wisp_forged', vocab_size: 1024, num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 4,
      hidden_size: 128, head_dim: 32, max_position_embeddings: 512, eos_token_id: 1023, bos_token_id: 1023,
    });
    expect(cfg.wisp).to.deep.include({ seed: 3, agreement: 0.8, role: 'target' });
    const draftCfg = JSON.parse(await readFile(join(m.draftDirs[1], 'config.json'), 'utf8'));
    expect(draftCfg).to.deep.include({ num_hidden_layers: 2, _name_or_path: 'wisp-tiny-s3-draft-2' });
    expect(cfg._name_or_path).to.equal('wisp-tiny-s3-target');
    expect(draftCfg.wisp).to.deep.include({ role: 'draft', draftDepth: 2 });
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
      const a = await readFile(join(m.targetDir, f));
      expect(a.equals(await readFile(join(m.draftDirs[0], f)))).to.equal(true);
      expect(a.equals(await readFile(join(m.draftDirs[1], f)))).to.equal(true);
    }
    const rec = JSON.parse(await readFile(join(dir, 'a', 'forge.json'), 'utf8')) as ForgeRecord;
    expect(rec.options.seed).to.equal(3);
    expect(rec.beta).to.equal(m.beta);
    expect(rec.calibration!.agreement).to.be.closeTo(0.8, 0.02);
  });

  it('is deterministic: the same seed gives identical bytes, another seed other weights', async () => {
    await forgeModels({ preset: 'tiny', seed: 3, drafts: [1, 2], outDir: join(dir, 'b') });
    await forgeModels({ preset: 'tiny', seed: 4, drafts: [1, 2], outDir: join(dir, 'c') });
    for (const f of await filesUnder(join(dir, 'a'))) {
      const a = await readFile(join(dir, 'a', f));
      expect(a.equals(await readFile(join(dir, 'b', f))), `${f} same seed`).to.equal(true);
    }
    for (const f of ['target/model.onnx', 'draft-1/model.onnx', 'forge.json']) {
      const a = await readFile(join(dir, 'a', f));
      expect(a.equals(await readFile(join(dir, 'c', f))), `${f} other seed`).to.equal(false);
    }
    // The tokenizer does not depend on the seed.
    const t = await readFile(join(dir, 'a', 'target/tokenizer.json'));
    expect(t.equals(await readFile(join(dir, 'c', 'target/tokenizer.json')))).to.equal(true);
  });

  it('the draft is the target’s first layer: with β = 0 their logits coincide', async () => {
    const m = await forgeModels({ preset: 'tiny', seed: 9, beta: 0, outDir: join(dir, 'beta0') });
    const t = await loadDecoder(m.targetDir, { threads: 1 });
    const d = await loadDecoder(m.draftDirs[0], { threads: 1 });
    try {
      const tokens = [1023, 100, 200, 300, 400, 500];
      const [lt] = await t.forward([{ cache: t.newCache(), tokens }]);
      const [ld] = await d.forward([{ cache: d.newCache(), tokens }]);
      let diff = 0;
      for (let i = 0; i < lt.length; i++) diff = Math.max(diff, Math.abs(lt[i] - ld[i]));
      expect(diff).to.be.below(1e-4);
    } finally {
      await t.dispose();
      await d.dispose();
    }
  });

  it('the agreement setting moves measured draft/target agreement the right way', async () => {
    const low = await forgeModels({ preset: 'tiny', seed: 2, agreement: 0.6, outDir: join(dir, 'agree-low') });
    const high = await forgeModels({ preset: 'tiny', seed: 2, agreement: 0.9, outDir: join(dir, 'agree-high') });
    expect(low.beta).to.be.above(high.beta);
    const lo = await measure(low.targetDir, low.draftDirs[0]);
    const hi = await measure(high.targetDir, high.draftDirs[0]);
    expect(hi.teacher).to.be.above(lo.teacher);
    expect(hi.greedy).to.be.above(lo.greedy);
    // Calibrated on part of the corpus; over all of it the teacher-forced agreement lands close.
    expect(lo.teacher).to.be.closeTo(0.6, 0.07);
    expect(hi.teacher).to.be.closeTo(0.9, 0.07);
  });

  it('the target writes word-like text (corpus words) under greedy decoding', async () => {
    const pair = await ensureModelPair('tiny');
    const tok = await loadTokenizer(pair.targetDir);
    const t = await loadDecoder(pair.targetDir, { threads: 1 });
    const corpusWords = new Set(FORGE_CORPUS.toLowerCase().match(/[a-z]+/g));
    try {
      const V = t.info.vocabSize;
      let words = 0;
      let known = 0;
      for (const prompt of ['The keeper', 'In the spring', 'She said']) {
        const cache = t.newCache();
        let [logits] = await t.forward([{ cache, tokens: tok.encode(prompt) }]);
        const out: number[] = [];
        for (let i = 0; i < 24; i++) {
          let best = 0;
          for (let v = 1; v < V; v++) if (logits[logits.length - V + v] > logits[logits.length - V + best]) best = v;
          if (best === tok.eosTokenId) break;
          out.push(best);
          [logits] = await t.forward([{ cache, tokens: [best] }]);
        }
        for (const w of tok.decode(out).toLowerCase().match(/[a-z]+/g) ?? []) {
          words++;
          if (corpusWords.has(w)) known++;
        }
      }
      expect(words).to.be.above(10);
      expect(known / words).to.be.above(0.9);
    } finally {
      await t.dispose();
    }
  });

  describe('ensureModelPair', () => {
    it('forges on first use, then reuses the folder; concurrent calls share one forge', async () => {
      const root = join(dir, 'models');
      const [a, b] = await Promise.all([ensureModelPair('tiny', { root }), ensureModelPair('tiny', { root })]);
      expect(a).to.deep.equal({ root: join(root, 'tiny'), targetDir: join(root, 'tiny', 'target'), draftDirs: [join(root, 'tiny', 'draft-1'), join(root, 'tiny', 'draft-2')] });
      expect(b).to.deep.equal(a);
      const before = (await stat(join(root, 'tiny', 'target', 'model.onnx'))).mtimeMs;
      await ensureModelPair('tiny', { root });
      expect((await stat(join(root, 'tiny', 'target', 'model.onnx'))).mtimeMs).to.equal(before);
      expect((await readdir(root)).filter((n) => n.startsWith('.'))).to.deep.equal([]);
    });

    it('replaces a stale folder (forge.json from other options)', async () => {
      const root = join(dir, 'models-stale');
      await forgeModels({ preset: 'tiny', seed: 77, outDir: join(root, 'tiny') });
      const stale = await readFile(join(root, 'tiny', 'target', 'model.onnx'));
      await ensureModelPair('tiny', { root });
      const rec = JSON.parse(await readFile(join(root, 'tiny', 'forge.json'), 'utf8')) as ForgeRecord;
      expect(rec.options.seed).to.equal(1);
      expect(stale.equals(await readFile(join(root, 'tiny', 'target', 'model.onnx')))).to.equal(false);
    });

    it('two processes forging the same preset at once both succeed and leave one complete folder', async () => {
      const root = join(dir, 'models-race');
      const script = `import { ensureModelPair } from ${JSON.stringify(resolve('inference/forge/index.ts'))};
        const p = await ensureModelPair('tiny', { root: ${JSON.stringify(root)} });
        console.log(JSON.stringify(p));`;
      await writeFile(join(dir, 'race.mts'), script);
      const tsx = resolve('node_modules/.bin/tsx');
      const outs = await Promise.all([run(tsx, [join(dir, 'race.mts')]), run(tsx, [join(dir, 'race.mts')])]);
      for (const o of outs) expect(JSON.parse(o.stdout).targetDir).to.equal(join(root, 'tiny', 'target'));
      expect(await readdir(root)).to.deep.equal(['tiny']);
      const r = await loadDecoder(join(root, 'tiny', 'target'), { threads: 1 });
      await r.dispose();
    });
  });
});
