import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { CacheMisuseError, ContextOverflowError, TokenOutOfVocabError } from '../../inference/errors.ts';
import { ensureModelPair, forgeModels } from '../../inference/forge/index.ts';
import { loadDecoder, type OnnxDecoderRunner } from '../../inference/onnx-runner.ts';

/** Largest absolute difference; Infinity when lengths differ. */
function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const TOL = 1e-4;

describe('ONNX decoder runner (forged tiny pair)', function () {
  this.timeout(60_000);
  let target: OnnxDecoderRunner;
  let draft: OnnxDecoderRunner;
  let pair: Awaited<ReturnType<typeof ensureModelPair>>;

  before(async () => {
    pair = await ensureModelPair('tiny');
    target = await loadDecoder(pair.targetDir, { threads: 1 });
    draft = await loadDecoder(pair.draftDirs[0], { threads: 1 });
  });
  after(async () => {
    await target?.dispose();
    await draft?.dispose();
  });

  it('reads the dimensions from config.json and the graph', () => {
    expect(target.info).to.deep.include({ name: 'wisp-tiny-target', vocabSize: 1024, numLayers: 4, numHeads: 4, numKvHeads: 4, headDim: 32, hiddenSize: 128, maxPositions: 512, eosTokenId: 1023 });
    expect(draft.info).to.deep.include({ name: 'wisp-tiny-draft-1', numLayers: 1 });
    expect(target.isMerged).to.equal(false);
  });

  it('returns tokens × vocab logits per item and grows the cache', async () => {
    const cache = target.newCache();
    const [logits] = await target.forward([{ cache, tokens: [10, 20, 30] }]);
    expect(logits).to.have.length(3 * 1024);
    expect(cache.length).to.equal(3);
    expect(cache.bytes).to.equal(3 * 4 * 2 * 4 * 32 * 4);
    for (const x of logits) expect(Number.isFinite(x)).to.equal(true);
  });

  it('an item with no tokens gets empty logits and leaves its cache alone', async () => {
    const a = target.newCache();
    const b = target.newCache();
    await target.forward([{ cache: a, tokens: [1, 2] }]);
    const [la, lb] = await target.forward([{ cache: a, tokens: [] }, { cache: b, tokens: [3] }]);
    expect(la).to.have.length(0);
    expect(lb).to.have.length(1024);
    expect(a.length).to.equal(2);
  });

  it('threads option: a 2-thread runner computes the same logits as a 1-thread one', async () => {
    const two = await loadDecoder(pair.targetDir, { threads: 2 });
    try {
      const tokens = [5, 6, 7, 8, 9];
      const [a] = await target.forward([{ cache: target.newCache(), tokens }]);
      const [b] = await two.forward([{ cache: two.newCache(), tokens }]);
      expect(maxAbsDiff(a, b)).to.be.below(TOL);
    } finally {
      await two.dispose();
    }
  });

  describe('errors', () => {
    it('refuses a prompt longer than the context, naming both lengths', async () => {
      const cache = target.newCache();
      const tokens = Array.from({ length: 513 }, (_, i) => i % 1000);
      try {
        await target.forward([{ cache, tokens }]);
        expect.fail('forward accepted 513 tokens into a 512-token context');
      } catch (err) {
        expect(err).to.be.instanceOf(ContextOverflowError);
        expect((err as ContextOverflowError).code).to.equal('prompt_too_long');
        expect((err as Error).message).to.equal('context overflow: 513 tokens exceed the 512-token context of model wisp-tiny-target');
      }
      expect(cache.length).to.equal(0);
    });

    it('refuses a cache + new tokens past the context', async () => {
      const cache = target.newCache();
      await target.forward([{ cache, tokens: Array.from({ length: 510 }, (_, i) => i % 1000) }]);
      try {
        await target.forward([{ cache, tokens: [1, 2, 3] }]);
        expect.fail('forward overflowed the context');
      } catch (err) {
        expect((err as Error).message).to.equal('context overflow: 513 tokens exceed the 512-token context of model wisp-tiny-target');
      }
      expect(cache.length).to.equal(510);
    });

    it('refuses a token id outside the vocabulary', async () => {
      const err = await target.forward([{ cache: target.newCache(), tokens: [1, 1024] }]).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(TokenOutOfVocabError);
      expect((err as Error).message).to.equal('token id 1024 is outside the vocabulary (0..1023)');
    });

    it("refuses another runner's cache, a cache twice in one batch, and a rollback past the end", async () => {
      const foreign = draft.newCache();
      const e1 = await target.forward([{ cache: foreign, tokens: [1] }]).catch((e: unknown) => e);
      expect(e1).to.be.instanceOf(CacheMisuseError);
      expect((e1 as Error).message).to.equal('kv cache misuse: a cache of another runner was passed to wisp-tiny-target');
      const c = target.newCache();
      const e2 = await target.forward([{ cache: c, tokens: [1] }, { cache: c, tokens: [2] }]).catch((e: unknown) => e);
      expect((e2 as Error).message).to.equal('kv cache misuse: the same cache appears twice in one batch');
      expect(() => c.rollback(1)).to.throw(CacheMisuseError, 'kv cache misuse: cannot roll back to 1: the cache holds 0 positions');
    });
  });

  describe('variants', () => {
    let dir: string;
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'wisp-runner-'));
    });
    after(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('grouped-query attention (2 kv heads for 4 heads) loads and caches incrementally', async () => {
      const m = await forgeModels({ preset: 'tiny', numKvHeads: 2, outDir: join(dir, 'gqa') });
      const r = await loadDecoder(m.targetDir, { threads: 1 });
      try {
        expect(r.info.numKvHeads).to.equal(2);
        const seq = [7, 8, 9, 10, 11, 12];
        const [full] = await r.forward([{ cache: r.newCache(), tokens: seq }]);
        const c = r.newCache();
        const [head] = await r.forward([{ cache: c, tokens: seq.slice(0, 4) }]);
        const [tail] = await r.forward([{ cache: c, tokens: seq.slice(4) }]);
        expect(maxAbsDiff(head, full.slice(0, 4 * 1024))).to.be.below(TOL);
        expect(maxAbsDiff(tail, full.slice(4 * 1024))).to.be.below(TOL);
        expect(c.bytes).to.equal(6 * 4 * 2 * 2 * 32 * 4);
      } finally {
        await r.dispose();
      }
    });

    it('a merged decoder (use_cache_branch) loads, runs incrementally, and honours the flag', async () => {
      const m = await forgeModels({ preset: 'tiny', merged: true, outDir: join(dir, 'merged') });
      const r = await loadDecoder(m.targetDir, { threads: 1 });
      try {
        expect(r.isMerged).to.equal(true);
        const seq = [40, 41, 42, 43, 44];
        const [full] = await r.forward([{ cache: r.newCache(), tokens: seq }]);
        const c = r.newCache();
        await r.forward([{ cache: c, tokens: seq.slice(0, 2) }]);
        const [tail] = await r.forward([{ cache: c, tokens: seq.slice(2) }]);
        expect(maxAbsDiff(tail, full.slice(2 * 1024))).to.be.below(TOL);
      } finally {
        await r.dispose();
      }
      // Directly: use_cache_branch = false must ignore a (non-empty) past.
      const session = await ort.InferenceSession.create(join(m.targetDir, 'model.onnx'));
      try {
        const feeds = (useCache: boolean, past: number): Record<string, ort.Tensor> => {
          const f: Record<string, ort.Tensor> = {
            input_ids: new ort.Tensor('int64', BigInt64Array.from([5n, 6n]), [1, 2]),
            attention_mask: new ort.Tensor('int64', new BigInt64Array(2).fill(1n), [1, 2]),
            position_ids: new ort.Tensor('int64', BigInt64Array.from([0n, 1n]), [1, 2]),
            use_cache_branch: new ort.Tensor('bool', Uint8Array.of(useCache ? 1 : 0), [1]),
          };
          for (let l = 0; l < 4; l++) {
            for (const kv of ['key', 'value']) {
              f[`past_key_values.${l}.${kv}`] = new ort.Tensor('float32', new Float32Array(4 * past * 32).fill(0.5), [1, 4, past, 32]);
            }
          }
          return f;
        };
        const noPast = await session.run(feeds(true, 0));
        const ignored = await session.run(feeds(false, 3));
        expect(ignored['present.0.key'].dims).to.deep.equal([1, 4, 2, 32]);
        expect(maxAbsDiff(ignored.logits.data as Float32Array, noPast.logits.data as Float32Array)).to.be.below(TOL);
      } finally {
        await session.release();
      }
    });
  });
});
