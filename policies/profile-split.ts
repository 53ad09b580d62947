/**
 * Deterministic train/test split of a latency profile, for checking the estimator on batches
 * it was not fit on. Train: every grid and prefill row plus a seeded half of each model's mixed
 * rows; test: the other mixed rows. Works on the text so the split files keep the source lines
 * byte for byte.
 */
import { parseProfileCsv, PROFILE_COLUMNS } from './profile-csv.ts';
import { seededPermutation } from './seeded-rng.ts';

export interface ProfileSplit {
  /** CSV text (header + rows) of the training side. */
  trainCsv: string;
  /** CSV text (header + rows) of the test side. */
  testCsv: string;
  /** Per model, the 0-based indices (in file order among that model's mixed rows) put in train. */
  trainMixedIndex: Record<string, number[]>;
}

/**
 * Splits a profile. For each model, its mixed rows are permuted with `seed` and the first
 * ⌊k/2⌋ go to train. Rows keep their file order on both sides.
 */
export function splitProfile(text: string, seed: number, source = 'profile'): ProfileSplit {
  const rows = parseProfileCsv(text, source);
  const lines = text.split(/\r?\n/);
  const inTrain = new Set<number>();
  const trainMixedIndex: Record<string, number[]> = {};
  const models = [...new Set(rows.map((r) => r.model))];
  for (const model of models) {
    const mixed = rows.filter((r) => r.model === model && r.kind === 'mixed');
    const chosen = seededPermutation(mixed.length, seed).slice(0, Math.floor(mixed.length / 2)).sort((a, b) => a - b);
    trainMixedIndex[model] = chosen;
    for (const i of chosen) inTrain.add(mixed[i].line);
  }
  const header = PROFILE_COLUMNS.join(',');
  const train = [header];
  const test = [header];
  for (const r of rows) {
    const text = lines[r.line - 1];
    if (r.kind !== 'mixed' || inTrain.has(r.line)) train.push(text);
    else test.push(text);
  }
  return { trainCsv: train.join('\n') + '\n', testCsv: test.join('\n') + '\n', trainMixedIndex };
}
