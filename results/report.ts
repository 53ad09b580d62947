/**
 * Report rendering for `wisp sim` and `wisp bench`: hand-written SVG line charts (goodput and SLO
 * attainment against concurrent devices, one line per policy), the comparison with the WISP
 * paper's figures, and report.md embedding them. Pure string building plus one writer.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BenchResults, LoadPoint, PolicyResult, Ratio, Summary } from './metrics.ts';
import { summaryTable } from './table.ts';

export interface Series {
  name: string;
  points: [number, number][];
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Log-2 x axis (device counts double). */
  logX?: boolean;
  /** Fixed y range top (default: the data's max, padded). */
  yMax?: number;
  /** A dashed horizontal reference line (e.g. the 90 % attainment target). */
  yRef?: number;
  width?: number;
  height?: number;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf'];

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** "Nice" tick values covering [0, max]. */
function ticks(max: number, count = 5): number[] {
  if (!(max > 0)) return [0];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [0];
  while (out[out.length - 1] < max - step * 1e-9) out.push(Number((out[out.length - 1] + step).toPrecision(12)));
  return out;
}

const fmtTick = (v: number): string => (Math.abs(v) >= 1000 ? `${Math.round(v / 100) / 10}k` : Number.isInteger(v) ? String(v) : v.toFixed(2).replace(/0+$/, ''));

