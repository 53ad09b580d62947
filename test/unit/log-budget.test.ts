/** The log budget for dead-letter lines (broker/log-budget.ts), on a fake clock. */
import { expect } from 'chai';
import { LogBudget } from '../../broker/log-budget.ts';

describe('log budget (a flood of refusals does not flood the log)', () => {
  it('logs at most N lines per window per key, then says how many it left out', () => {
    let now = 0;
    const b = new LogBudget(3, 10_000, () => now);
    const first = Array.from({ length: 10 }, () => b.take('worker').log);
    expect(first).to.deep.equal([true, true, true, false, false, false, false, false, false, false]);
    expect(b.take('device').log, 'keys have budgets of their own').to.equal(true);
    now = 9_999;
    expect(b.take('worker').log).to.equal(false);
    now = 10_000;
    expect(b.take('worker')).to.deep.equal({ log: true, suppressed: 8 });
    expect(b.take('worker')).to.deep.equal({ log: true, suppressed: 0 });
  });
});
