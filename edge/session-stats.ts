/**
 * What a device reports of a finished session (the last TokenChunk's stats, docs/design.md §6)
 * and the energy it spent. Shared by the live device and the simulator.
 */
import type { SessionStats, Slo } from '../protocol/messages.ts';
import type { DeviceProfile } from '../config/schema.ts';
import type { EdgeSessionContext } from '../machines/edge-session.ts';

/** Stats of a session that never started (refused before tokenizing, or too long). */
export function emptySessionStats(): SessionStats {
  return { ttftMs: 0, tpotMs: 0, sloAttained: false, rounds: 0, drafted: 0, accepted: 0, wastedDraftTokens: 0, wastedDraftMs: 0, queueMs: 0, verifyMs: 0, acceptedByPosition: [], draftedByPosition: [] };
}

/** TTFT from the prompt's arrival at the device; TPOT over the tokens after the first. */
export function sessionStats(ctx: EdgeSessionContext, slo: Slo, startedAtMs: number): SessionStats {
  const ttftMs = ctx.firstTokenAtMs === null ? 0 : ctx.firstTokenAtMs - startedAtMs;
  const n = ctx.generated.length;
  const tpotMs = n > 1 && ctx.firstTokenAtMs !== null && ctx.lastTokenAtMs !== null ? (ctx.lastTokenAtMs - ctx.firstTokenAtMs) / (n - 1) : 0;
  const c = ctx.counters;
  return {
    ttftMs,
    tpotMs,
    sloAttained: ctx.error === null && ctx.firstTokenAtMs !== null && ttftMs <= slo.ttftMs && tpotMs <= slo.tpotMs,
    rounds: c.rounds,
    drafted: c.drafted,
    accepted: c.accepted,
    wastedDraftTokens: c.wastedDraftTokens,
    wastedDraftMs: c.wastedDraftMs,
    queueMs: c.queueMs,
    verifyMs: c.verifyMs,
    acceptedByPosition: c.acceptedByPosition,
    draftedByPosition: c.draftedByPosition,
    ...(c.decodedTokens > 0 ? { decodedTokens: c.decodedTokens } : {}),
    ...(c.modeSwitches > 0 ? { modeSwitches: c.modeSwitches } : {}),
    ...(ctx.mode !== 'adaptive' ? { mode: ctx.mode } : {}),
  };
}

/**
 * Device energy of one session, J, in real-world units: emulated times are divided by
 * `timeScale` first. Drafting at drafting power, radio time (one one-way latency per message,
 * an assumption) at transmitting power, the rest idle.
 */
export function deviceEnergyJ(profile: DeviceProfile, ctx: EdgeSessionContext, wallMs: number, timeScale = 1): number {
  const unscale = timeScale > 0 ? 1 / timeScale : 1;
  const draftS = (ctx.counters.draftMs * unscale) / 1_000;
  const messages = ctx.counters.rounds * 2 + 2;
  const txS = (messages * profile.rttMs) / 2 / 1_000;
  const idleS = Math.max(0, (wallMs * unscale) / 1_000 - draftS - txS);
  return draftS * profile.powerW.drafting + txS * profile.powerW.transmitting + idleS * profile.powerW.idle;
}
