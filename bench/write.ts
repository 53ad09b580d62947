/**
 * Writes a bench or sim run to a report folder: results.json (and, where bench/report.ts
 * renders them, SVG plots and report.md). Returns the folder.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { BenchResults } from './metrics.ts';

export async function writeRunReport(results: BenchResults, outDir?: string): Promise<string> {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const dir = resolve(outDir ?? join('reports', `${results.kind}-${stamp}`));
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  return dir;
}
