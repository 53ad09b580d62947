import { expect } from 'chai';
import { bytesToUnicode, trainByteLevelBpe } from '../../inference/forge/bpe-trainer.ts';
import { FORGE_CORPUS, FORGE_CORPUS_PARAGRAPHS } from '../../inference/forge/corpus.ts';
import { resolveForgeOptions } from '../../inference/forge/forge.ts';
import { AGREEMENT_CURVE, MAX_AGREEMENT, MIN_AGREEMENT, betaForAgreement } from '../../inference/forge/presets.ts';
import { Prng } from '../../inference/forge/prng.ts';
import { buildTokenizerFiles, EOS_TOKEN } from '../../inference/forge/tokenizer-json.ts';
import { ForgeOptionsError } from '../../inference/errors.ts';

describe('forge parts (pure)', () => {
  describe('Prng', () => {
    it('gives the same stream for the same seed and a different one for another seed', () => {
      const a = new Prng(7);
      const b = new Prng(7);
      const c = new Prng(8);
      const sa = Array.from({ length: 5 }, () => a.next());
      expect(Array.from({ length: 5 }, () => b.next())).to.deep.equal(sa);
      expect(Array.from({ length: 5 }, () => c.next())).to.not.deep.equal(sa);
      for (const x of sa) expect(x).to.be.within(0, 1);
    });

    it('forks depend on the seed and label only, not on draws already made', () => {
      const a = new Prng(3);
      const b = new Prng(3);
      b.next();
      b.normal();
      expect(a.fork('layer.1').next()).to.equal(b.fork('layer.1').next());
      expect(a.fork('layer.1').next()).to.not.equal(a.fork('layer.2').next());
    });

    it('draws normal and uniform arrays with the requested standard deviation', () => {
      const p = new Prng(11);
      for (const arr of [p.normalArray(20_000, 0.5), p.uniformArray(20_000, 0.5)]) {
        const mean = arr.reduce((s, x) => s + x, 0) / arr.length;
        const sd = Math.sqrt(arr.reduce((s, x) => s + (x - mean) ** 2, 0) / arr.length);
        expect(Math.abs(mean)).to.be.below(0.02);
        expect(sd).to.be.closeTo(0.5, 0.02);
      }
    });
  });

  describe('byte-level BPE trainer', () => {
    it('maps all 256 bytes to distinct printable characters (GPT-2 table)', () => {
      const table = bytesToUnicode();
      expect(new Set(table).size).to.equal(256);
      expect(table[32]).to.equal('Ġ');
      expect(table[10]).to.equal('Ċ');
      expect(table[65]).to.equal('A');
    });

    it('is deterministic and fills the vocabulary it is asked for', () => {
      const sources = [{ text: FORGE_CORPUS, weight: 1 }];
      const a = trainByteLevelBpe(sources, 600);
      const b = trainByteLevelBpe(sources, 600);
      expect(a).to.deep.equal(b);
      expect(a.tokens).to.have.length(600);
      expect(a.merges).to.have.length(600 - 256);
      expect(new Set(a.tokens).size).to.equal(a.tokens.length);
      // The most frequent word of the corpus becomes a single token early.
      expect(a.tokens.indexOf('Ġthe')).to.be.within(256, 300);
    });

    it('stops when no pair reaches the minimum count', () => {
      const bpe = trainByteLevelBpe([{ text: 'ab ab ab cd', weight: 1 }], 1000, 2);
      expect(bpe.merges.map((m) => m.join(' '))).to.deep.equal(['a b', 'Ġ ab']);
    });

    it('builds tokenizer files with EOS after the last merge and clean-up off', () => {
      const files = buildTokenizerFiles(trainByteLevelBpe([{ text: FORGE_CORPUS_PARAGRAPHS[0], weight: 1 }], 300), 128);
      expect(files.eosTokenId).to.equal(300);
      expect(files.vocabSize).to.equal(301);
      expect(files.tokenizerConfig.clean_up_tokenization_spaces).to.equal(false);
      expect(files.tokenizerConfig.eos_token).to.equal(EOS_TOKEN);
      for (const key of ['added_tokens', 'normalizer', 'pre_tokenizer', 'post_processor', 'decoder', 'model']) {
        expect(files.tokenizerJson).to.have.property(key);
      }
    });
  });

  describe('corpus', () => {
    it('is plain English prose of 3–6 KB', () => {
      expect(FORGE_CORPUS.length).to.be.within(3_000, 6_500);
      expect(FORGE_CORPUS).to.match(/^[\x20-\x7e\n]+$/);
    });
  });

  describe('agreement → β guess', () => {
    it('falls monotonically as agreement rises and passes through the curve points', () => {
      let prev = Infinity;
      for (let a = MIN_AGREEMENT; a <= MAX_AGREEMENT + 1e-9; a += 0.01) {
        const beta = betaForAgreement(a);
        expect(beta).to.be.at.most(prev);
        prev = beta;
      }
      for (const [a, b] of AGREEMENT_CURVE) expect(betaForAgreement(a)).to.be.closeTo(b, 1e-12);
    });
  });

  describe('forge options', () => {
    it('fills defaults from the preset', () => {
      const o = resolveForgeOptions({ preset: 'small', numKvHeads: 2, drafts: [2, 1, 2] });
      expect(o.dims).to.include({ numLayers: 6, hiddenSize: 256, numKvHeads: 2, headDim: 32, vocabSize: 2048 });
      expect(o.drafts).to.deep.equal([1, 2]);
      expect(o.beta).to.equal(null);
    });

    const bad: Array<[string, Parameters<typeof resolveForgeOptions>[0], string]> = [
      ['agreement too high', { agreement: 0.99 }, 'invalid forge options: agreement must be in 0.5..0.95, got 0.99'],
      ['kv heads not dividing heads', { numKvHeads: 3 }, 'invalid forge options: numKvHeads 3 must divide numHeads 4'],
      ['draft as deep as the target', { drafts: [4] }, 'invalid forge options: draft depth 4 must be an integer in 1..3'],
      ['negative seed', { seed: -1 }, 'invalid forge options: seed must be an integer in 0..4294967295, got -1'],
      ['unknown preset', { preset: 'huge' as 'tiny' }, 'invalid forge options: unknown preset "huge" (expected tiny or small)'],
    ];
    for (const [what, opts, message] of bad) {
      it(`refuses ${what}`, () => {
        expect(() => resolveForgeOptions(opts)).to.throw(ForgeOptionsError, message);
      });
    }
  });
});
