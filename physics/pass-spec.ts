/**
 * The text form of a pass that `wisp server-cost` takes: groups of equal members,
 * `BxN@L` — B requests each feeding N tokens over L cached ones (`32x5@2048`: 32 verifications
 * of 4 drafts + 1 over 2,048 cached) — and prompts `BxN` or `BxN@L` (a chunk over L cached).
 */
import { WispError } from '../common/errors.ts';
import { prefillMember, verifyMember, type PassMember } from './pass-cost.ts';

export class PassSpecError extends WispError {
  constructor(message: string) {
    super('bad_pass_spec', message);
  }
}

export interface PassGroup {
  count: number;
  newTokens: number;
  cachedTokens: number;
  prefill: boolean;
}

const GROUP = /^(\d+)x(\d+)(?:@(\d+))?$/;

/** Parses one group. @throws PassSpecError naming the text and the form expected */
export function parsePassGroup(text: string, prefill: boolean): PassGroup {
  const m = GROUP.exec(text.trim());
  const form = prefill ? 'BxN or BxN@L (B prompts of N tokens, over L cached for a chunk), e.g. 1x512' : 'BxN@L (B requests of N new tokens over L cached), e.g. 32x5@2048';
  if (!m) throw new PassSpecError(`"${text}" is not of the form ${form}`);
  const count = Number(m[1]);
  const newTokens = Number(m[2]);
  const cachedTokens = m[3] === undefined ? 0 : Number(m[3]);
  if (count < 1 || newTokens < 1) throw new PassSpecError(`"${text}": B and N must be ≥ 1`);
  if (!prefill && m[3] === undefined) throw new PassSpecError(`"${text}" is not of the form ${form} (a verification needs its cached length L)`);
  return { count, newTokens, cachedTokens, prefill };
}

/** The members of a pass made of these groups. */
export function passMembers(groups: readonly PassGroup[]): PassMember[] {
  const out: PassMember[] = [];
  for (const g of groups) {
    for (let i = 0; i < g.count; i++) out.push(g.prefill ? prefillMember(g.newTokens, g.cachedTokens) : verifyMember(g.newTokens, g.cachedTokens));
  }
  return out;
}
