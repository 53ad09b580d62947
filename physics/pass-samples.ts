/**
 * Random pass compositions of the kinds a scheduler builds — verification batches, decode
 * steps, prompt batches and passes mixing prompts with verifications — for fitting and checking
 * a pass-time estimator against the engine model. Pure: the caller gives the uniform source.
 */
import type { BatchShape } from '../policies/types.ts';

const int = (next: () => number, lo: number, hi: number): number => lo + Math.floor(next() * (hi - lo + 1));

/** One random pass (members as the estimator sees them: L = 0 is a prompt). */
export function randomPassShapes(next: () => number): BatchShape[] {
  const kind = next();
  const verify = (B: number, nMax: number): BatchShape[] => Array.from({ length: B }, () => ({ n: int(next, 1, nMax), L: int(next, 16, 4_096) }));
  const prompts = (B: number): BatchShape[] => Array.from({ length: B }, () => ({ n: int(next, 16, 2_048), L: 0 }));
  if (kind < 0.35) return verify(int(next, 1, 64), 9);
  if (kind < 0.6) return Array.from({ length: int(next, 1, 256) }, () => ({ n: 1, L: int(next, 16, 4_096) }));
  if (kind < 0.8) return prompts(int(next, 1, 4));
  return [...verify(int(next, 1, 48), 9), ...prompts(int(next, 1, 2))];
}
