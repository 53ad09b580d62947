import { expect } from 'chai';
import { mkdtemp, rm, writeFile, mkdir, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TokenizerLoadError } from '../../inference/errors.ts';
import { FORGE_CORPUS } from '../../inference/forge/corpus.ts';
import { ensureModelPair, EOS_TOKEN } from '../../inference/forge/index.ts';
import { loadTokenizer, type WispTokenizer } from '../../inference/tokenizer.ts';

describe('tokenizer (forged byte-level BPE via @huggingface/tokenizers)', function () {
  this.timeout(30_000);
  let tok: WispTokenizer;
  let targetDir: string;
  let dir: string;

  before(async () => {
    const pair = await ensureModelPair('tiny');
    targetDir = pair.targetDir;
    tok = await loadTokenizer(targetDir);
    dir = await mkdtemp(join(tmpdir(), 'wisp-tok-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('has the model vocabulary and the EOS id', () => {
    expect(tok.vocabSize).to.equal(1024);
    expect(tok.eosTokenId).to.equal(1023);
    expect(tok.encode(EOS_TOKEN)).to.deep.equal([1023]);
  });

  it('round-trips text exactly: corpus, spacing, punctuation, unicode, emoji, special tokens', () => {
    const samples = [
      FORGE_CORPUS,
      'Hello , world .',
      '  two  spaces\tand a tab\n\nnew lines  ',
      'naïve café — “quotes” 日本語 😀 👩‍👩‍👧',
      `end of text${EOS_TOKEN}next`,
      '',
    ];
    for (const s of samples) expect(tok.decode(tok.encode(s))).to.equal(s);
  });

  it('encodes corpus words as whole tokens (merges learned from the corpus)', () => {
    expect(tok.encode(' the keeper')).to.have.length(2);
    expect(tok.encode('The town sat at the mouth of a slow river')).to.have.length(10);
    for (const id of tok.encode(FORGE_CORPUS)) expect(id).to.be.within(0, 1022);
  });

  it('loads a folder whose tokenizer_config.json is absent (defaults, no EOS)', async () => {
    const d = join(dir, 'no-config');
    await mkdir(d);
    await copyFile(join(targetDir, 'tokenizer.json'), join(d, 'tokenizer.json'));
    const t = await loadTokenizer(d);
    expect(t.eosTokenId).to.equal(null);
    expect(t.decode(t.encode('The keeper , said .'))).to.equal('The keeper , said .');
  });

  it('refuses a folder without tokenizer.json, naming the path', async () => {
    const err = await loadTokenizer(join(dir, 'nowhere')).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(TokenizerLoadError);
    expect((err as Error).message).to.equal(`cannot load tokenizer ${join(dir, 'nowhere', 'tokenizer.json')}: file not found`);
  });

  it('refuses a tokenizer.json that is not JSON or has no model', async () => {
    const bad = join(dir, 'bad');
    await mkdir(bad);
    await writeFile(join(bad, 'tokenizer.json'), '{ not json');
    const e1 = await loadTokenizer(bad).catch((e: unknown) => e);
    expect((e1 as Error).message).to.match(new RegExp(`^cannot load tokenizer ${join(bad, 'tokenizer.json')}: not valid JSON`));
    await writeFile(join(bad, 'tokenizer.json'), '{"version": "1.0"}');
    const e2 = await loadTokenizer(bad).catch((e: unknown) => e);
    expect((e2 as Error).message).to.equal(`cannot load tokenizer ${join(bad, 'tokenizer.json')}: no "model" object`);
  });
});
