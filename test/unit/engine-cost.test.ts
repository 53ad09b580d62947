import { expect } from 'chai';
import { isWispError } from '../../common/errors.ts';
import { loadEngine, servableServerIds, linearCurveOf } from '../../physics/engines.ts';
import { GPUS, MODELS, parameterCount } from '../../physics/hardware.ts';
import { isotonic, layerLinearMs, parseVidurMlpCsv } from '../../physics/operator-profile.ts';
import { kvCapacityTokens, passCost, prefillMember, verifyMember, type PassMember } from '../../physics/pass-cost.ts';
import { parsePassGroup, passMembers } from '../../physics/pass-spec.ts';

const batch = (B: number, n: number, L: number): PassMember[] => Array.from({ length: B }, () => verifyMember(n, L));

describe('physics: serving-engine cost model', () => {
  describe('validation against figures it was not built from (data/README.md)', () => {
    it('A100-80GB, 34B-class, batch 1: ≈ 45 ms/token (Qwen2.5-32B BF16 under vLLM, Qwen\'s speed benchmark), within 10 %', () => {
      // The benchmark generates 2,048 tokens after a 1-token prompt: the mean context is ~1,024.
      const ms = passCost(loadEngine('a100-80gb/34b'), batch(1, 1, 1_024)).ms;
      expect(Math.abs(ms - 45) / 45, `${ms.toFixed(2)} ms`).to.be.lessThan(0.1);
    });

    it('memory-bound decode: A100 34B at batch 128 (L = 512) costs ≤ 1.6x batch 1', () => {
      const e = loadEngine('a100-80gb/34b');
      const ratio = passCost(e, batch(128, 1, 512)).ms / passCost(e, batch(1, 1, 512)).ms;
      expect(ratio, `ratio ${ratio.toFixed(2)}`).to.be.at.most(1.6);
      expect(ratio, 'but not free: more sessions read more KV cache').to.be.greaterThan(1.05);
    });

    it('H100 34B verifying 32 × 5 tokens costs ≤ 1.3x decoding 32 (L = 512 and 2,048)', () => {
      const e = loadEngine('h100-80gb/34b');
      for (const L of [512, 2_048]) {
        const ratio = passCost(e, batch(32, 5, L)).ms / passCost(e, batch(32, 1, L)).ms;
        expect(ratio, `L = ${L}: ratio ${ratio.toFixed(2)}`).to.be.at.most(1.3);
      }
    });

    it('past the knee the pass is compute-bound: A100 34B, 512 tokens cost > 3x one token', () => {
      const e = loadEngine('a100-80gb/34b');
      expect(passCost(e, batch(512, 1, 16)).ms / passCost(e, batch(1, 1, 16)).ms).to.be.greaterThan(3);
    });
  });

  it('sums its parts; linear from the operator file × layers + embedding', () => {
    const e = loadEngine('a100-80gb/34b');
    const c = passCost(e, batch(32, 5, 2_048));
    expect(c.ms).to.be.closeTo(c.parts.linear + c.parts.attention + c.parts.lmHead + c.parts.overhead, 1e-9);
    expect(c.parts.overhead).to.equal(2);
    // The shared note's figure for this file: 44.1 ms of linear operators at 1 token.
    expect(passCost(e, batch(1, 1, 1)).parts.linear).to.be.closeTo(44.1, 0.1);
    expect(passCost(e, []).ms).to.equal(0);
  });

  it('attention: memory-bound for verification (grows with the cache), compute-bound for long prompts', () => {
    const e = loadEngine('a100-80gb/34b');
    const floor = 48 * 0.01;
    const short = passCost(e, batch(32, 1, 512)).parts.attention - floor;
    const long = passCost(e, batch(32, 1, 2_048)).parts.attention - floor;
    expect(long / short).to.be.closeTo(2_049 / 513, 1e-9);
    // A 2,048-token prompt: 2·n²·d FLOPs per layer over the attention FLOP/s, plus the floor.
    const p = passCost(e, [prefillMember(2_048)]).parts.attention;
    const flops = 2 * 2_048 ** 2 * 8_192 * 48;
    expect(p).to.be.closeTo((flops / GPUS['a100-80gb'].attentionFlopsPerS) * 1_000 + 48 * 0.01, 1e-6);
  });

  it('computes logits only where needed: a prompt\'s last token, every verified position', () => {
    const e = loadEngine('h100-80gb/7b');
    expect(passCost(e, [prefillMember(4_000)]).parts.lmHead).to.be.lessThan(passCost(e, batch(1, 4_000, 0).map((m) => ({ ...m, prefill: true }))).parts.lmHead);
    expect(passCost(e, [prefillMember(512, 1_024, false)]).parts.lmHead).to.equal(0);
  });

  it('keeps the linear curve monotone where the measurements wobble (isotonic regression)', () => {
    expect(isotonic([1, 3, 2, 4])).to.deep.equal([1, 2.5, 2.5, 4]);
    expect(isotonic([5, 4, 3])).to.deep.equal([4, 4, 4]);
    const gpu = GPUS['a100-80gb'];
    const c = linearCurveOf(gpu, MODELS['34b']);
    const raw96 = c.rawLayerMs[c.tokens.indexOf(96)];
    const raw128 = c.rawLayerMs[c.tokens.indexOf(128)];
    expect(raw96, 'the file itself is not monotone there').to.be.greaterThan(raw128);
    for (let i = 1; i < c.layerMs.length; i++) expect(c.layerMs[i]).to.be.at.least(c.layerMs[i - 1]);
    expect(layerLinearMs(c, 112)).to.be.at.least(layerLinearMs(c, 96));
    // Past the largest measured count, the time grows in proportion.
    expect(layerLinearMs(c, 8_192) / layerLinearMs(c, 4_096)).to.be.closeTo(2, 1e-9);
  });

  it('KV-cache memory: capacity = (0.9 × memory − weights − reserve) ÷ bytes per token', () => {
    const e = loadEngine('a100-80gb/34b');
    expect(parameterCount(MODELS['34b']) / 1e9).to.be.closeTo(33.7, 0.1);
    const perToken = 2 * 48 * 8 * 128 * 2;
    expect(kvCapacityTokens(e)).to.equal(Math.floor((0.9 * 81_920 * 2 ** 20 - parameterCount(MODELS['34b']) * 2 - 2 ** 30) / perToken));
  });

  it('refuses a pair that does not fit, an unknown preset and a malformed name, with the reason', () => {
    const err = (f: () => unknown): Error => {
      try {
        f();
      } catch (e) {
        return e as Error;
      }
      throw new Error('did not throw');
    };
    const fit = err(() => loadEngine('a40-48gb/34b'));
    expect(isWispError(fit, 'bad_server_spec')).to.equal(true);
    expect(fit.message).to.match(/34b does not fit on a40-48gb: 67\.5 GB of bf16 weights/);
    expect(err(() => loadEngine('a10/34b')).message).to.match(/unknown GPU "a10" \(known: a40-48gb, a100-80gb, h100-80gb\)/);
    expect(err(() => loadEngine('a100-80gb/70b')).message).to.match(/unknown model "70b"/);
    expect(err(() => loadEngine('a100-80gb')).message).to.match(/not of the form gpu\/model/);
    expect(servableServerIds()).to.deep.equal(['a40-48gb/7b', 'a100-80gb/34b', 'a100-80gb/7b', 'h100-80gb/34b', 'h100-80gb/7b']);
  });

  it('parses operator files strictly (a bad number names its line)', () => {
    const header = 'time_stats.emb.median,' + ['input_layernorm', 'attn_pre_proj', 'attn_rope', 'attn_post_proj', 'post_attention_layernorm', 'mlp_up_proj', 'mlp_act', 'mlp_down_proj', 'add'].map((o) => `time_stats.${o}.median`).join(',') + ',n_head,n_kv_head,n_embd,n_expanded_embd,num_tokens,num_tensor_parallel_workers';
    const row = (t: number, v: string) => [v, ...Array(9).fill('0.1'), 8, 8, 512, 1024, t, 1].join(',');
    const c = parseVidurMlpCsv([header, row(1, '0.5'), row(2, '0.7'), row(2, '0.9')].join('\n'), 'x.csv');
    expect(c.tokens).to.deep.equal([1, 2]);
    expect(c.embMs[1]).to.be.closeTo(0.8, 1e-12); // repeated counts are averaged
    expect(() => parseVidurMlpCsv([header, row(1, 'abc')].join('\n'), 'x.csv')).to.throw(/x\.csv:2: emb is not a number/);
    expect(() => parseVidurMlpCsv('num_tokens\n1', 'y.csv')).to.throw(/y\.csv: missing column/);
  });

  it('reads pass specs as wisp server-cost takes them', () => {
    expect(parsePassGroup('32x5@2048', false)).to.deep.equal({ count: 32, newTokens: 5, cachedTokens: 2_048, prefill: false });
    expect(parsePassGroup('1x512', true)).to.deep.equal({ count: 1, newTokens: 512, cachedTokens: 0, prefill: true });
    expect(passMembers([parsePassGroup('2x3@10', false)])).to.deep.equal([verifyMember(3, 10), verifyMember(3, 10)]);
    expect(() => parsePassGroup('32x5', false)).to.throw(/needs its cached length/);
    expect(() => parsePassGroup('0x5@1', false)).to.throw(/must be ≥ 1/);
    expect(() => parsePassGroup('five', true)).to.throw(/not of the form BxN or BxN@L/);
  });
});
