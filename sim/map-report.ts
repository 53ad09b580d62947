/**
 * Rendering of the regime map (`wisp sim map`): heatmaps (hand-written SVG) of a capacity ratio
 * over the grid, the cell table, and report.md. Pure string building.
 */
import { tuningCandidates } from './map-tuning.ts';
import { capacityRatio, ratioPairs, type MapCell, type MapGrid, type MapPolicyFigures, type MapRunSettings } from './map.ts';

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Short label of a device mix for axes: profile names with their weights when they differ. */
export function mixLabel(mix: string): string {
  const short: Record<string, string> = { 'jetson-orin-nano': 'Jetson', 'raspberry-pi-5': 'Pi 5', phone: 'phone' };
  return mix
    .split(',')
    .map((p) => {
      const [name, w] = p.split(':');
      return `${short[name] ?? name}${w && w !== '1' ? `×${w}` : ''}`;
    })
    .join(' + ');
}

export const ratioText = (r: number | null): string => (r === null ? '—' : r === Infinity ? '∞' : `${r.toFixed(2)}x`);

/** Diverging colour of a ratio: red below 1, white at 1, blue above; log scale, saturating at 8x. */
function ratioColour(r: number | null): string {
  if (r === null) return '#dddddd';
  const x = r === Infinity ? 1 : Math.max(-1, Math.min(1, Math.log2(Math.max(r, 1e-9)) / 3));
  const mix = (a: number, b: number, t: number): number => Math.round(a + (b - a) * t);
  const [R, G, B] = x >= 0 ? [mix(255, 33, x), mix(255, 102, x), mix(255, 172, x)] : [mix(255, 178, -x), mix(255, 24, -x), mix(255, 43, -x)];
  return `rgb(${R},${G},${B})`;
}

/**
 * A heatmap of `of`'s capacity over `over`'s in every cell: rows are server × device mix,
 * columns TPOT SLO × draft agreement.
 */
export function svgRatioHeatmap(cells: readonly MapCell[], g: MapGrid, of: string, over: string, title: string): string {
  const rows = g.servers.flatMap((server) => g.mixes.map((mix) => ({ server, mix })));
  const cols = g.tpotMs.flatMap((tpotMs) => g.agreements.map((agreement) => ({ tpotMs, agreement })));
  const cw = 76;
  const ch = 34;
  const left = 250;
  const top = 74;
  const W = left + cols.length * cw + 20;
  const H = top + rows.length * ch + 60;
  const p: string[] = [];
  p.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  p.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  p.push(`<text x="10" y="20" font-size="14" font-weight="bold">${esc(title)}</text>`);
  p.push(`<text x="10" y="38" fill="#555">capacity of ${esc(of)} ÷ capacity of ${esc(over)}; blue: ${esc(of)} serves more devices within the SLO, red: fewer; ∞: only ${esc(of)} meets the SLO; —: neither</text>`);
  cols.forEach((c, i) => {
    const x = left + i * cw + cw / 2;
    p.push(`<text x="${x}" y="${top - 22}" text-anchor="middle">${c.tpotMs} ms</text>`);
    p.push(`<text x="${x}" y="${top - 8}" text-anchor="middle" fill="#555">agree ${c.agreement}</text>`);
  });
  rows.forEach((r, j) => {
    const y = top + j * ch;
    p.push(`<text x="${left - 8}" y="${y + ch / 2 + 4}" text-anchor="end">${esc(`${r.server} · ${mixLabel(r.mix)}`)}</text>`);
    cols.forEach((c, i) => {
      const cell = cells.find((x) => x.server === r.server && x.mix === r.mix && x.tpotMs === c.tpotMs && x.agreement === c.agreement);
      const ratio = cell ? capacityRatio(cell.policies[of], cell.policies[over]) : null;
      const x = left + i * cw;
      p.push(`<rect x="${x}" y="${y}" width="${cw - 2}" height="${ch - 2}" fill="${ratioColour(ratio)}"/>`);
      const caps = cell ? `${capText(cell.policies[of])}/${capText(cell.policies[over])}` : '';
      p.push(`<text x="${x + cw / 2 - 1}" y="${y + 14}" text-anchor="middle" font-weight="bold">${esc(ratioText(ratio))}</text>`);
      p.push(`<text x="${x + cw / 2 - 1}" y="${y + 27}" text-anchor="middle" font-size="10" fill="#333">${esc(caps)}</text>`);
    });
  });
  p.push(`<text x="10" y="${H - 20}" fill="#555">small print: capacities (devices) of ${esc(of)}/${esc(over)}; ≥ marks a capacity at the top of the search</text>`);
  p.push('</svg>');
  return p.join('\n');
}

