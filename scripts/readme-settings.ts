/**
 * Writes the settings table (from config/env.ts) between the README's settings-table markers.
 * `npm run docs:settings`; test/unit/readme.test.ts fails when the README is out of date.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { envTableMarkdown } from '../config/env.ts';

const START = /<!-- settings-table:start[^>]*-->/;
const END = '<!-- settings-table:end -->';

/** The README text with the current settings table in place. */
export function withSettingsTable(readme: string): string {
  const start = readme.match(START);
  const endAt = readme.indexOf(END);
  if (!start || start.index === undefined || endAt < 0) throw new Error('README.md has no settings-table markers');
  return `${readme.slice(0, start.index + start[0].length)}\n${envTableMarkdown().trim()}\n${readme.slice(endAt)}`;
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  const path = new URL('../README.md', import.meta.url);
  writeFileSync(path, withSettingsTable(readFileSync(path, 'utf8')));
}
