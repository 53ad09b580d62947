/**
 * `wisp models forge`: forges a deterministic target/draft pair with its tokenizer
 * (inference/forge) and prints where it wrote it and how long it took.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { OptionsError } from '../errors.ts';

const ForgeCliSchema = z.object({
  preset: z.enum(['tiny', 'small']),
  seed: z.coerce.number().int().min(0).max(2 ** 32 - 1).optional(),
  agreement: z.coerce.number().finite().min(0.5).max(0.95).optional(),
  gqa: z.coerce.number().int().min(1).optional(),
  merged: z.boolean().default(false),
  drafts: z
    .string()
    .regex(/^\d+(,\d+)*$/, 'drafts is a comma-separated list of layer counts, e.g. 1,2')
    .transform((s) => s.split(',').map(Number))
    .optional(),
  out: z.string().min(1).optional(),
});

/** Default output folder: the preset's built-in location, or a name that spells out the options. */
function defaultOut(modelsDir: string, o: z.infer<typeof ForgeCliSchema>): string {
  const parts: string[] = [o.preset];
  if (o.seed !== undefined) parts.push(`s${o.seed}`);
  if (o.agreement !== undefined) parts.push(`a${o.agreement}`);
  if (o.gqa !== undefined) parts.push(`kv${o.gqa}`);
  if (o.merged) parts.push('merged');
  if (o.drafts !== undefined) parts.push(`d${o.drafts.join('-')}`);
  return `${modelsDir}/${parts.length === 1 ? o.preset : `custom/${parts.join('-')}`}`;
}

export function registerModels(program: Command): void {
  const models = program.command('models').description('built-in model pairs (the model forge)');
  models
    .command('forge')
    .description('forge a deterministic GPT-style target/draft pair + tokenizer (Optimum ONNX layout)')
    .option('--preset <name>', 'tiny (tests) or small (benchmarks)', 'tiny')
    .option('--seed <n>', 'PRNG seed (same seed → identical files)')
    .option('--agreement <x>', 'greedy draft-1/target agreement to aim for, 0.5–0.95')
    .option('--gqa <kvHeads>', 'key/value heads (grouped-query attention)')
    .option('--merged', 'merged decoder with a use_cache_branch input', false)
    .option('--drafts <depths>', 'draft depths in layers, comma-separated (default 1,2 as the built-in pairs)')
    .option('--out <dir>', 'output folder (default: under $WISP_MODELS_DIR or .wisp/models)')
    .action(async (raw: Record<string, unknown>) => {
      const parsed = ForgeCliSchema.safeParse(raw);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        throw new OptionsError(`--${issue.path.join('.')}: ${issue.message}`);
      }
      const o = parsed.data;
      const { resolve } = await import('node:path');
      const { forgeModelsAtomic, defaultModelsDir, BUILT_IN_DRAFTS } = await import('../../inference/forge/index.ts');
      const outDir = resolve(o.out ?? defaultOut(defaultModelsDir(), o));
      // Atomic: tests or servers may be reading the folder being replaced.
      const m = await forgeModelsAtomic({
        preset: o.preset,
        outDir,
        ...(o.seed !== undefined ? { seed: o.seed } : {}),
        ...(o.agreement !== undefined ? { agreement: o.agreement } : {}),
        ...(o.gqa !== undefined ? { numKvHeads: o.gqa } : {}),
        drafts: o.drafts ?? BUILT_IN_DRAFTS,
        merged: o.merged,
      });
      const d = m.options.dims;
      process.stdout.write(
        [
          `forged ${m.options.preset} pair in ${m.forgeMs.toFixed(0)} ms → ${m.outDir}`,
          `  target   ${m.targetDir}  (${d.numLayers} layers, d ${d.hiddenSize}, heads ${d.numHeads}/${d.numKvHeads} kv, vocab ${d.vocabSize}, context ${d.maxPositions})`,
          ...m.draftDirs.map((dir, i) => `  draft    ${dir}  (${m.options.drafts[i]} layer${m.options.drafts[i] > 1 ? 's' : ''})`),
          `  seed ${m.options.seed}, agreement ${m.options.agreement} (β ${m.beta.toFixed(4)}), merged ${m.options.merged}, tokenizer ${m.tokenizerVocabSize} ids, EOS ${m.eosTokenId}`,
          '',
        ].join('\n'),
      );
    });
}
