/**
 * The simulator's event queue: a binary min-heap on (time, insertion order), so events at the
 * same simulated millisecond run in the order they were scheduled — deterministic for a seed.
 */

interface Slot<T> {
  atMs: number;
  seq: number;
  event: T;
}

export class EventQueue<T> {
  #heap: Slot<T>[] = [];
  #seq = 0;

  get size(): number {
    return this.#heap.length;
  }

  /** Time of the earliest event, or Infinity when empty. */
  peekTime(): number {
    return this.#heap.length === 0 ? Infinity : this.#heap[0].atMs;
  }

  push(atMs: number, event: T): void {
    if (Number.isNaN(atMs)) throw new RangeError('event time is NaN');
    const h = this.#heap;
    const slot: Slot<T> = { atMs, seq: this.#seq++, event };
    let i = h.length;
    h.push(slot);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(slot, h[parent])) break;
      h[i] = h[parent];
      i = parent;
    }
    h[i] = slot;
  }

  /** Removes and returns the earliest event with its time, or undefined when empty. */
  pop(): { atMs: number; event: T } | undefined {
    const h = this.#heap;
    if (h.length === 0) return undefined;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      let i = 0;
      const n = h.length;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        const c = r < n && before(h[r], h[l]) ? r : l;
        if (!before(h[c], last)) break;
        h[i] = h[c];
        i = c;
      }
      h[i] = last;
    }
    return { atMs: top.atMs, event: top.event };
  }
}

function before<T>(a: Slot<T>, b: Slot<T>): boolean {
  return a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq);
}
