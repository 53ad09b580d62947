/**
 * `wisp generate`: the CLI prints the promised JSON object (one spawn), and the command's
 * building blocks refuse bad model folders and over-long prompts with clear typed errors.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ensureModelPair } from '../../inference/forge/index.ts';
import { loadDecoder } from '../../inference/onnx-runner.ts';
import { loadTokenizer } from '../../inference/tokenizer.ts';
import { generateTarget } from '../../inference/speculative.ts';
import { InferenceError } from '../../inference/errors.ts';
import { resolveModelPair, runGenerate, type GenerateCliOptions } from '../../cli/commands/generate.ts';

const run = promisify(execFile);
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

describe('wisp generate', function () {
  this.timeout(120_000);
  let modelRoot: string;
  let scratch: string;

  before(async () => {
    modelRoot = (await ensureModelPair('tiny')).root;
    scratch = await mkdtemp(join(tmpdir(), 'wisp-generate-'));
  });
  after(async () => {
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  it('--json prints exactly one object {tokens, text, stats} whose tokens are the target greedy output', async () => {
    const prompt = 'The keeper of the lighthouse';
    const { stdout } = await run(
      process.execPath,
      ['bin/wisp.js', 'generate', '--prompt', prompt, '--max-tokens', '12', '--mode', 'speculative', '--draft-len', '3', '--model-dir', modelRoot, '--threads', '1', '--json'],
      { cwd: REPO },
    );
    const lines = stdout.trim().split('\n');
    expect(lines).to.have.length(1);
    const out = JSON.parse(lines[0]) as { tokens: number[]; text: string; stats: Record<string, number> };
    expect(Object.keys(out)).to.deep.equal(['tokens', 'text', 'stats']);
    expect(Object.keys(out.stats)).to.deep.equal(['rounds', 'drafted', 'accepted']);
    expect(out.stats.rounds).to.be.greaterThan(0);
    expect(out.stats.accepted).to.be.at.most(out.stats.drafted);

    // Lossless: the same tokens as the target alone, and text is their decoding.
    const tok = await loadTokenizer(join(modelRoot, 'target'));
    const target = await loadDecoder(join(modelRoot, 'target'), { threads: 1 });
    try {
      const ref = await generateTarget(target, tok.encode(prompt), {
        maxNewTokens: 12,
        sampling: { temperature: 0, topP: 1, seed: 0 },
        eosTokenId: tok.eosTokenId,
      });
      expect(out.tokens).to.deep.equal(ref.tokens);
      expect(out.text).to.equal(tok.decode(ref.tokens));
    } finally {
      await target.dispose();
    }
  });

  it('target mode and speculative mode agree under greedy (in-process runGenerate)', async () => {
    const base: GenerateCliOptions = {
      prompt: 'In the morning the boats went out',
      maxTokens: 16,
      mode: 'target',
      draftLen: 5,
      temperature: 0,
      topP: 1,
      topK: 32,
      seed: 0,
      modelDir: modelRoot,
      threads: 1,
      json: true,
    };
    const t = await runGenerate(base);
    const s = await runGenerate({ ...base, mode: 'speculative' });
    expect(s.json.tokens).to.deep.equal(t.json.tokens);
    expect(t.json.stats).to.deep.equal({ rounds: 0, drafted: 0, accepted: 0 });
    expect(s.summary).to.match(/^\[speculative\] \d+ prompt \+ \d+ new tokens, stop: \w+, rounds \d+/);
  });

  it('refuses a missing model dir, a dir without target/, a missing named draft, and a prompt longer than the context', async () => {
    const missing = join(scratch, 'nope');
    const e1 = await resolveModelPair(missing, undefined).catch((e: unknown) => e);
    expect((e1 as InferenceError).code).to.equal('model_dir_not_found');
    expect((e1 as Error).message).to.include(missing);

    const empty = join(scratch, 'empty');
    await mkdir(empty);
    const e2 = await resolveModelPair(empty, undefined).catch((e: unknown) => e);
    expect((e2 as InferenceError).code).to.equal('model_file_missing');
    expect((e2 as Error).message).to.include(join(empty, 'target'));

    const e3 = await resolveModelPair(modelRoot, 'draft-9').catch((e: unknown) => e);
    expect((e3 as InferenceError).code).to.equal('model_file_missing');
    expect((e3 as Error).message).to.match(/have: draft-1/);

    const long = 'the sea and the town '.repeat(400);
    const e4 = await runGenerate({
      prompt: long,
      maxTokens: 4,
      mode: 'target',
      draftLen: 2,
      temperature: 0,
      topP: 1,
      topK: 32,
      seed: 0,
      modelDir: modelRoot,
      threads: 1,
      json: true,
    }).catch((e: unknown) => e);
    expect((e4 as InferenceError).code).to.equal('prompt_too_long');
    expect((e4 as Error).message).to.match(/exceed the 512-token context of model wisp-tiny-target/);
  });
});
