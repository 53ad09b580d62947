import { expect } from 'chai';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ContextOverflowError,
  ModelConfigError,
  ModelDirNotFoundError,
  ModelFileMissingError,
  ModelGraphError,
  TokenizerMismatchError,
} from '../../inference/errors.ts';
import { DT, GraphBuilder } from '../../inference/forge/onnx-builder.ts';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { assertFitsContext, checkTokenizerMatchesModel, readModelDir } from '../../inference/model-dir.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';

/** The error `p` rejects with (fails the test when it resolves). */
async function failure(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(
    () => null,
    (e: unknown) => e as Error,
  );
  expect(err, 'expected a rejection').to.be.instanceOf(Error);
  return err!;
}

/** Expects `p` to reject with an error of class `cls` and exactly `message`. */
async function rejects(p: Promise<unknown>, cls: new (...a: never[]) => Error, message: string): Promise<Error> {
  const err = await p.then(
    () => null,
    (e: unknown) => e as Error,
  );
  expect(err, `expected ${cls.name}`).to.be.instanceOf(cls);
  expect(err!.message).to.equal(message);
  return err!;
}

describe('model folder validation (bad input → clear errors)', function () {
  this.timeout(30_000);
  let dir: string;
  let targetDir: string;

  before(async () => {
    targetDir = (await ensureModelPair('tiny')).targetDir;
    dir = await mkdtemp(join(tmpdir(), 'wisp-modeldir-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A copy of the tiny target in `name`, optionally with config.json rewritten. */
  async function copyTarget(name: string, editConfig?: (c: Record<string, unknown>) => unknown): Promise<string> {
    const d = join(dir, name);
    await cp(targetDir, d, { recursive: true });
    if (editConfig) {
      const c = JSON.parse(await readFile(join(d, 'config.json'), 'utf8')) as Record<string, unknown>;
      const next = editConfig(c) ?? c;
      await writeFile(join(d, 'config.json'), typeof next === 'string' ? next : JSON.stringify(next));
    }
    return d;
  }

  it('a missing folder', async () => {
    const d = join(dir, 'does-not-exist');
    const err = await rejects(loadDecoder(d), ModelDirNotFoundError, `model folder not found: ${d}`);
    expect((err as ModelDirNotFoundError).code).to.equal('model_dir_not_found');
  });

  it('a file where the folder should be', async () => {
    const f = join(dir, 'a-file');
    await writeFile(f, 'x');
    await rejects(loadDecoder(f), ModelDirNotFoundError, `model folder not found: ${f}`);
  });

  it('a folder without model.onnx', async () => {
    const d = await copyTarget('no-onnx');
    await rm(join(d, 'model.onnx'));
    await rejects(loadDecoder(d), ModelFileMissingError, `model.onnx missing: ${join(d, 'model.onnx')}`);
  });

  it('a folder without config.json', async () => {
    const d = await copyTarget('no-config');
    await rm(join(d, 'config.json'));
    await rejects(loadDecoder(d), ModelFileMissingError, `config.json missing: ${join(d, 'config.json')}`);
  });

  it('a config.json that is not JSON', async () => {
    const d = await copyTarget('bad-json', () => '{"vocab_size": 1024,');
    const err = await failure(loadDecoder(d));
    expect(err).to.be.instanceOf(ModelConfigError);
    expect(err.message).to.match(new RegExp(`^invalid model config ${join(d, 'config.json')}: not valid JSON \\(`));
  });

  it('a config.json missing a field', async () => {
    const d = await copyTarget('no-vocab', (c) => {
      delete c.vocab_size;
    });
    await rejects(loadDecoder(d), ModelConfigError, `invalid model config ${join(d, 'config.json')}: missing field vocab_size`);
  });

  it('a config.json field of the wrong kind', async () => {
    const d = await copyTarget('bad-heads', (c) => {
      c.num_attention_heads = 'four';
    });
    const err = await failure(loadDecoder(d));
    expect(err).to.be.instanceOf(ModelConfigError);
    expect(err.message).to.match(new RegExp(`^invalid model config ${join(d, 'config.json')}: field num_attention_heads: `));
  });

  it('a config.json whose kv heads do not divide the heads', async () => {
    const d = await copyTarget('bad-kv', (c) => {
      c.num_key_value_heads = 3;
    });
    await rejects(loadDecoder(d), ModelConfigError, `invalid model config ${join(d, 'config.json')}: num_key_value_heads 3 does not divide num_attention_heads 4`);
  });

  it('a config.json claiming more layers than the graph has', async () => {
    const d = await copyTarget('more-layers', (c) => {
      c.num_hidden_layers = 5;
    });
    await rejects(loadDecoder(d), ModelGraphError, `invalid decoder graph ${join(d, 'model.onnx')}: missing input "past_key_values.4.key"`);
  });

  it('a graph without the decoder inputs', async () => {
    const d = await copyTarget('not-a-decoder');
    const g = new GraphBuilder('not-a-decoder');
    g.input('input_ids', DT.INT64, ['batch', 'seq']);
    g.output('logits', DT.FLOAT, ['batch', 'seq']);
    g.op('Cast', ['input_ids'], { to: DT.FLOAT }, 'logits');
    await writeFile(join(d, 'model.onnx'), g.toBytes('test'));
    await rejects(loadDecoder(d), ModelGraphError, `invalid decoder graph ${join(d, 'model.onnx')}: missing input "attention_mask"`);
  });

  it('a model.onnx that is not ONNX', async () => {
    const d = await copyTarget('garbage-onnx');
    await writeFile(join(d, 'model.onnx'), 'definitely not protobuf');
    const err = await failure(loadDecoder(d));
    expect(err).to.be.instanceOf(ModelGraphError);
    expect(err.message).to.match(new RegExp(`^invalid decoder graph ${join(d, 'model.onnx')}: onnxruntime cannot load it`));
  });

  it('a tokenizer that does not match the model vocabulary or EOS', async () => {
    const tok = await loadTokenizer(targetDir);
    const small = await copyTarget('vocab-512', (c) => {
      c.vocab_size = 512;
    });
    const info512 = (await readModelDir(small)).info;
    expect(() => checkTokenizerMatchesModel(tok, info512)).to.throw(
      TokenizerMismatchError,
      'tokenizer does not match the model: tokenizer has 1024 token ids but model wisp-tiny-target has a vocabulary of 512',
    );
    const otherEos = await copyTarget('eos-7', (c) => {
      c.eos_token_id = 7;
    });
    const infoEos = (await readModelDir(otherEos)).info;
    expect(() => checkTokenizerMatchesModel(tok, infoEos)).to.throw(
      TokenizerMismatchError,
      "tokenizer does not match the model: tokenizer EOS id 1023 differs from model wisp-tiny-target's eos_token_id 7",
    );
    // The forged pair itself matches.
    checkTokenizerMatchesModel(tok, (await readModelDir(targetDir)).info);
  });

  it('a prompt longer than the context', async () => {
    const info = (await readModelDir(targetDir)).info;
    assertFitsContext(info, 512);
    expect(() => assertFitsContext(info, 600)).to.throw(ContextOverflowError, 'context overflow: 600 tokens exceed the 512-token context of model wisp-tiny-target');
  });

  it('reads GPT-2 style config names (n_layer, n_head, n_embd, n_positions)', async () => {
    const d = await copyTarget('gpt2-names', (c) => ({
      vocab_size: c.vocab_size,
      n_layer: c.num_hidden_layers,
      n_head: c.num_attention_heads,
      n_embd: c.hidden_size,
      n_positions: c.max_position_embeddings,
      eos_token_id: [c.eos_token_id, 5],
    }));
    const md = await readModelDir(d);
    expect(md.info).to.deep.equal({ name: 'gpt2-names', vocabSize: 1024, numLayers: 4, numHeads: 4, numKvHeads: 4, headDim: 32, hiddenSize: 128, maxPositions: 512, eosTokenId: 1023, bosTokenId: null });
    const r = await loadDecoder(d, { threads: 1 });
    await r.dispose();
  });
});