/** A self-contained SVG line chart (no dependencies). */
export function svgLineChart(o: ChartOptions): string {
  const W = o.width ?? 640;
  const H = o.height ?? 380;
  const m = { l: 64, r: 150, t: 36, b: 48 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const xs = o.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = o.series.flatMap((s) => s.points.map((p) => p[1]));
  const xMin = xs.length ? Math.min(...xs) : 1;
  const xMax = xs.length ? Math.max(...xs) : 2;
  const fx = (x: number): number => {
    const lo = o.logX ? Math.log2(Math.max(xMin, 1e-9)) : xMin;
    const hi = o.logX ? Math.log2(Math.max(xMax, 1e-9)) : xMax;
    const v = o.logX ? Math.log2(Math.max(x, 1e-9)) : x;
    return m.l + (hi === lo ? pw / 2 : ((v - lo) / (hi - lo)) * pw);
  };
  const yTicks = ticks(o.yMax ?? Math.max(1e-9, ...ys, o.yRef ?? 0) * 1.05);
  const yTop = o.yMax ?? yTicks[yTicks.length - 1];
  const fy = (y: number): number => m.t + ph - (Math.min(y, yTop) / (yTop || 1)) * ph;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${m.l}" y="20" font-size="14" font-weight="bold">${esc(o.title)}</text>`);
  for (const v of yTicks) {
    const y = fy(v);
    parts.push(`<line x1="${m.l}" y1="${y}" x2="${m.l + pw}" y2="${y}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${m.l - 6}" y="${y + 4}" text-anchor="end">${fmtTick(v)}</text>`);
  }
  const xTicks = [...new Set(xs)].sort((a, b) => a - b);
  for (const v of xTicks) {
    const x = fx(v);
    parts.push(`<line x1="${x}" y1="${m.t + ph}" x2="${x}" y2="${m.t + ph + 4}" stroke="#333"/>`);
    parts.push(`<text x="${x}" y="${m.t + ph + 18}" text-anchor="middle">${fmtTick(v)}</text>`);
  }
  parts.push(`<line x1="${m.l}" y1="${m.t + ph}" x2="${m.l + pw}" y2="${m.t + ph}" stroke="#333"/>`);
  parts.push(`<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${m.t + ph}" stroke="#333"/>`);
  parts.push(`<text x="${m.l + pw / 2}" y="${H - 10}" text-anchor="middle">${esc(o.xLabel)}</text>`);
  parts.push(`<text transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`);
  if (o.yRef !== undefined) {
    const y = fy(o.yRef);
    parts.push(`<line x1="${m.l}" y1="${y}" x2="${m.l + pw}" y2="${y}" stroke="#888" stroke-dasharray="5 4"/>`);
  }
  o.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    if (pts.length > 0) {
      parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(([x, y]) => `${fx(x).toFixed(1)},${fy(y).toFixed(1)}`).join(' ')}"/>`);
      for (const [x, y] of pts) parts.push(`<circle cx="${fx(x).toFixed(1)}" cy="${fy(y).toFixed(1)}" r="3" fill="${color}"/>`);
    }
    const ly = m.t + 10 + i * 18;
    parts.push(`<line x1="${m.l + pw + 12}" y1="${ly}" x2="${m.l + pw + 32}" y2="${ly}" stroke="${color}" stroke-width="2"/>`);
    parts.push(`<text x="${m.l + pw + 38}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

/** The variants of a sim run (the policies, then WISP with extras off), as name → result. */
function allResults(results: BenchResults): [string, PolicyResult][] {
  const out: [string, PolicyResult][] = [];
  for (const [k, r] of Object.entries(results.policies)) if (r) out.push([k, r]);
  const extras = (results.extras ?? {}) as Record<string, { result: PolicyResult }>;
  for (const [k, e] of Object.entries(extras)) if (k !== 'wisp' && e?.result) out.push([k, e.result]);
  return out;
}

/** Goodput-vs-devices and attainment-vs-devices charts. */
export function charts(results: BenchResults): { goodput: string; attainment: string } {
  const series = allResults(results);
  return {
    goodput: svgLineChart({
      title: 'Goodput (SLO-attaining output tokens/s)',
      xLabel: 'concurrent devices',
      yLabel: 'tokens/s',
      logX: true,
      series: series.map(([name, r]) => ({ name, points: r.points.map((p) => [p.devices, p.goodputTokS] as [number, number]) })),
    }),
    attainment: svgLineChart({
      title: 'SLO attainment',
      xLabel: 'concurrent devices',
      yLabel: 'share of sessions (%)',
      logX: true,
      yMax: 100,
      yRef: results.attainmentTarget * 100,
      series: series.map(([name, r]) => ({ name, points: r.points.map((p) => [p.devices, p.attainment * 100] as [number, number]) })),
    }),
  };
}

const x = (v: number | null | undefined): string => (v === null || v === undefined || !Number.isFinite(v) ? 'n/a' : `${v.toFixed(2)}x`);

/**
 * Ours beside the paper's: WISP's capacity and goodput ratios to centralized and SLED, with each
 * extra of ours on and off (a markdown table; empty when the run has no WISP).
 */
export function paperComparisonTable(results: BenchResults): string {
  const paper = results.paper as { capacityVsCentralized: number; capacityVsSled: number; goodputVsCentralized: number; goodputVsSled: number } | undefined;
  const extras = (results.extras ?? {}) as Record<string, { pipelinedDrafting: boolean; truncation: boolean; result: PolicyResult; vsCentralized?: Ratio; vsSled?: Ratio }>;
  if (Object.keys(extras).length === 0) return '';
  const rows = ['| | pipelined drafting | truncation | capacity (devices) | goodput tok/s | capacity vs centralized | capacity vs SLED | goodput vs centralized | goodput vs SLED |', '|---|---|---|---|---|---|---|---|---|'];
  if (paper) rows.push(`| WISP paper (A100) | — | — | — | — | ${x(paper.capacityVsCentralized)} | ${x(paper.capacityVsSled)} | ${x(paper.goodputVsCentralized)} | ${x(paper.goodputVsSled)} |`);
  for (const [k, e] of Object.entries(extras)) {
    rows.push(
      `| ${k} | ${e.pipelinedDrafting ? 'on' : 'off'} | ${e.truncation ? 'on' : 'off'} | ${e.result.capacity} | ${e.result.goodputTokS.toFixed(1)} | ${x(e.vsCentralized?.capacity)} | ${x(e.vsSled?.capacity)} | ${x(e.vsCentralized?.goodput)} | ${x(e.vsSled?.goodput)} |`,
    );
  }
  return rows.join('\n');
}

/** Per-load detail of one policy (markdown). */
function pointsTable(name: string, r: PolicyResult): string {
  const rows = [
    `**${name}** — capacity ${r.capacity}, best goodput ${r.goodputTokS.toFixed(1)} tok/s at ${r.goodputAtDevices} devices, ${r.energyJPerToken.toFixed(3)} J/token at capacity`,
    '',
    '| devices | sessions | attainment (by class) | goodput tok/s | TTFT p50/p90/p99 ms | TPOT p50/p90/p99 ms | accept rate | accepted/round | drafted/round | wasted draft | J/token | batch mean/p99 | est. APE mean | queue ms/round | truncated/round | server time verify/decode/prefill/idle | session ms/token drafting/network/queue/verify/memory | KV used mean/peak, waiting mean/peak | decoded by the server: sessions/tokens, drafts per round of the rest |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  const shares = (p: LoadPoint): string => {
    const t = p.serverMs;
    const total = t ? t.verify + t.decode + t.prefill + t.idle : 0;
    if (!t || total <= 0) return '—';
    return [t.verify, t.decode, t.prefill, t.idle].map((v) => `${((v / total) * 100).toFixed(0)}%`).join('/');
  };
  const perToken = (p: LoadPoint): string => {
    const t = p.sessionMsPerToken;
    return t ? [t.drafting, t.network, t.queue, t.verify, t.memoryWait].map((v) => v.toFixed(1)).join('/') : '—';
  };
  const kv = (p: LoadPoint): string =>
    p.kv && p.kv.capacityTokens !== null ? `${(p.kv.meanUtilisation * 100).toFixed(0)}%/${(p.kv.peakUtilisation * 100).toFixed(0)}%, ${p.kv.meanWaiting.toFixed(1)}/${p.kv.peakWaiting}` : '—';
  const pct = (s: Summary, d: number): string => (s.count === 0 ? '—' : `${s.p50.toFixed(d)}/${s.p90.toFixed(d)}/${s.p99.toFixed(d)}`);
  for (const p of r.points) {
    const byClass = Object.entries(p.attainmentByClass)
      .map(([k, v]) => `${k} ${(v * 100).toFixed(0)}%`)
      .join(', ');
    rows.push(
      `| ${p.devices} | ${p.sessions} | ${(p.attainment * 100).toFixed(1)}% (${byClass}) | ${p.goodputTokS.toFixed(1)} | ${pct(p.ttftMs, 0)} | ${pct(p.tpotMs, 1)} | ${(p.acceptance.rate * 100).toFixed(0)}% | ${p.acceptance.acceptedPerRound.toFixed(2)} | ${p.acceptance.draftedPerRound.toFixed(2)} | ${(p.wastedDraft.fraction * 100).toFixed(0)}% | ${p.energyJPerToken.toFixed(3)} | ${p.batchSize.mean.toFixed(1)}/${p.batchSize.p99.toFixed(0)} | ${p.estimatorApe.count === 0 ? '—' : `${(p.estimatorApe.mean * 100).toFixed(1)}%`} | ${p.queueMsPerRound.toFixed(1)} | ${p.truncatedPerRound.toFixed(2)} | ${shares(p)} | ${perToken(p)} | ${kv(p)} | ${p.modes ? `${(p.modes.decodedSessionShare * 100).toFixed(0)}%/${(p.modes.decodedTokenShare * 100).toFixed(0)}%, ${p.modes.meanDraftsPerRound.toFixed(1)}` : '—'} |`,
    );
  }
  return rows.join('\n');
}

/** report.md: setting, SLOs, summary, comparison with the paper, charts, per-load detail. */
export function reportMarkdown(results: BenchResults, files: { goodput: string; attainment: string }): string {
  const sc = (results.scenario ?? {}) as Record<string, unknown>;
  const lines: string[] = [];
  lines.push(`# wisp ${results.kind} report`, '');
  if (sc.description) lines.push(`Scenario **${String(sc.name)}**: ${String(sc.description)}.`, '');
  lines.push(`SLO: TTFT ≤ ${results.slo.ttftMs} ms and mean TPOT ≤ ${results.slo.tpotMs} ms${sc.sloNote ? ` — ${String(sc.sloNote)}` : ''}.`);
  lines.push(`Capacity: the largest number of concurrent devices at which ≥ ${(results.attainmentTarget * 100).toFixed(0)} % of sessions attain the SLO. Goodput: output tokens/s of SLO-attaining sessions.`, '');
  if (sc.server) lines.push(`Server: **${String(sc.server)}** — ${String(sc.serverDescription ?? '')}${typeof sc.kvCapacityTokens === 'number' ? `; KV cache holds ${sc.kvCapacityTokens} tokens per worker` : ''}.`, '');
  if (sc.workers !== undefined) lines.push(`Workers: ${String(sc.workers)}; simulated ${String(sc.durationS)} s per load (first ${String(sc.warmupS)} s not measured); seed ${String(sc.seed)}.`, '');
  lines.push('## Summary', '', '```', summaryTable(results), '```', '');
  const cmp = paperComparisonTable(results);
  if (cmp) lines.push(results.paper ? '## Beside the WISP paper' : '## WISP with its extras on and off', '', cmp, '');
  const v = results.validation as { liveReport?: string; calibration?: string; table?: string } | undefined;
  if (v?.table) {
    lines.push('## Against the live run', '', `The simulator replayed the live \`wisp bench\` run in \`${String(v.liveReport)}\` (its measured server profile, acceptance samples, settings, and overheads measured ${String(v.calibration)}). Error = (sim − live) / live.`, '');
    lines.push('```', v.table, '```', '');
  }
  lines.push('## Charts', '', `![goodput](${files.goodput})`, '', `![attainment](${files.attainment})`, '');
  lines.push('## Per load', '');
  for (const [k, r] of allResults(results)) lines.push(pointsTable(k, r), '');
  return lines.join('\n');
}

/** Writes goodput.svg, attainment.svg and report.md into `dir` (results.json is bench/write.ts's). */
export async function writeReportFiles(results: BenchResults, dir: string): Promise<string[]> {
  const c = charts(results);
  const files = { goodput: 'goodput.svg', attainment: 'attainment.svg' };
  await writeFile(join(dir, files.goodput), c.goodput);
  await writeFile(join(dir, files.attainment), c.attainment);
  await writeFile(join(dir, 'report.md'), reportMarkdown(results, files));
  return [files.goodput, files.attainment, 'report.md'].map((f) => join(dir, f));
}
