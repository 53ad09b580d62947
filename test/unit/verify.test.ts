import { expect } from 'chai';
import { verifyDraft, verifyGreedy, verifySampled, VerifyInputError } from '../../inference/verify.ts';
import { draftTopK, logitsToProbs, sampleDraftToken, sampleIndex } from '../../inference/sampling.ts';
import { rngFor, uniformFor } from '../../inference/rng.ts';
import type { SamplingParams, SparseDist, VerifyOutcome } from '../../inference/types.ts';
import { chiSquare, chiSquareCritical001 } from '../helpers/chi-square.ts';

/** Row-major logits from rows of per-token logits. */
function matrix(rows: number[][]): Float32Array {
  return Float32Array.from(rows.flat());
}

/** A one-hot-ish logits row preferring `id` over a vocabulary of V. */
function prefer(id: number, V: number): number[] {
  return Array.from({ length: V }, (_, j) => (j === id ? 5 : 0));
}

const V = 6;
// Target and draft logits for one position: deliberately different shapes (draft overconfident).
const TARGET_ROW = [1.2, 0.3, -0.4, 0.9, 0.0, -1.0];
const DRAFT_ROW = [0.2, 2.0, -0.5, 0.1, 1.1, -2.0];

type Verifier = (d: number[], q: SparseDist[], logits: Float32Array, vocab: number, s: SamplingParams, pos0: number) => VerifyOutcome;

/** A deliberately wrong verifier: on rejection it samples from p instead of norm(max(0, p − q)). */
const wrongResidual: Verifier = (d, q, logits, vocab, s, pos0) => {
  const p = logitsToProbs(logits.subarray(0, vocab), s);
  const qd = q[0].probs[q[0].ids.indexOf(d[0])];
  if (uniformFor(s.seed, pos0, 'accept') < p[d[0]] / qd) return { accepted: 1, token: -1 };
  return { accepted: 0, token: sampleIndex(p, uniformFor(s.seed, pos0, 'residual')) };
};

/**
 * Runs one-token speculative steps over N seeds: the draft samples from its top-k, the verifier
 * decides; returns the counts of the committed token at the position.
 */
function firstTokenCounts(verify: Verifier, sampling: Omit<SamplingParams, 'seed'>, k: number, N: number): number[] {
  const logits = matrix([TARGET_ROW, TARGET_ROW]);
  const counts = new Array(V).fill(0);
  const pos = 17;
  for (let seed = 0; seed < N; seed++) {
    const s = { ...sampling, seed };
    const draft = sampleDraftToken(DRAFT_ROW, s, k, rngFor(seed, pos, 'draft'));
    const out = verify([draft.token], [draft.dist], logits, V, s, pos);
    counts[out.accepted === 1 ? draft.token : out.token]++;
  }
  return counts;
}

describe('verify: greedy', () => {
  const rows = [prefer(2, V), prefer(4, V), prefer(1, V), prefer(5, V)];
  const logits = matrix(rows);

  it('accepts every draft token and adds the bonus', () => {
    expect(verifyGreedy([2, 4, 1], logits, V)).to.deep.equal({ accepted: 3, token: 5 });
  });

  it('rejects at the first token with the target argmax as correction', () => {
    expect(verifyGreedy([3, 4, 1], logits, V)).to.deep.equal({ accepted: 0, token: 2 });
  });

  it('rejects in the middle and ignores what follows the mismatch', () => {
    expect(verifyGreedy([2, 0, 1], logits, V)).to.deep.equal({ accepted: 1, token: 4 });
    expect(verifyGreedy([2, 4, 0], logits, V)).to.deep.equal({ accepted: 2, token: 1 });
  });

  it('with no draft tokens returns the target token (plain decoding step)', () => {
    expect(verifyGreedy([], matrix([prefer(3, V)]), V)).to.deep.equal({ accepted: 0, token: 3 });
  });

  it('breaks argmax ties to the lowest id, on both the match and the correction', () => {
    const tie = matrix([
      [0, 1, 1, 0, 0, 0],
      [0, 0, 0, 2, 2, 0],
    ]);
    expect(verifyGreedy([1], tie, V)).to.deep.equal({ accepted: 1, token: 3 });
    expect(verifyGreedy([2], tie, V)).to.deep.equal({ accepted: 0, token: 1 });
  });

  it('refuses out-of-vocabulary draft tokens and too few logits', () => {
    expect(() => verifyGreedy([6], logits, V)).to.throw(VerifyInputError).with.property('code', 'token_out_of_vocab');
    expect(() => verifyGreedy([1, 1, 1, 1], logits, V)).to.throw(RangeError, /need 30/);
  });

  it('verifyDraft uses greedy at temperature 0 (no distributions needed)', () => {
    expect(verifyDraft([2, 4, 0], undefined, logits, V, { temperature: 0, topP: 1, seed: 1 }, 10)).to.deep.equal({ accepted: 2, token: 1 });
  });
});

