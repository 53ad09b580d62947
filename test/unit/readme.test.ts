import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { withSettingsTable } from '../../scripts/readme-settings.ts';
import { ENV_VARS } from '../../config/env.ts';

describe('README', () => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

  it('lists every setting (regenerate with npm run docs:settings)', () => {
    expect(readme).to.equal(withSettingsTable(readme));
    for (const v of ENV_VARS) expect(readme).to.include(`\`${v.name}\``);
  });

  it('names the setup, the main job and the test command', () => {
    expect(readme).to.include('ONNXRUNTIME_NODE_INSTALL=skip npm ci');
    expect(readme).to.include('npm start');
    expect(readme).to.include('npm test');
  });
});
