/**
 * Rate-limits a repeated log line (a flood of refused messages must not flood the log): at most
 * `lines` per `windowMs` for each key; the first line of a later window says how many were left
 * out in between. Pure but for the clock it is given.
 */
export class LogBudget {
  readonly #lines: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  readonly #keys = new Map<string, { windowStartMs: number; logged: number; suppressed: number }>();

  constructor(lines: number, windowMs: number, now: () => number = () => Date.now()) {
    this.#lines = lines;
    this.#windowMs = windowMs;
    this.#now = now;
  }

  /**
   * Whether to log a line for `key` now; when it may, how many lines of that key were left out
   * since the last one that was logged (0: none).
   */
  take(key: string): { log: boolean; suppressed: number } {
    const now = this.#now();
    let k = this.#keys.get(key);
    if (!k || now - k.windowStartMs >= this.#windowMs) {
      const suppressed = k?.suppressed ?? 0;
      k = { windowStartMs: now, logged: 0, suppressed: 0 };
      this.#keys.set(key, k);
      k.logged++;
      return { log: true, suppressed };
    }
    if (k.logged < this.#lines) {
      k.logged++;
      return { log: true, suppressed: 0 };
    }
    k.suppressed++;
    return { log: false, suppressed: 0 };
  }
}
