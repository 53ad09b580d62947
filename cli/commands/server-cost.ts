/**
 * `wisp server-cost`: the serving-engine cost model's time for one forward pass, with its
 * breakdown — for planning capacity. E.g.
 *   wisp server-cost --gpu a100-80gb --model 34b --batch 32x5@2048
 *   wisp server-cost --server h100-80gb/34b --batch 32x1@512 --prefill 1x512 --json
 * `--json` prints {"ms": <total>, "parts": {"linear", "attention", "lmHead", "overhead"}}.
 */
import type { Command } from 'commander';
import { argParser, NON_NEG } from '../flags.ts';

interface ServerCostFlags {
  server?: string;
  gpu?: string;
  model?: string;
  batch: string[];
  prefill: string[];
  overheadMs?: number;
  json?: boolean;
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

const nonNeg = argParser(NON_NEG);

export function registerServerCost(program: Command): void {
  program
    .command('server-cost')
    .description('modelled time of one serving-engine forward pass (linear operators measured by Vidur, roofline attention, LM head, engine overhead)')
    .option('--server <gpu/model>', 'engine, e.g. a100-80gb/34b (or --gpu and --model)')
    .option('--gpu <name>', 'a40-48gb | a100-80gb | h100-80gb')
    .option('--model <name>', '34b (CodeLlama-34B shapes, standing in for Qwen3-32B) | 7b (Llama-2-7B shapes)')
    .option('--batch <BxN@L>', 'B requests of N new tokens over L cached (verify: N = drafts + 1; decode: N = 1); repeatable', collect, [])
    .option('--prefill <BxN[@L]>', 'B prompts of N tokens (over L cached: a chunk); repeatable', collect, [])
    .option('--overhead-ms <ms>', 'engine overhead per pass (default 2)', nonNeg)
    .option('--json', 'print {"ms","parts"} only')
    .action(async (flags: ServerCostFlags) => {
      const { loadEngine } = await import('../../physics/engines.ts');
      const { passCost, kvCapacityTokens, totalsOf } = await import('../../physics/pass-cost.ts');
      const { kvBytesPerToken, weightBytes } = await import('../../physics/hardware.ts');
      const { parsePassGroup, passMembers } = await import('../../physics/pass-spec.ts');
      if (flags.server !== undefined && (flags.gpu !== undefined || flags.model !== undefined)) throw new Error('--server: give either --server gpu/model or --gpu and --model');
      if (flags.server === undefined && (flags.gpu === undefined || flags.model === undefined)) throw new Error('--server: name the engine with --server gpu/model, or both --gpu and --model');
      const id = flags.server ?? `${flags.gpu}/${flags.model}`;
      const engine = loadEngine(id, flags.overheadMs !== undefined ? { overheadMs: flags.overheadMs } : {});
      const groups = [...flags.batch.map((b) => parsePassGroup(b, false)), ...flags.prefill.map((p) => parsePassGroup(p, true))];
      if (groups.length === 0) throw new Error('--batch: describe the pass with --batch BxN@L and/or --prefill BxN');
      const members = passMembers(groups);
      const cost = passCost(engine, members);
      if (flags.json) {
        process.stdout.write(`${JSON.stringify({ ms: cost.ms, parts: cost.parts })}\n`);
        return;
      }
      const t = totalsOf(members);
      const f = (x: number): string => x.toFixed(2).padStart(9);
      const describe = groups.map((g) => (g.prefill ? `${g.count} × prompt of ${g.newTokens}${g.cachedTokens ? ` @ ${g.cachedTokens}` : ''}` : `${g.count} × ${g.newTokens} @ ${g.cachedTokens}`)).join(' + ');
      const lines = [
        `${engine.id}: ${engine.gpu.description}, ${engine.model.description}`,
        `pass: ${describe} (${t.tokens} tokens, ${t.kvTokens} KV positions read, ${t.logitTokens} logit rows)`,
        `  linear    ${f(cost.parts.linear)} ms`,
        `  attention ${f(cost.parts.attention)} ms`,
        `  LM head   ${f(cost.parts.lmHead)} ms`,
        `  overhead  ${f(cost.parts.overhead)} ms`,
        `  total     ${f(cost.ms)} ms`,
        `memory: weights ${(weightBytes(engine.model) / 1e9).toFixed(1)} GB; KV cache ${kvCapacityTokens(engine).toLocaleString('en-US')} tokens at ${kvBytesPerToken(engine.model).toLocaleString('en-US')} bytes/token`,
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
