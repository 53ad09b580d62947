/**
 * Measures greedy draft/target agreement: the share of positions where the draft's argmax
 * equals the target's. Two ways: teacher-forced over the forge corpus (the forge's `agreement`
 * setting is calibrated on this one: stable across seeds), and along the target's own greedy
 * continuations of prompts (what greedy speculative decoding sees; varies more, because a
 * small model's greedy text falls into a few repeating loops that dominate the count).
 */
import type { DecoderRunner } from '../types.ts';
import { FORGE_CORPUS_PARAGRAPHS } from './corpus.ts';

/** Prompts for measuring agreement (openings in the style of the forge corpus, and a few off it). */
export const AGREEMENT_PROMPTS: readonly string[] = [
  'The town',
  'There was a',
  'The keeper liked to',
  'In the spring the',
  'The river was',
  'The school stood',
  'When the storms came',
  'In the winter',
  'The library',
  'On the first warm day',
  'She kept the light',
  'Every morning the baker',
  'The road out of',
  'A ship',
  'Children ran',
  'Nobody knew why the',
];

/**
 * Calibration prompts: the first `words` words of every sentence of the forge corpus (≈ 70),
 * many short continuations rather than a few long ones, so greedy loops weigh little.
 */
export function sentencePrompts(words = 3): string[] {
  const out: string[] = [];
  for (const para of FORGE_CORPUS_PARAGRAPHS) {
    for (const sentence of para.split(/(?<=[.!?:])\s+/)) {
      const w = sentence.split(/\s+/).filter(Boolean);
      if (w.length > words) out.push(w.slice(0, words).join(' '));
    }
  }
  return out;
}

function argmax(a: Float32Array, offset: number, n: number): number {
  let best = 0;
  let bestValue = a[offset];
  for (let i = 1; i < n; i++) {
    if (a[offset + i] > bestValue) {
      bestValue = a[offset + i];
      best = i;
    }
  }
  return best;
}

/** Agreement over `prompts` (token ids) × `steps` greedy target tokens; batched, one run per step per model. */
export async function measureGreedyAgreement(
  target: DecoderRunner,
  draft: DecoderRunner,
  prompts: number[][],
  steps: number,
): Promise<{ agreement: number; positions: number }> {
  const V = target.info.vocabSize;
  const tCaches = prompts.map(() => target.newCache());
  const dCaches = prompts.map(() => draft.newCache());
  let tLogits = await target.forward(prompts.map((p, i) => ({ cache: tCaches[i], tokens: p })));
  let dLogits = await draft.forward(prompts.map((p, i) => ({ cache: dCaches[i], tokens: p })));
  let agree = 0;
  let positions = 0;
  for (let s = 0; s < steps; s++) {
    const next: number[] = [];
    for (let i = 0; i < prompts.length; i++) {
      const t = argmax(tLogits[i], tLogits[i].length - V, V);
      const d = argmax(dLogits[i], dLogits[i].length - V, V);
      if (t === d) agree++;
      positions++;
      next.push(t);
    }
    if (s + 1 === steps) break;
    tLogits = await target.forward(next.map((t, i) => ({ cache: tCaches[i], tokens: [t] })));
    dLogits = await draft.forward(next.map((t, i) => ({ cache: dCaches[i], tokens: [t] })));
  }
  return { agreement: agree / positions, positions };
}

/** The forge corpus as token sequences, one per paragraph. */
export function corpusSequences(tokenizer: { encode(text: string): number[] }): number[][] {
  return FORGE_CORPUS_PARAGRAPHS.map((p) => tokenizer.encode(p));
}

/** Teacher-forced agreement: every position of `sequences`, one batched forward per model. */
export async function measureTeacherForcedAgreement(
  target: DecoderRunner,
  draft: DecoderRunner,
  sequences: number[][],
): Promise<{ agreement: number; positions: number }> {
  const V = target.info.vocabSize;
  const lt = await target.forward(sequences.map((tokens) => ({ cache: target.newCache(), tokens })));
  const ld = await draft.forward(sequences.map((tokens) => ({ cache: draft.newCache(), tokens })));
  let agree = 0;
  let positions = 0;
  for (let i = 0; i < sequences.length; i++) {
    for (let j = 0; j < sequences[i].length; j++) {
      positions++;
      if (argmax(lt[i], j * V, V) === argmax(ld[i], j * V, V)) agree++;
    }
  }
  return { agreement: agree / positions, positions };
}
