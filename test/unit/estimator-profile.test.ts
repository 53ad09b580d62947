import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { ProfileCsvError } from '../../policies/errors.ts';
import { evaluateEstimator } from '../../policies/estimator-eval.ts';
import { parseProfileCsv, PROFILE_COLUMNS, rowShapes } from '../../policies/profile-csv.ts';
import { splitProfile } from '../../policies/profile-split.ts';

const dataUrl = (name: string) => new URL(`../../data/${name}`, import.meta.url);
const read = (name: string) => readFileSync(dataUrl(name), 'utf8');
const HEADER = PROFILE_COLUMNS.join(',');
const GOOD = 'qwen3-32b,mixed,2,4,3072,5,6144,15360,61.940,57.492,77.789,4/1,3072/3072';

function parseError(body: string): ProfileCsvError {
  try {
    parseProfileCsv(`${HEADER}\n${body}\n`, 'p.csv');
  } catch (e) {
    expect(e).to.be.instanceOf(ProfileCsvError);
    return e as ProfileCsvError;
  }
  throw new Error('expected a ProfileCsvError');
}

describe('policies/profile-csv', () => {
  it('parses the H200 profile: 218 rows of both models and all three kinds', () => {
    const rows = parseProfileCsv(read('verify-profile-h200.csv'));
    expect(rows).to.have.length(218);
    const count = (model: string, kind: string) => rows.filter((r) => r.model === model && r.kind === kind).length;
    for (const m of ['qwen3-32b', 'qwen3-8b']) expect([count(m, 'grid'), count(m, 'mixed'), count(m, 'prefill')]).to.deep.equal([70, 30, 9]);
    const mixed = rows.find((r) => r.kind === 'mixed')!;
    expect(rowShapes(mixed)).to.have.length(mixed.B);
    const prefill = rows.find((r) => r.kind === 'prefill' && r.B === 4)!;
    expect(rowShapes(prefill)).to.deep.equal([{ n: 128, L: 0 }, { n: 128, L: 0 }, { n: 128, L: 0 }, { n: 128, L: 0 }]);
  });

  it('names the line of each problem', () => {
    expect(parseError(GOOD.replace(',mixed,', ',weird,')).message).to.equal('p.csv:2: kind must be one of grid|mixed|prefill, got "weird"');
    expect(parseError(`${GOOD}\n${GOOD.split(',').slice(0, 5).join(',')}`).message).to.equal('p.csv:3: expected 13 fields, got 5');
    expect(parseError(GOOD.replace(',2,4,', ',two,4,')).message).to.equal('p.csv:2: B must be an integer ≥ 1, got "two"');
    expect(parseError(GOOD.replace('61.940', '-3')).message).to.equal('p.csv:2: ms_median must be a positive number of ms, got "-3"');
    expect(parseError(GOOD.replace('61.940', '99')).message).to.equal('p.csv:2: need ms_min ≤ ms_median ≤ ms_max, got 57.492, 99, 77.789');
    expect(parseError(GOOD.replace('4/1,', '4/1/1,')).message).to.equal('p.csv:2: per_request_n has 3 entries, B is 2');
    expect(parseError(GOOD.replace('4/1,', '4/x,')).message).to.equal('p.csv:2: per_request_n has a bad entry "x"');
    expect(parseError(GOOD.replace(',5,6144,', ',6,6144,')).message).to.equal('p.csv:2: sum_n is 6 but the per-request lists give 5');
    expect(parseError(GOOD.replace(',3072,5,', ',2048,5,')).message).to.equal('p.csv:2: L_max is 2048 but the per-request lists give 3072');
    expect(parseError('qwen3-32b,prefill,1,128,5,128,0,0,93.585,91.907,93.875,,').message).to.equal('p.csv:2: a prefill row has no cache: L_max must be 0, got 5');
    const e = parseError(`\n${GOOD}\n${GOOD.replace('15360', '15361')}`);
    expect(e.line).to.equal(4); // blank line 2 is skipped but still counted
    expect(e.code).to.equal('profile_csv_invalid');
  });

  it('refuses a wrong header and an empty file', () => {
    expect(() => parseProfileCsv('model,kind\n', 'p.csv')).to.throw(ProfileCsvError, /^p\.csv:1: header must be "model,kind,B,/);
    expect(() => parseProfileCsv(`${HEADER}\n\n`, 'p.csv')).to.throw(ProfileCsvError, 'p.csv: no data rows');
  });
});

describe('policies/profile-split and estimator eval', () => {
  const source = read('verify-profile-h200.csv');

  it('splits deterministically: all grid and prefill rows + half the mixed rows / the other half', () => {
    const a = splitProfile(source, 42);
    expect(splitProfile(source, 42)).to.deep.equal(a);
    expect(splitProfile(source, 43).trainCsv).to.not.equal(a.trainCsv);
    const train = parseProfileCsv(a.trainCsv);
    const test = parseProfileCsv(a.testCsv);
    expect(train.length + test.length).to.equal(218);
    expect(test.every((r) => r.kind === 'mixed')).to.equal(true);
    for (const m of ['qwen3-32b', 'qwen3-8b']) {
      expect(train.filter((r) => r.model === m && r.kind === 'mixed')).to.have.length(15);
      expect(test.filter((r) => r.model === m)).to.have.length(15);
    }
  });

  it('the committed split files are `wisp estimator split --seed 42` of the profile', () => {
    const s = splitProfile(source, 42);
    expect(read('verify-profile-h200.train.csv')).to.equal(s.trainCsv);
    expect(read('verify-profile-h200.test.csv')).to.equal(s.testCsv);
  });

  it('qwen3-32b: MAPE ≤ 10 % on held-out mixed batches', () => {
    const train = parseProfileCsv(read('verify-profile-h200.train.csv'));
    const test = parseProfileCsv(read('verify-profile-h200.test.csv'));
    const r = evaluateEstimator(train, test, { model: 'qwen3-32b' });
    expect(r.n).to.equal(15);
    expect(r.mape).to.be.at.most(0.1);
  });

  it('`wisp estimator eval` prints one JSON line with the same figures', async () => {
    const bin = new URL('../../bin/wisp.js', import.meta.url).pathname;
    const { stdout } = await promisify(execFile)(process.execPath, [
      bin,
      'estimator',
      'eval',
      '--train',
      dataUrl('verify-profile-h200.train.csv').pathname,
      '--test',
      dataUrl('verify-profile-h200.test.csv').pathname,
      '--model',
      'qwen3-32b',
    ]);
    const lines = stdout.trim().split('\n');
    expect(lines).to.have.length(1);
    const out = JSON.parse(lines[0]) as { mape: number; p90Ape: number; n: number };
    expect(Object.keys(out)).to.deep.equal(['mape', 'p90Ape', 'n']);
    expect(out.n).to.equal(15);
    expect(out.mape).to.be.at.most(0.1);
  });
});