describe('verify: rejection sampling', () => {
  const N = 30_000;

  for (const [label, sampling, k] of [
    ['T=1, full draft support', { temperature: 1, topP: 1 }, V],
    ['T=1, draft top-3 (sparse q)', { temperature: 1, topP: 1 }, 3],
    ['T=0.7, top-p 0.8 on both sides, draft top-4', { temperature: 0.7, topP: 0.8 }, 4],
  ] as const) {
    it(`output frequencies match the target's shaped p (${label}); the wrong residual fails the same test`, () => {
      const p = logitsToProbs(TARGET_ROW, sampling);
      const good = chiSquare(firstTokenCounts(verifySampled, sampling, k, N), p, N);
      expect(good.stat, `chi2=${good.stat.toFixed(2)} df=${good.df}`).to.be.below(chiSquareCritical001(good.df));
      // Power: sampling the correction from p (a classic bug) biases the output towards q.
      const bad = chiSquare(firstTokenCounts(wrongResidual, sampling, k, N), p, N);
      expect(bad.stat, `chi2=${bad.stat.toFixed(2)} df=${bad.df}`).to.be.above(chiSquareCritical001(bad.df));
    });
  }

  it('top-p/temperature shaping is part of the target distribution (unshaped p would fail)', () => {
    const sampling = { temperature: 0.7, topP: 0.8 };
    const counts = firstTokenCounts(verifySampled, sampling, 4, N);
    const unshaped = logitsToProbs(TARGET_ROW, { temperature: 1, topP: 1 });
    const r = chiSquare(counts, unshaped, N);
    expect(r.stat).to.be.above(chiSquareCritical001(r.df));
  });

  it('multi-token rounds: the joint of three positions equals the product of the target rows', () => {
    // Context-independent toy: position j has target row P[j] and draft row Q[j]. Rounds of up to
    // two drafts, rejections restart at the next position; drafts re-drawn at a position reuse its
    // keyed uniform, which must not bias the output.
    const P = [TARGET_ROW, [0.1, 0.9, 0.4, -0.3, 0.2, 0.0], [-0.2, 0.0, 0.6, 0.3, 0.8, 0.1]];
    const Q = [DRAFT_ROW, [0.9, 0.1, -0.4, 0.5, 0.0, 0.3], [0.4, -0.1, 0.0, 1.3, 0.2, -0.6]];
    const sampling = { temperature: 1, topP: 1 };
    const probs = P.map((row) => logitsToProbs(row, sampling));
    const pos0 = 40;
    const joint = new Array(V ** 3).fill(0);
    const M = 60_000;
    for (let seed = 0; seed < M; seed++) {
      const s = { ...sampling, seed };
      const out: number[] = [];
      while (out.length < 3) {
        const at = out.length;
        const n = Math.min(2, 3 - at);
        const drafts: number[] = [];
        const dists: SparseDist[] = [];
        for (let j = 0; j < n; j++) {
          const d = sampleDraftToken(Q[at + j], s, 4, rngFor(seed, pos0 + at + j, 'draft'));
          drafts.push(d.token);
          dists.push(d.dist);
        }
        const rows = [...P.slice(at, at + n + 1)];
        while (rows.length < n + 1) rows.push(P[0]); // bonus row past the end: never counted
        const r = verifySampled(drafts, dists, matrix(rows), V, s, pos0 + at);
        out.push(...drafts.slice(0, r.accepted), r.token);
      }
      joint[out[0] * V * V + out[1] * V + out[2]]++;
    }
    const expected = joint.map((_, c) => probs[0][Math.floor(c / (V * V))] * probs[1][Math.floor(c / V) % V] * probs[2][c % V]);
    const r = chiSquare(joint, expected, M);
    expect(r.stat, `chi2=${r.stat.toFixed(1)} df=${r.df}`).to.be.below(chiSquareCritical001(r.df));
  });

  it('is reproducible: the same request decides the same way on a retry', () => {
    const s = { temperature: 1, topP: 1, seed: 99 };
    const logits = matrix([TARGET_ROW, TARGET_ROW, TARGET_ROW]);
    const d1 = sampleDraftToken(DRAFT_ROW, s, 4, rngFor(99, 5, 'draft'));
    const d2 = sampleDraftToken(DRAFT_ROW, s, 4, rngFor(99, 6, 'draft'));
    const a = verifySampled([d1.token, d2.token], [d1.dist, d2.dist], logits, V, s, 5);
    for (let i = 0; i < 5; i++) expect(verifySampled([d1.token, d2.token], [d1.dist, d2.dist], logits, V, s, 5)).to.deep.equal(a);
  });

  it('accepts a draft token whose target probability is at least its draft probability', () => {
    // p(0) = 0.9 > q(0) = 0.5: min(1, p/q) = 1 whatever the draw.
    const target = matrix([[Math.log(0.9), Math.log(0.1)], [0, 0]]);
    for (let seed = 0; seed < 200; seed++) {
      const r = verifySampled([0], [{ ids: [0, 1], probs: [0.5, 0.5] }], target, 2, { temperature: 1, topP: 1, seed }, 3);
      expect(r.accepted).to.equal(1);
    }
  });

  it('refuses malformed draft distributions with typed errors', () => {
    const s = { temperature: 1, topP: 1, seed: 1 };
    const logits = matrix([TARGET_ROW, TARGET_ROW]);
    const bad = (d: SparseDist, token = 0): unknown => {
      try {
        verifySampled([token], [d], logits, V, s, 0);
      } catch (e) {
        return e;
      }
      return null;
    };
    const cases: Array<[SparseDist, number, string, RegExp]> = [
      [{ ids: [1, 2], probs: [0.5, 0.5] }, 0, 'malformed', /no probability in its own draft distribution/],
      [{ ids: [0, 1], probs: [0.0, 1.0] }, 0, 'malformed', /no probability/],
      [{ ids: [0, 1], probs: [0.5, 0.4] }, 0, 'malformed', /sums to/],
      [{ ids: [0, 0], probs: [0.5, 0.5] }, 0, 'malformed', /twice/],
      [{ ids: [0, 9], probs: [0.5, 0.5] }, 0, 'token_out_of_vocab', /outside the vocabulary/],
      [{ ids: [0], probs: [] }, 0, 'malformed', /differ in length/],
      [{ ids: [0, 1], probs: [1.5, -0.5] }, 0, 'malformed', /probability/],
    ];
    for (const [d, token, code, msg] of cases) {
      const e = bad(d, token);
      expect(e, JSON.stringify(d)).to.be.instanceOf(VerifyInputError);
      expect((e as VerifyInputError).code).to.equal(code);
      expect((e as Error).message).to.match(msg);
    }
    expect(() => verifySampled([0, 1], [draftTopK([0.5, 0.5], 2)], matrix([TARGET_ROW, TARGET_ROW, TARGET_ROW]), V, s, 0)).to.throw(
      VerifyInputError,
      /2 draft tokens but 1 draft distributions/,
    );
    expect(() => verifyDraft([0], undefined, logits, V, s, 0)).to.throw(VerifyInputError, /needs the draft distributions/);
  });

  it('a malformed later distribution fails the request even if an earlier token would be rejected', () => {
    const s = { temperature: 1, topP: 1, seed: 1 };
    const logits = matrix([TARGET_ROW, TARGET_ROW, TARGET_ROW]);
    expect(() =>
      verifySampled([1, 2], [{ ids: [1], probs: [1] }, { ids: [3], probs: [1] }], logits, V, s, 0),
    ).to.throw(VerifyInputError);
  });
});
