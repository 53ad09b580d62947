/**
 * The live system's clock: wall-clock milliseconds with sub-millisecond resolution, comparable
 * across processes on one host (each process's timeOrigin is wall-clock based). The simulator
 * supplies its own clock through the same shape.
 */
export interface Clock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

export const wallClock: Clock = {
  now: () => performance.timeOrigin + performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms))),
};
