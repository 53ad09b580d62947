import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';

// The policies are shared by the live actors and the simulator's virtual clock: any clock read,
// I/O or unseeded randomness in them would make the two disagree.
describe('policies are pure', () => {
  const dir = new URL('../../policies/', import.meta.url);
  const files = readdirSync(dir).filter((f) => f.endsWith('.ts'));

  it('no clock reads, no unseeded randomness, no I/O imports', () => {
    expect(files.length).to.be.greaterThan(5);
    for (const f of files) {
      const src = readFileSync(new URL(f, dir), 'utf8');
      for (const banned of [/Date\.now\(/, /new Date\(/, /performance\.now\(/, /Math\.random\(/, /from 'node:/, /process\./, /setTimeout\(/]) {
        expect(banned.test(src), `${f} matches ${banned}`).to.equal(false);
      }
    }
  });
});
