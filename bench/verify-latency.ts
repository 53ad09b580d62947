/**
 * Verification latency of the forged `small` target on this machine (a benchmark, not a test):
 * batch 1/4/16 × new tokens 1/3/5/9 per request (new tokens = drafts + 1: the last committed
 * token plus the draft tokens) over a 128-token cache per request, medians after warm-up; and
 * the 1-layer draft's per-token decode time at batch 1. Timings include the runner's own work
 * (building padded inputs, copying caches in and out), i.e. the verifier's hot path.
 *
 *   npm run bench:verify [-- --threads N --spinning --runs N --warmup N --cache N]
 */
import { parseArgs } from 'node:util';
import { ensureModelPair } from '../inference/forge/index.ts';
import { loadDecoder } from '../inference/onnx-runner.ts';
import type { DecoderRunner, KvCacheHandle } from '../inference/types.ts';

const { values } = parseArgs({
  options: {
    threads: { type: 'string' },
    spinning: { type: 'boolean', default: false },
    runs: { type: 'string', default: '30' },
    warmup: { type: 'string', default: '10' },
    cache: { type: 'string', default: '128' },
  },
});
const threads = values.threads === undefined ? undefined : Number(values.threads);
const runs = Number(values.runs);
const warmup = Number(values.warmup);
const cacheLen = Number(values.cache);
const BATCHES = [1, 4, 16];
const NEW_TOKENS = [1, 3, 5, 9];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}

/** A deterministic token sequence (avoids the EOS id at the top of the vocabulary). */
const tokens = (n: number, salt: number, vocab: number): number[] => Array.from({ length: n }, (_, i) => (i * 31 + salt * 17 + 5) % (vocab - 1));

async function prefill(r: DecoderRunner, batch: number): Promise<KvCacheHandle[]> {
  const caches = Array.from({ length: batch }, () => r.newCache());
  await r.forward(caches.map((cache, i) => ({ cache, tokens: tokens(cacheLen, i, r.info.vocabSize) })));
  return caches;
}

/** Median/p90 ms of one batched verify of `n` new tokens per request, rolled back after each run. */
async function timeVerify(r: DecoderRunner, caches: KvCacheHandle[], n: number): Promise<{ p50: number; p90: number }> {
  const ms: number[] = [];
  for (let i = 0; i < warmup + runs; i++) {
    const items = caches.map((cache, b) => ({ cache, tokens: tokens(n, b + i, r.info.vocabSize) }));
    const t0 = performance.now();
    await r.forward(items);
    const dt = performance.now() - t0;
    for (const c of caches) c.rollback(cacheLen);
    if (i >= warmup) ms.push(dt);
  }
  return { p50: median(ms), p90: percentile(ms, 0.9) };
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const pair = await ensureModelPair('small');
  const readyMs = performance.now() - t0;
  const opts = { spinning: values.spinning, ...(threads === undefined ? {} : { threads }) };
  const target = await loadDecoder(pair.targetDir, opts);
  const draft = await loadDecoder(pair.draftDirs[0], opts);
  const i = target.info;
  process.stdout.write(
    `# verify latency — forged small target (${i.numLayers} layers, d ${i.hiddenSize}, heads ${i.numHeads}/${i.numKvHeads} kv, vocab ${i.vocabSize})\n` +
      `# ${cacheLen}-token cache per request; "new" = tokens fed per request = drafts + 1; ` +
      `median (p90) ms of ${runs} runs after ${warmup} warm-up; intra-op threads ${threads ?? 'default'}${values.spinning ? ' (spinning)' : ''}; models ready in ${readyMs.toFixed(0)} ms\n\n`,
  );
  const header = ['batch', ...NEW_TOKENS.map((n) => `new=${n} (${n - 1} drafts)`)];
  const rows: string[][] = [];
  for (const b of BATCHES) {
    const caches = await prefill(target, b);
    const row = [String(b)];
    for (const n of NEW_TOKENS) {
      const t = await timeVerify(target, caches, n);
      row.push(`${t.p50.toFixed(2)} (${t.p90.toFixed(2)})`);
    }
    rows.push(row);
  }
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]): string => '| ' + cells.map((x, c) => x.padStart(widths[c])).join(' | ') + ' |\n';
  process.stdout.write(line(header));
  process.stdout.write('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|\n');
  for (const r of rows) process.stdout.write(line(r));

  // Draft decode: one token at a time at batch 1 over the same cache length.
  const [dc] = await prefill(draft, 1);
  const d = await timeVerify(draft, [dc], 1);
  process.stdout.write(`\ndraft-1 (${draft.info.numLayers} layer) decode, batch 1, 1 token over ${cacheLen}: ${d.p50.toFixed(3)} ms median (p90 ${d.p90.toFixed(3)})\n`);
  await target.dispose();
  await draft.dispose();
}

await main();
