/**
 * At most one write per key per interval, and the last one never lost: a write that comes
 * sooner than the interval allows is deferred to the interval's end, replacing any write
 * already waiting for that key. `flush` runs the waiting writes at once (on shutdown).
 * Used for the scheduler's estimator statistics, which move slowly but must reach Redis.
 */
export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const nodeTimers = (now: () => number): Timers => ({
  now,
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
});

export interface WriteThrottle {
  write(key: string, run: () => Promise<void>): void;
  /** Runs every deferred write now and waits for all of them. */
  flush(): Promise<void>;
}

export function writeThrottle(intervalMs: number, timers: Timers | (() => number)): WriteThrottle {
  const t = typeof timers === 'function' ? nodeTimers(timers) : timers;
  const lastAt = new Map<string, number>();
  const waiting = new Map<string, { handle: unknown; run: () => Promise<void> }>();
  const runNow = (key: string, run: () => Promise<void>): Promise<void> => {
    waiting.delete(key);
    lastAt.set(key, t.now());
    return run();
  };
  return {
    write(key, run) {
      const pending = waiting.get(key);
      if (pending) t.clearTimeout(pending.handle);
      const waitMs = (lastAt.get(key) ?? -Infinity) + intervalMs - t.now();
      if (waitMs <= 0) {
        void runNow(key, run);
        return;
      }
      waiting.set(key, { handle: t.setTimeout(() => void runNow(key, run), waitMs), run });
    },
    async flush() {
      const all = [...waiting.entries()];
      for (const [, w] of all) t.clearTimeout(w.handle);
      await Promise.all(all.map(([key, w]) => runNow(key, w.run)));
    },
  };
}
