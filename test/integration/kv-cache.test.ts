import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureModelPair, forgeModels } from '../../inference/forge/index.ts';
import { loadDecoder, type OnnxDecoderRunner } from '../../inference/onnx-runner.ts';
import type { DecoderRunner } from '../../inference/types.ts';

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Logits of `tokens` computed from scratch in one pass (the reference). */
async function recompute(r: DecoderRunner, tokens: number[]): Promise<Float32Array> {
  const [l] = await r.forward([{ cache: r.newCache(), tokens }]);
  return l;
}

const TOL = 1e-4;
/** A deterministic pseudo-random token sequence. */
const seq = (n: number, salt: number): number[] => Array.from({ length: n }, (_, i) => (i * 37 + salt * 101 + 11) % 1000);

function cacheTests(name: string, load: () => Promise<OnnxDecoderRunner>): void {
  describe(name, () => {
    let r: OnnxDecoderRunner;
    before(async () => {
      r = await load();
    });
    after(async () => {
      await r?.dispose();
    });

    it('prefill then step-by-step decoding equals recomputing from scratch', async () => {
      const tokens = seq(24, 1);
      const V = r.info.vocabSize;
      const full = await recompute(r, tokens);
      const cache = r.newCache();
      const parts = [(await r.forward([{ cache, tokens: tokens.slice(0, 16) }]))[0]];
      for (let i = 16; i < tokens.length; i++) parts.push((await r.forward([{ cache, tokens: [tokens[i]] }]))[0]);
      expect(cache.length).to.equal(24);
      const inc = concat(parts);
      expect(inc).to.have.length(24 * V);
      expect(maxAbsDiff(inc, full)).to.be.below(TOL);
    });

    it('a padded batch (different cache lengths and new-token counts) equals each session alone', async () => {
      // Sessions as [past, new]: an empty cache, long and short pasts, 1 to 9 new tokens.
      const shapes: Array<[number, number]> = [[0, 5], [12, 1], [3, 4], [30, 2], [7, 9]];
      const seqs = shapes.map(([p, n], i) => seq(p + n, i + 2));
      const caches = shapes.map(() => r.newCache());
      // Build each session's past in its own batch-1 prefill.
      for (let i = 0; i < shapes.length; i++) if (shapes[i][0] > 0) await r.forward([{ cache: caches[i], tokens: seqs[i].slice(0, shapes[i][0]) }]);
      const batched = await r.forward(shapes.map(([p], i) => ({ cache: caches[i], tokens: seqs[i].slice(p) })));
      const V = r.info.vocabSize;
      for (let i = 0; i < shapes.length; i++) {
        const [p, n] = shapes[i];
        const full = await recompute(r, seqs[i]);
        expect(batched[i]).to.have.length(n * V);
        expect(maxAbsDiff(batched[i], full.slice(p * V)), `session ${i}`).to.be.below(TOL);
        expect(caches[i].length).to.equal(p + n);
      }
      // And the caches written by the batch continue correctly.
      const next = await r.forward(caches.map((cache, i) => ({ cache, tokens: [seqs[i][0]] })));
      for (let i = 0; i < shapes.length; i++) {
        const full = await recompute(r, [...seqs[i], seqs[i][0]]);
        expect(maxAbsDiff(next[i], full.slice((seqs[i].length) * V)), `session ${i} after batch`).to.be.below(TOL);
      }
    });

    it('rollback then continue equals a fresh run', async () => {
      const V = r.info.vocabSize;
      const prefix = seq(10, 9);
      const cache = r.newCache();
      await r.forward([{ cache, tokens: [...prefix, 1, 2, 3, 4] }]); // 4 "rejected draft" tokens
      cache.rollback(10);
      expect(cache.length).to.equal(10);
      const [cont] = await r.forward([{ cache, tokens: [500, 501] }]);
      const full = await recompute(r, [...prefix, 500, 501]);
      expect(maxAbsDiff(cont, full.slice(10 * V))).to.be.below(TOL);
      // Rolling back to 0 empties the cache; bytes follow the length.
      cache.rollback(0);
      expect(cache.length).to.equal(0);
      expect(cache.bytes).to.equal(0);
    });

    it('batched rollback: sessions rolled back by different amounts verify together correctly', async () => {
      const V = r.info.vocabSize;
      const a = r.newCache();
      const b = r.newCache();
      const sa = seq(8, 20);
      const sb = seq(15, 21);
      await r.forward([{ cache: a, tokens: [...sa, 9, 9, 9] }, { cache: b, tokens: [...sb, 8] }]);
      a.rollback(8);
      b.rollback(15);
      const [la, lb] = await r.forward([{ cache: a, tokens: [3, 4, 5] }, { cache: b, tokens: [6] }]);
      expect(maxAbsDiff(la, (await recompute(r, [...sa, 3, 4, 5])).slice(8 * V))).to.be.below(TOL);
      expect(maxAbsDiff(lb, (await recompute(r, [...sb, 6])).slice(15 * V))).to.be.below(TOL);
    });
  });
}

describe('KV cache (forged tiny models)', function () {
  this.timeout(60_000);
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wisp-kv-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  cacheTests('tiny target', async () => loadDecoder((await ensureModelPair('tiny')).targetDir, { threads: 1 }));
  cacheTests('tiny draft-1', async () => loadDecoder((await ensureModelPair('tiny')).draftDirs[0], { threads: 1 }));
  cacheTests('GQA + merged target', async () => {
    const m = await forgeModels({ preset: 'tiny', numKvHeads: 1, merged: true, seed: 5, outDir: join(dir, 'gqa-merged') });
    return loadDecoder(m.targetDir, { threads: 1 });
  });
});
