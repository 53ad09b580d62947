/**
 * The check a sampled answer must pass: each token is an outcome speculative sampling allows at
 * its position (docs/design.md §4). Shared by the lossless tests of policies and of mode switches.
 */
import { uniformFor, rngFor } from '../../inference/rng.ts';
import { DEFAULT_DRAFT_TOP_K, draftTopK, logitsToProbs, sampleIndex, sampleTargetToken } from '../../inference/sampling.ts';
import type { DecoderRunner } from '../../inference/types.ts';
import type { Sampling } from '../../protocol/messages.ts';

interface Models {
  target: DecoderRunner;
  draft: DecoderRunner;
}

/** Logits rows of one full forward over `tokens`: row i predicts position i + 1. */
async function rows(runner: DecoderRunner, tokens: number[]): Promise<Float32Array> {
  const [logits] = await runner.forward([{ cache: runner.newCache(), tokens }]);
  return logits;
}

/**
 * For each generated token, whether it is one of the outcomes the protocol allows at its position
 * given the committed prefix: the target's own draw ('bonus'; the only one for the first token),
 * or the result of verifying the draft's draw there ('window': the draft token when accepted,
 * else the residual correction). Returns the first position that is neither, or null.
 */
export async function firstDisallowed(m: Pick<Models, 'target' | 'draft'>, prompt: number[], out: number[], s: Sampling): Promise<string | null> {
  const seq = [...prompt, ...out];
  const V = m.target.info.vocabSize;
  const t = await rows(m.target, seq.slice(0, -1));
  const d = await rows(m.draft, seq.slice(0, -1));
  for (let i = 0; i < out.length; i++) {
    const p = prompt.length + i; // absolute position of out[i]
    const tRow = t.subarray((p - 1) * V, p * V);
    const bonus = sampleTargetToken(tRow, s, p);
    if (out[i] === bonus) continue;
    if (i === 0) return `first token ${out[0]} is not the target's draw ${bonus}`;
    const q = draftTopK(logitsToProbs(d.subarray((p - 1) * V, p * V), s), DEFAULT_DRAFT_TOP_K);
    const drafted = q.ids[sampleIndex(q.probs, rngFor(s.seed, p, 'draft').nextDouble())];
    const P = logitsToProbs(tRow, s);
    const qTok = q.probs[q.ids.indexOf(drafted)];
    let window: number;
    if (P[drafted] / qTok >= 1 || uniformFor(s.seed, p, 'accept') < P[drafted] / qTok) window = drafted;
    else {
      const residual = Float64Array.from(P);
      q.ids.forEach((id, k) => (residual[id] = Math.max(0, residual[id] - q.probs[k])));
      window = sampleIndex(residual, uniformFor(s.seed, p, 'residual'));
    }
    if (out[i] !== window) return `token ${i} (${out[i]}) at position ${p} is neither the target's draw ${bonus} nor the verified draft ${window}`;
  }
  return null;
}

