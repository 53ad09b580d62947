import { expect } from 'chai';
import { writeThrottle, type Timers } from '../../actors/write-throttle.ts';

/** Timers on a hand-moved clock: `advance` fires what falls due, in order. */
function manualTimers() {
  let now = 0;
  let nextId = 0;
  const due = new Map<number, { at: number; fn: () => void }>();
  const timers: Timers = {
    now: () => now,
    setTimeout: (fn, ms) => {
      due.set(++nextId, { at: now + ms, fn });
      return nextId;
    },
    clearTimeout: (h) => void due.delete(h as number),
  };
  const advance = (ms: number) => {
    const end = now + ms;
    for (;;) {
      const next = [...due.entries()].sort((a, b) => a[1].at - b[1].at)[0];
      if (!next || next[1].at > end) break;
      due.delete(next[0]);
      now = next[1].at;
      next[1].fn();
    }
    now = end;
  };
  return { timers, advance, pending: () => due.size };
}

describe('write throttle (estimator statistics to Redis)', () => {
  it('writes at once, defers a write that comes too soon, and keeps only the latest deferred one', () => {
    const { timers, advance, pending } = manualTimers();
    const written: string[] = [];
    const w = writeThrottle(1_000, timers);
    const write = (key: string, v: string) => w.write(key, async () => void written.push(`${key}=${v}@${timers.now()}`));
    write('a', '1');
    advance(200);
    write('a', '2');
    advance(300);
    write('a', '3');
    write('b', '1');
    expect(written).to.deep.equal(['a=1@0', 'b=1@500']);
    expect(pending()).to.equal(1);
    advance(499);
    expect(written).to.have.length(2);
    advance(1);
    // The last write of the second reaches the store when the second is up; the one it replaced never does.
    expect(written).to.deep.equal(['a=1@0', 'b=1@500', 'a=3@1000']);
    advance(5_000);
    expect(written).to.have.length(3);
    write('a', '4');
    expect(written[3]).to.equal('a=4@6000');
  });

  it('flush runs the deferred writes now and waits for them', async () => {
    const { timers, advance, pending } = manualTimers();
    const written: string[] = [];
    const w = writeThrottle(1_000, timers);
    w.write('a', async () => void written.push('a1'));
    w.write('a', async () => {
      await new Promise((r) => setImmediate(r));
      written.push('a2');
    });
    expect(written).to.deep.equal(['a1']);
    await w.flush();
    expect(written).to.deep.equal(['a1', 'a2']);
    expect(pending()).to.equal(0);
    advance(2_000);
    expect(written).to.deep.equal(['a1', 'a2']);
  });
});
