/**
 * `wisp generate`: one prompt through the target alone or speculatively (draft + target) in this
 * process. A quick check of a model pair and of the decoding math; the distributed system runs
 * the same functions (inference/speculative.ts, verify.ts) across machines.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { OptionsError } from '../errors.ts';

const OptionsSchema = z.object({
  prompt: z.string().min(1, 'prompt is empty'),
  maxTokens: z.coerce.number().int().min(1).max(8192),
  mode: z.enum(['target', 'speculative']),
  draftLen: z.coerce.number().int().min(0).max(64),
  temperature: z.coerce.number().finite().min(0).max(10),
  topP: z.coerce.number().finite().gt(0).max(1),
  topK: z.coerce.number().int().min(1).max(64),
  seed: z.coerce.number().int().min(0).max(2 ** 32 - 1),
  modelDir: z.string().min(1).optional(),
  draft: z.string().min(1).optional(),
  threads: z.coerce.number().int().min(1).max(256).optional(),
  json: z.boolean().default(false),
});
export type GenerateCliOptions = z.infer<typeof OptionsSchema>;

/** What `wisp generate --json` prints (one object, one line). */
export interface GenerateJson {
  tokens: number[];
  text: string;
  stats: { rounds: number; drafted: number; accepted: number };
}

/**
 * The target and draft folders of a model dir: `<dir>/target` and `<dir>/draft-*` (the named
 * draft, else draft-1, else the first in name order). Without a dir: the forged tiny pair.
 */
export async function resolveModelPair(
  modelDir: string | undefined,
  draftName: string | undefined,
): Promise<{ targetDir: string; draftDir: string | null }> {
  const { join, resolve } = await import('node:path');
  const { readdir, stat } = await import('node:fs/promises');
  const { ModelDirNotFoundError, ModelFileMissingError } = await import('../../inference/errors.ts');
  let root: string;
  if (modelDir === undefined) {
    const { ensureModelPair } = await import('../../inference/forge/index.ts');
    root = (await ensureModelPair('tiny')).root;
  } else {
    root = resolve(modelDir);
  }
  const isDir = async (p: string): Promise<boolean> => (await stat(p).catch(() => null))?.isDirectory() ?? false;
  if (!(await isDir(root))) throw new ModelDirNotFoundError(root);
  const targetDir = join(root, 'target');
  if (!(await isDir(targetDir))) throw new ModelFileMissingError(targetDir, 'target model folder (target/)');
  const drafts: string[] = [];
  for (const name of (await readdir(root)).sort()) {
    if (/^draft-/.test(name) && (await isDir(join(root, name)))) drafts.push(name);
  }
  if (draftName !== undefined) {
    if (!drafts.includes(draftName)) throw new ModelFileMissingError(join(root, draftName), `draft model folder (have: ${drafts.join(', ') || 'none'})`);
    return { targetDir, draftDir: join(root, draftName) };
  }
  const pick = drafts.includes('draft-1') ? 'draft-1' : drafts[0];
  return { targetDir, draftDir: pick === undefined ? null : join(root, pick) };
}

/** Runs one generation as the command does; returns the JSON object and a one-line summary. */
export async function runGenerate(o: GenerateCliOptions): Promise<{ json: GenerateJson; summary: string }> {
  const { loadDecoder } = await import('../../inference/onnx-runner.ts');
  const { loadTokenizer } = await import('../../inference/tokenizer.ts');
  const { generateSpeculative, generateTarget } = await import('../../inference/speculative.ts');
  const { ModelFileMissingError } = await import('../../inference/errors.ts');
  const { assertFitsContext, checkTokenizerMatchesModel } = await import('../../inference/model-dir.ts');

  const { targetDir, draftDir } = await resolveModelPair(o.modelDir, o.draft);
  if (o.mode === 'speculative' && draftDir === null) throw new ModelFileMissingError(targetDir.replace(/target$/, 'draft-1'), 'draft model folder (draft-*/)');
  const tokenizer = await loadTokenizer(targetDir);
  const target = await loadDecoder(targetDir, { threads: o.threads });
  const draft = o.mode === 'speculative' ? await loadDecoder(draftDir!, { threads: o.threads }) : null;
  try {
    checkTokenizerMatchesModel(tokenizer, target.info);
    if (draft) checkTokenizerMatchesModel(tokenizer, draft.info);
    const promptTokens = tokenizer.encode(o.prompt);
    // The prompt plus at least one new token must fit the target's context.
    assertFitsContext(target.info, promptTokens.length + 1);
    const sampling = { temperature: o.temperature, topP: o.topP, seed: o.seed };
    const eosTokenId = tokenizer.eosTokenId ?? target.info.eosTokenId;
    const t0 = performance.now();
    const result = draft
      ? await generateSpeculative(target, draft, promptTokens, {
          maxNewTokens: o.maxTokens,
          draftLen: o.draftLen,
          sampling,
          eosTokenId,
          topK: o.topK,
        })
      : await generateTarget(target, promptTokens, { maxNewTokens: o.maxTokens, sampling, eosTokenId });
    const wallMs = performance.now() - t0;
    const { rounds, drafted, accepted } = result.stats;
    const json: GenerateJson = { tokens: result.tokens, text: tokenizer.decode(result.tokens), stats: { rounds, drafted, accepted } };
    const rate = drafted > 0 ? ` (${((100 * accepted) / drafted).toFixed(1)}%)` : '';
    const summary =
      `[${o.mode}] ${promptTokens.length} prompt + ${result.tokens.length} new tokens, stop: ${result.stopReason}, ` +
      `rounds ${rounds}, drafted ${drafted}, accepted ${accepted}${rate}, ${(wallMs / 1000).toFixed(2)} s`;
    return { json, summary };
  } finally {
    await draft?.dispose();
    await target.dispose();
  }
}

/** Registers `wisp generate`. */
export function registerGenerate(program: Command): void {
  program
    .command('generate')
    .description('generate text from a prompt with the target model alone or speculatively (draft + target), in this process')
    .requiredOption('--prompt <text>', 'prompt text')
    .option('--max-tokens <n>', 'most tokens to generate', '32')
    .option('--mode <mode>', 'target | speculative', 'speculative')
    .option('--draft-len <k>', 'draft tokens per round (speculative)', '4')
    .option('--temperature <t>', 'sampling temperature; 0 = greedy', '0')
    .option('--top-p <p>', 'nucleus sampling mass, in (0, 1]', '1')
    .option('--top-k <k>', "size of the draft's sparse distribution when sampling", '32')
    .option('--seed <s>', 'sampling seed', '0')
    .option('--model-dir <dir>', 'folder with target/ and draft-*/ model folders (default: the forged tiny pair)')
    .option('--draft <name>', 'draft folder inside --model-dir (default: draft-1, else the first)')
    .option('--threads <n>', 'ONNX Runtime intra-op threads')
    .option('--json', 'print one JSON object {tokens, text, stats}')
    .action(async (raw: Record<string, unknown>) => {
      const parsed = OptionsSchema.safeParse(raw);
      if (!parsed.success) {
        const i = parsed.error.issues[0];
        const flag = `--${String(i.path[0] ?? '').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
        throw new OptionsError(`${flag}: ${i.message}`);
      }
      const { json, summary } = await runGenerate(parsed.data);
      if (parsed.data.json) process.stdout.write(`${JSON.stringify(json)}\n`);
      else process.stdout.write(`${json.text}\n${summary}\n`);
    });
}
