/**
 * `wisp estimator …`: offline tools for the verification time estimator.
 *   eval  — fit on one profile's verification rows, print the error on another's rows.
 *   split — deterministic train/test split of a profile (all grid and prefill rows + a seeded
 *           half of the mixed rows / the other mixed rows).
 */
import { Command, InvalidArgumentError } from 'commander';

function parseKind(v: string): 'grid' | 'mixed' | 'prefill' {
  if (v !== 'grid' && v !== 'mixed' && v !== 'prefill') throw new InvalidArgumentError('must be grid, mixed or prefill');
  return v;
}

function parseSeed(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new InvalidArgumentError('must be an integer in [0, 2^32)');
  return n;
}

export function registerEstimator(program: Command): void {
  const cmd = program.command('estimator').description('verification time estimator: offline evaluation and profile splits');

  cmd
    .command('eval')
    .description('fit on --train verification rows (grid+mixed; prefill rows skipped) of --model, score --test rows of --kind; prints {"mape","p90Ape","n"}')
    .requiredOption('--train <csv>', 'profile CSV to fit on')
    .requiredOption('--test <csv>', 'profile CSV to score')
    .requiredOption('--model <name>', 'model column value, e.g. qwen3-32b')
    .option('--kind <kind>', 'test rows of this kind (grid|mixed|prefill; prefill fits the prefill model)', parseKind, 'mixed')
    .action(async (o: { train: string; test: string; model: string; kind: 'grid' | 'mixed' | 'prefill' }) => {
      const { readFile } = await import('node:fs/promises');
      const { parseProfileCsv } = await import('../../policies/profile-csv.ts');
      const { evaluateEstimator } = await import('../../policies/estimator-eval.ts');
      const train = parseProfileCsv(await readFile(o.train, 'utf8'), o.train);
      const test = parseProfileCsv(await readFile(o.test, 'utf8'), o.test);
      const r = evaluateEstimator(train, test, { model: o.model, testKind: o.kind });
      process.stdout.write(JSON.stringify({ mape: round(r.mape), p90Ape: round(r.p90Ape), n: r.n }) + '\n');
    });

  cmd
    .command('split')
    .description('split a profile: train = grid + prefill rows + a seeded half of each model\'s mixed rows; test = the other mixed rows')
    .requiredOption('--in <csv>', 'profile CSV to split')
    .option('--seed <n>', 'seed of the mixed-row permutation', parseSeed, 42)
    .option('--out-train <csv>', 'train output (default: <in>.train.csv)')
    .option('--out-test <csv>', 'test output (default: <in>.test.csv)')
    .action(async (o: { in: string; seed: number; outTrain?: string; outTest?: string }) => {
      const { readFile, writeFile } = await import('node:fs/promises');
      const { splitProfile } = await import('../../policies/profile-split.ts');
      const s = splitProfile(await readFile(o.in, 'utf8'), o.seed, o.in);
      const stem = o.in.replace(/\.csv$/i, '');
      const trainPath = o.outTrain ?? `${stem}.train.csv`;
      const testPath = o.outTest ?? `${stem}.test.csv`;
      await writeFile(trainPath, s.trainCsv);
      await writeFile(testPath, s.testCsv);
      process.stdout.write(JSON.stringify({ seed: o.seed, train: trainPath, test: testPath, trainMixedIndex: s.trainMixedIndex }) + '\n');
    });
}

function round(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}
