import { expect } from 'chai';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describeError, errorCode, isWispError, WispError } from '../../common/errors.ts';
import { ConfigError } from '../../config/load.ts';
import { BrokerClosedError } from '../../broker/errors.ts';
import { HandlerError } from '../../broker/refusals.ts';
import { ModelDirNotFoundError } from '../../inference/errors.ts';
import { ProfileCsvError } from '../../policies/errors.ts';
import { StoreError } from '../../store/redis-store.ts';

/** Production source files (not tests, not dependencies). */
function sources(dir = '.', out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    if (['node_modules', '.git', 'test', '.wisp', 'reports', 'dist'].includes(name) || name.startsWith('.')) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) sources(p, out);
    else if (p.endsWith('.ts')) out.push(p);
  }
  return out;
}

describe('common/errors: one error base', () => {
  it('every error family is a WispError with a snake_case code; guards instead of casts', () => {
    const errors = [
      new ConfigError([{ key: 'x', reason: 'bad' }]),
      new BrokerClosedError('publish'),
      new HandlerError('not_owner', 'no'),
      new ModelDirNotFoundError('/nowhere'),
      new ProfileCsvError('bad row', 3),
      new StoreError('bad_value', 'no'),
    ];
    for (const e of errors) {
      expect(isWispError(e), e.constructor.name).to.equal(true);
      expect(e.code, e.constructor.name).to.match(/^[a-z]+(_[a-z0-9]+)*$/);
      expect(e.name).to.equal(e.constructor.name);
    }
    expect(isWispError(new ProfileCsvError('x', null), 'profile_csv_invalid')).to.equal(true);
    expect(isWispError(new Error('plain'))).to.equal(false);
    expect(errorCode(Object.assign(new Error('fs'), { code: 'ENOENT' }))).to.equal('ENOENT');
    expect(describeError(new WispError('bad_thing', 'it broke'))).to.equal('[bad_thing] it broke');
    expect(describeError('just text')).to.equal('just text');
  });

  it('no class in the code base extends Error except the base itself, and no code is SHOUTING_CASE', () => {
    const offenders: string[] = [];
    for (const f of sources()) {
      const text = readFileSync(f, 'utf8');
      if (/class \w+ extends Error\b/.test(text) && !f.endsWith(join('common', 'errors.ts'))) offenders.push(`${f}: extends Error`);
      if (/readonly code = '[A-Z_]+'/.test(text)) offenders.push(`${f}: upper-case code`);
    }
    expect(offenders).to.deep.equal([]);
  });
});
