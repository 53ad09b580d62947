/**
 * An emulated device's network link: one-way delay and the round-overhead estimate the
 * speculation controller weighs drafting against. Shared by the live device
 * (actors/edge/device.ts) and the simulator, so both draw the same delays and learn alike.
 */
import type { DeviceProfile } from '../config/schema.ts';

/** One-way delay, ms: half the round trip ± half the jitter (uniform), times the time scale; never negative. */
export function oneWayDelayMs(profile: Pick<DeviceProfile, 'rttMs' | 'jitterMs'>, timeScale: number, uniform: number): number {
  return Math.max(0, (profile.rttMs / 2 + ((uniform * 2 - 1) * profile.jitterMs) / 2) * timeScale);
}

/** Server time a device assumes per round before it has measured any, real-world ms. */
export const SERVER_TIME_GUESS_MS = 50;

/** A device's first guess of a round's overhead (send → result): its round trip plus the server-time guess, scaled. */
export function initialRoundOverheadMs(rttMs: number, timeScale: number): number {
  return (rttMs + SERVER_TIME_GUESS_MS) * timeScale;
}

/** The round-overhead estimate after one more measured round (exponential average, weight 0.2 on the newest). */
export function nextRoundOverheadMs(previousMs: number, measuredMs: number): number {
  return 0.8 * previousMs + 0.2 * measuredMs;
}