export const capText = (f: MapPolicyFigures | undefined): string => (f === undefined ? '—' : `${f.censored ? '≥' : ''}${f.capacity}`);

/** The cell table (markdown): capacity and goodput of each policy, WISP's ratios, and the best policy. */
export function mapTable(cells: readonly MapCell[], g: MapGrid): string {
  const head = ['server', 'TPOT ms', 'devices', 'agreement', ...g.policies.map((p) => `${p} cap.`), ...g.policies.map((p) => `${p} tok/s`)];
  const ratios = ratioPairs(g.policies);
  head.push(...ratios.map(([a, b]) => `${a}/${b} cap.`), 'best', ...g.policies.map((p) => `${p} settings`));
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const c of cells) {
    const best = bestPolicy(c);
    const row = [
      c.server,
      String(c.tpotMs),
      mixLabel(c.mix),
      String(c.agreement),
      ...g.policies.map((p) => capText(c.policies[p])),
      ...g.policies.map((p) => (c.policies[p] ? c.policies[p].goodputTokS.toFixed(0) : '—')),
      ...ratios.map(([a, b]) => ratioText(capacityRatio(c.policies[a], c.policies[b]))),
      best,
      ...g.policies.map((p) => c.policies[p]?.settings ?? '—'),
    ];
    lines.push(`| ${row.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** The policy with the largest capacity (then goodput); "tie" names all within the same capacity and goodput. */
export function bestPolicy(c: MapCell): string {
  const entries = Object.entries(c.policies);
  if (entries.length === 0) return '—';
  const top = Math.max(...entries.map(([, f]) => f.capacity));
  if (top === 0) return 'none';
  const leaders = entries.filter(([, f]) => f.capacity === top);
  const g = Math.max(...leaders.map(([, f]) => f.goodputTokS));
  return leaders.filter(([, f]) => f.goodputTokS === g).map(([k]) => k).join(' = ');
}

/** report.md of a map run. */
export function mapMarkdown(o: { cells: readonly MapCell[]; grid: MapGrid; settings: MapRunSettings; heatmaps: { file: string; title: string }[]; wallS: number; workload: string }): string {
  const s = o.settings;
  const lines = [
    '# wisp regime map',
    '',
    `Grid: servers ${o.grid.servers.join(', ')} × TPOT SLO ${o.grid.tpotMs.join(', ')} ms × device mixes ${o.grid.mixes.map(mixLabel).join('; ')} × draft agreement ${o.grid.agreements.join(', ')}; policies ${o.grid.policies.join(', ')}; seed ${o.grid.seed}. The 34B-class model has CodeLlama-34B shapes and stands in for Qwen3-32B.`,
    '',
    `Each cell is the paper scenario (${o.workload}) with that server, TPOT SLO (TTFT 2 s), devices and agreement. Every load is simulated for ${s.durationS} s (the first ${s.warmupS} s not measured).`,
    '',
    `Capacity precision: the search doubles the device count from ${s.search.start} until ≥ 10 % of sessions miss the SLO, then bisects until the first failing count is within ${(s.search.precision * 100).toFixed(1)} % (or 1 device) of the last passing one — so a capacity C means C passed and a count at most ${(s.search.precision * 100).toFixed(1)} % above it failed. Searches stop at ${s.search.max} devices; a capacity there is marked ≥. Ratios between capacities within that precision are ties.`,
    '',
    o.settings.tune
      ? `Settings: each policy runs at its best settings in each cell — its defaults, or one knob changed: ${o.grid.policies.map((p) => `${p}: ${tuningCandidates(p).slice(1).map((c) => c.label).join(', ')}`).join('; ')} — the one with the largest capacity, then goodput (column "settings"). A candidate's search starts at the best capacity so far.`
      : 'Settings: every policy at its defaults (`--no-tune`).',
    '',
    `Wall time: ${o.wallS.toFixed(0)} s.`,
    '',
  ];
  for (const h of o.heatmaps) lines.push(`## ${h.title}`, '', `![${h.title}](${h.file})`, '');
  lines.push('## Cells', '', mapTable(o.cells, o.grid), '');
  return lines.join('\n');
}
