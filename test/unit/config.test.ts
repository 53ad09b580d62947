/**
 * Config loading: defaults ← file ← env ← overrides, and the exact refusal messages.
 * Config files are written to a temporary folder removed afterwards.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import {
  ConfigError,
  DEFAULT_CONFIG,
  ENV_VARS,
  emulatedDeviceProfile,
  envTableMarkdown,
  loadConfig,
  type WispConfig,
} from '../../config/index.ts';
import { getPath } from '../../config/env.ts';
import { configFromFlags } from '../../cli/commands/roles.ts';

/** Runs `fn`, expecting a ConfigError, and returns it. */
function refused(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError, nothing was thrown');
}

describe('config', () => {
  let dir: string;
  const write = (name: string, text: string) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'wisp-config-test-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('defaults are valid, complete and frozen', () => {
    const c = loadConfig({ env: {} });
    expect(c).to.deep.equal(DEFAULT_CONFIG);
    expect(Object.keys(c.devices)).to.include.members(['jetson-orin-nano', 'raspberry-pi-5', 'phone']);
    expect(Object.isFrozen(c.scheduler)).to.equal(true);
    expect(Object.isFrozen(c.devices.phone.powerW)).to.equal(true);
  });

  it('applies env overrides, converting each to its type', () => {
    const c = loadConfig({
      env: {
        WISP_AMQP_URL: 'amqp://u:p@broker:5672',
        WISP_B_MAX: '32',
        WISP_POLICY: 'sled',
        WISP_TRUNCATION: 'false',
        WISP_TIME_SCALE: '0.5',
        WISP_WORKER_ID: 'w-7',
        WISP_DEVICE_PROFILE: 'phone',
        WISP_LOG_LEVEL: '', // empty = not set
      },
    });
    expect(c.amqpUrl).to.equal('amqp://u:p@broker:5672');
    expect(c.scheduler).to.include({ bMax: 32, policy: 'sled', truncation: false });
    expect(c.timeScale).to.equal(0.5);
    expect(c.worker.id).to.equal('w-7');
    expect(c.deviceProfile).to.equal('phone');
    expect(c.logLevel).to.equal('info');
  });

  it('reads a YAML or JSON file (or WISP_CONFIG); env beats file, overrides beat env', () => {
    const yamlFile = write(
      'wisp.yaml',
      [
        'scheduler:',
        '  bMax: 8',
        '  policy: centralized',
        'devices:',
        '  phone:',
        '    rttMs: 60',
        '  pi-zero:',
        '    draftMsPerToken: 400',
        '    rttMs: 30',
        '    jitterMs: 10',
        '    draftModel: draft-1',
        '    powerW: { drafting: 1.2, idle: 0.4, transmitting: 0.8 }',
      ].join('\n'),
    );
    const c = loadConfig({ file: yamlFile, env: { WISP_POLICY: 'wisp' }, overrides: { scheduler: { waitMs: 9 } } });
    expect(c.scheduler).to.include({ bMax: 8, policy: 'wisp', waitMs: 9 });
    expect(c.devices.phone).to.deep.equal({ ...DEFAULT_CONFIG.devices.phone, rttMs: 60 });
    expect(c.devices['pi-zero'].draftMsPerToken).to.equal(400);

    const jsonFile = write('wisp.json', JSON.stringify({ controller: { kMax: 4 } }));
    expect(loadConfig({ env: { WISP_CONFIG: jsonFile } }).controller.kMax).to.equal(4);
    expect(loadConfig({ file: write('empty.yaml', ''), env: {} })).to.deep.equal(DEFAULT_CONFIG);
  });

  it('every env variable sets the key it documents', () => {
    const env: Record<string, string> = {};
    const expected = new Map<string, unknown>();
    const sample: Record<string, string> = {
      WISP_AMQP_URL: 'amqps://h:5671',
      WISP_AMQP_TLS: 'true',
      WISP_REDIS_URL: 'rediss://h:6380',
      WISP_REDIS_TLS: 'yes',
      WISP_LOG_LEVEL: 'debug',
      WISP_MODEL_PRESET: 'small',
      WISP_DEVICE_PROFILE: 'raspberry-pi-5',
      WISP_POLICY: 'centralized',
      WISP_THRESHOLD: '0.25',
      WISP_MIN_ACCEPTANCE: '0.15',
      WISP_HEARTBEAT_TTL_MS: '9000',
      WISP_COST_MODEL_SERVER: 'h100-80gb/34b',
      // Pacing runs the real target, so not beside the cost model.
      WISP_COST_MODEL: 'false',
      WISP_PACE: 'a40-48gb/7b',
    };
    for (const v of ENV_VARS) {
      const raw = sample[v.name] ?? (v.kind === 'boolean' ? 'true' : v.kind === 'string' ? `value-${v.name.toLowerCase()}` : '3');
      env[v.name] = raw;
      expected.set(v.key, v.kind === 'boolean' ? raw !== 'false' : v.kind === 'string' ? raw : Number(raw));
    }
    const c = loadConfig({ env });
    for (const [key, value] of expected) expect(getPath(c, key), key).to.equal(value);
    const table = envTableMarkdown();
    for (const v of ENV_VARS) expect(table).to.contain(`| \`${v.name}\` | \`${v.key}\` |`);
    expect(table).to.contain('| `WISP_B_MAX` | `scheduler.bMax` | `16` |');
  });

  it('refuses wrong values with the key, the reason, the value and its source', () => {
    const cases: Array<[() => WispConfig, string]> = [
      [() => loadConfig({ env: { WISP_B_MAX: 'abc' } }), 'config: scheduler.bMax: expected a positive integer, got "abc" (from WISP_B_MAX)'],
      [() => loadConfig({ env: { WISP_B_MAX: '2.5' } }), 'config: scheduler.bMax: expected a positive integer, got 2.5 (from WISP_B_MAX)'],
      [() => loadConfig({ env: { WISP_POLICY: 'fifo' } }), 'config: scheduler.policy: expected one of wisp|sled|centralized|adaptive, got "fifo" (from WISP_POLICY)'],
      [() => loadConfig({ env: { WISP_TRUNCATION: 'maybe' } }), 'config: scheduler.truncation: expected true or false, got "maybe" (from WISP_TRUNCATION)'],
      [() => loadConfig({ env: { WISP_TIME_SCALE: '-1' } }), 'config: timeScale: expected a non-negative number, got -1 (from WISP_TIME_SCALE)'],
      [() => loadConfig({ env: { WISP_AMQP_URL: 'http://x' } }), 'config: amqpUrl: expected an amqp:// or amqps:// URL, got "http://x" (from WISP_AMQP_URL)'],
      [() => loadConfig({ env: { WISP_REDIS_URL: 'x' } }), 'config: redisUrl: expected a redis:// or rediss:// URL, got "x" (from WISP_REDIS_URL)'],
      [() => loadConfig({ env: { WISP_DEVICE_PROFILE: 'toaster' } }), 'config: deviceProfile: unknown device profile (known: jetson-orin-nano, phone, raspberry-pi-5), got "toaster" (from WISP_DEVICE_PROFILE)'],
      [() => loadConfig({ env: {}, overrides: { worker: { heartbeatTtlMs: 500 } } }), 'config: worker.heartbeatTtlMs: must exceed worker.heartbeatMs (1000), got 500 (from overrides)'],
      [() => loadConfig({ env: { WISP_AMQP_TLS: 'on' } }), 'config: amqpUrl: amqpTls.enabled needs an amqps:// URL, got "amqp://127.0.0.1:5672"'],
      [() => loadConfig({ env: { WISP_PACE: 'a100/34b' } }), 'config: models.pace: expected gpu/model with gpu one of a40-48gb|a100-80gb|h100-80gb and model one of 34b|7b, got "a100/34b" (from WISP_PACE)'],
      [() => loadConfig({ env: { WISP_PACE: 'a100-80gb/34b', WISP_COST_MODEL: 'true' } }), 'config: models.pace: pacing runs the real target: it cannot be combined with models.costModel.enabled, got "a100-80gb/34b" (from WISP_PACE)'],
      [() => loadConfig({ env: { WISP_PACE: 'a100-80gb/34b', WISP_TIME_SCALE: '0' } }), 'config: models.pace: pacing holds each pass for its time × timeScale: timeScale must be > 0, got "a100-80gb/34b" (from WISP_PACE)'],
    ];
    for (const [fn, message] of cases) expect(refused(fn).message).to.equal(message);
  });

  it('refuses wrong file contents: unknown keys, wrong types, bad syntax, missing file', () => {
    const typo = write('typo.yaml', 'scheduler:\n  bMx: 3\ncontroller:\n  threshold: 1.5\n');
    const err = refused(() => loadConfig({ file: typo, env: {} }));
    expect(err.message).to.equal(
      [`config: scheduler.bMx: unknown key (from ${typo})`, `config: controller.threshold: expected a number in [0, 1], got 1.5 (from ${typo})`].join('\n'),
    );
    expect(err.code).to.equal('invalid_config');
    expect(err.issues.map((i) => i.key)).to.deep.equal(['scheduler.bMx', 'controller.threshold']);

    const nul = write('null.yaml', 'scheduler: null\n');
    expect(refused(() => loadConfig({ file: nul, env: {} })).message).to.equal(`config: scheduler: expected an object, got null (from ${nul})`);

    const device = write('device.json', JSON.stringify({ devices: { phone: { powerW: { drafting: 'lots' } } } }));
    expect(refused(() => loadConfig({ file: device, env: {} })).message).to.equal(
      `config: devices.phone.powerW.drafting: expected a non-negative number, got "lots" (from ${device})`,
    );

    const bad = write('bad.json', '{"scheduler": ');
    expect(refused(() => loadConfig({ file: bad, env: {} })).message).to.match(new RegExp(`^config: \\(root\\): invalid JSON in ${bad}: `));
    const list = write('list.yaml', '- 1\n- 2\n');
    expect(refused(() => loadConfig({ file: list, env: {} })).message).to.equal(`config: (root): expected a mapping of keys in ${list}, got an array`);
    const missing = join(dir, 'none.yaml');
    expect(refused(() => loadConfig({ file: missing, env: {} })).message).to.equal(`config: (root): cannot read config file ${missing}: ENOENT`);
    const proto = write('proto.json', '{"__proto__": {"polluted": true}}');
    expect(refused(() => loadConfig({ file: proto, env: {} })).message).to.equal(`config: __proto__: unknown key (from ${proto})`);
    expect(({} as Record<string, unknown>).polluted).to.equal(undefined);
  });

  it('scales a device profile by timeScale', () => {
    const c = loadConfig({ env: { WISP_TIME_SCALE: '0.1', WISP_DEVICE_PROFILE: 'raspberry-pi-5' } });
    const p = emulatedDeviceProfile(c);
    expect(p).to.include({ name: 'raspberry-pi-5', timeScale: 0.1, draftModel: 'draft-1' });
    expect(p.draftMsPerToken).to.be.closeTo(5, 1e-9);
    expect(p.rttMs).to.be.closeTo(1.5, 1e-9);
    expect(p.powerW).to.deep.equal(DEFAULT_CONFIG.devices['raspberry-pi-5'].powerW); // power is not time
    expect(refused(() => emulatedDeviceProfile(c, 'toaster')).message).to.equal(
      'config: deviceProfile: unknown device profile (known: jetson-orin-nano, phone, raspberry-pi-5), got "toaster"',
    );
  });

  it('role flags (--no-chunked-prefill, --pass-token-budget) beat the config; absent, the config decides', async () => {
    const plain = await configFromFlags({});
    expect(plain.scheduler.chunkedPrefill).to.equal(DEFAULT_CONFIG.scheduler.chunkedPrefill);
    expect(plain.scheduler.passTokenBudget).to.equal(DEFAULT_CONFIG.scheduler.passTokenBudget);
    const set = await configFromFlags({ chunkedPrefill: false, passTokenBudget: '256', policy: 'sled' });
    expect(set.scheduler).to.include({ chunkedPrefill: false, passTokenBudget: 256, policy: 'sled' });
    expect(plain.models.pace).to.equal(undefined);
    expect((await configFromFlags({ pace: 'h100-80gb/34b' })).models.pace).to.equal('h100-80gb/34b');
    let err: unknown = null;
    await configFromFlags({ passTokenBudget: '-3' }).catch((e: unknown) => (err = e));
    expect(String(err)).to.contain('--pass-token-budget: expected an integer ≥ 1, got "-3"');
  });
});
