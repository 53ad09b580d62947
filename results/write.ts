/**
 * Writes a bench or sim run to a report folder: results.json, any extra files (measured
 * profiles), and — when bench/report.ts can render them — SVG plots and report.md.
 * Returns the folder.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { WispError } from '../common/errors.ts';
import { BenchResultsSchema, type BenchResults } from './schema.ts';

export class ResultsShapeError extends WispError {
  constructor(message: string) {
    super('bad_results', message);
  }
}

export async function writeRunReport(results: BenchResults, outDir?: string, extra: Record<string, string> = {}): Promise<string> {
  // Whatever wrote it, results.json has the one shape its readers (sim --replay, reports) expect.
  const checked = BenchResultsSchema.safeParse(results);
  if (!checked.success) {
    const why = checked.error.issues.slice(0, 3).map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ResultsShapeError(`refusing to write results.json that does not match results/schema.ts (${why})`);
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const dir = resolve(outDir ?? join('reports', `${results.kind}-${stamp}`));
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  for (const [name, text] of Object.entries(extra)) await writeFile(join(dir, name), text);
  return dir;
}
