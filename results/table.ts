/**
 * The plain-text summary of a bench or sim run: one row per policy, then WISP's ratios.
 * Shared by `wisp bench` and `wisp sim`.
 */
import type { BenchResults, LoadPoint, PolicyResult } from './metrics.ts';
import type { PaceCounts, Pacing } from './schema.ts';

const fmt = (x: number | null | undefined, digits = 1): string => (x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(digits));

function bestPoint(r: PolicyResult) {
  return r.points.find((p) => p.devices === r.goodputAtDevices) ?? r.points[0];
}

/** A fixed-width table of the per-policy results and WISP's ratios to the baselines. */
export function summaryTable(results: BenchResults): string {
  const rows: string[][] = [
    ['policy', 'capacity', 'goodput tok/s', '@devices', 'TTFT p50/p90 ms', 'TPOT p50/p90 ms', 'accept', 'wasted draft', 'J/token', 'batch', 'est. err'],
  ];
  for (const [name, r] of Object.entries(results.policies)) {
    if (!r) continue;
    const p = bestPoint(r);
    rows.push([
      name,
      r.censored ? `≥ ${r.capacity}` : String(r.capacity),
      fmt(r.goodputTokS),
      String(r.goodputAtDevices),
      p ? `${fmt(p.ttftMs.p50, 0)}/${fmt(p.ttftMs.p90, 0)}` : '—',
      p ? `${fmt(p.tpotMs.p50)}/${fmt(p.tpotMs.p90)}` : '—',
      p ? `${fmt(p.acceptance.rate * 100, 0)}%` : '—',
      p ? `${fmt(p.wastedDraft.fraction * 100, 0)}%` : '—',
      fmt(r.energyJPerToken, 3),
      p ? fmt(p.batchSize.mean) : '—',
      p && p.estimatorApe.count > 0 ? `${fmt(p.estimatorApe.mean * 100, 0)}%` : '—',
    ]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) => r.map((cell, c) => cell.padEnd(widths[c])).join('  ');
  const out = [line(rows[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)];
  const attain: string[] = [];
  for (const [name, r] of Object.entries(results.policies)) {
    if (!r) continue;
    const range = (p: LoadPoint) => (p.repeats ? ` (${fmt(p.repeats.attainment.min * 100, 0)}–${fmt(p.repeats.attainment.max * 100, 0)})` : '');
    attain.push(`  ${name.padEnd(12)} ${r.points.map((p) => `${p.devices}:${fmt(p.attainment * 100, 0)}%${range(p)}`).join('  ')}`);
  }
  const repeats = Object.values(results.policies).find((r) => r?.points.some((p) => p.repeats))?.points.find((p) => p.repeats)?.repeats?.runs;
  out.push('', `SLO attainment by concurrent devices${repeats ? ` (median of ${repeats} runs, their range in brackets)` : ''}:`, ...attain);
  if (results.pacing) out.push('', pacingLine(results.pacing));
  const breakdown = timeBreakdownLines(results);
  if (breakdown.length > 0) out.push('', 'Where the time goes, at each policy\'s capacity (or its smallest load when it has none):', ...breakdown);
  const { vsCentralized, vsSled } = results.ratios;
  const ratio = (x: number | null | undefined) => (x === null || x === undefined ? 'n/a' : `${x.toFixed(2)}x`);
  if (vsCentralized || vsSled) {
    out.push('', 'WISP ratios:');
    if (vsCentralized) out.push(`  vs centralized: capacity ${ratio(vsCentralized.capacity)}, goodput ${ratio(vsCentralized.goodput)}`);
    if (vsSled) out.push(`  vs SLED:        capacity ${ratio(vsSled.capacity)}, goodput ${ratio(vsSled.goodput)}`);
  }
  return out.join('\n');
}

/** "paced to a100-80gb/34b: 98.7% of 1,234 passes on time (16 late, worst +3.2 ms)". */
export function pacingLine(p: Pacing): string {
  const t = p.total;
  const late = t.late > 0 ? ` (${t.late} late, worst +${fmt(t.worstLateMs)} ms)` : '';
  const per = Object.entries(p.byPolicy)
    .filter((e): e is [string, PaceCounts] => e[1] !== undefined)
    .map(([name, c]) => `${name} ${fmt(c.passes > 0 ? ((c.passes - c.late) / c.passes) * 100 : 100, 1)}%`)
    .join(', ');
  return `Paced to ${p.server}: ${fmt(p.onTimeShare * 100, 1)}% of ${t.passes} passes on time${late}; by policy: ${per}`;
}

/** The load a policy's breakdown is shown at: its capacity, else its smallest load. */
export function pointAtCapacity(r: PolicyResult): LoadPoint | undefined {
  return r.points.find((p) => p.devices === r.capacity) ?? r.points[0];
}

/** "server verify 55% · prefill 44% · idle 1%" for a load's server time (parts that are 0 left out). */
export function serverTimeText(p: LoadPoint): string {
  const t = p.serverMs;
  if (!t) return '—';
  const total = t.verify + t.decode + t.prefill + t.idle;
  if (total <= 0) return '—';
  const parts = (['verify', 'decode', 'prefill', 'idle'] as const).filter((k) => t[k] > 0).map((k) => `${k} ${((t[k] / total) * 100).toFixed(0)}%`);
  return parts.join(' · ');
}

/** "drafting 33.0 · network 4.4 · queue 51.2 · verify 22.9 · memory 0.0 ms/token". */
export function sessionTimeText(p: LoadPoint): string {
  const t = p.sessionMsPerToken;
  if (!t) return '—';
  return `drafting ${fmt(t.drafting)} · network ${fmt(t.network)} · queue ${fmt(t.queue)} · verify ${fmt(t.verify)} · memory wait ${fmt(t.memoryWait)} ms/token`;
}

/** One block per policy: its server time by kind and its sessions' time per output token by part. */
export function timeBreakdownLines(results: BenchResults): string[] {
  const out: string[] = [];
  for (const [name, r] of Object.entries(results.policies)) {
    if (!r) continue;
    const p = pointAtCapacity(r);
    if (!p || (!p.serverMs && !p.sessionMsPerToken)) continue;
    const kv = p.kv && p.kv.capacityTokens !== null ? `; KV cache ${fmt(p.kv.meanUtilisation * 100, 0)}% used (peak ${fmt(p.kv.peakUtilisation * 100, 0)}%), ${fmt(p.kv.meanWaiting)} sessions waiting for memory (peak ${p.kv.peakWaiting})` : '';
    out.push(`  ${name} @ ${p.devices} devices — server: ${serverTimeText(p)}${kv}`);
    out.push(`  ${' '.repeat(name.length)}   sessions: ${sessionTimeText(p)}`);
    if (name === 'adaptive' && p.modes) out.push(`  ${' '.repeat(name.length)}   served: ${modesText(p)}`);
  }
  return out;
}

/** "38% of sessions (35% of tokens) decoded by the server; 4.5 drafts per round on the rest". */
export function modesText(p: LoadPoint): string {
  const m = p.modes;
  if (!m) return '—';
  const switched = m.switchedSessionShare !== undefined && m.switchedSessionShare > 0 ? `, ${fmt(m.switchedSessionShare * 100, 0)}% switched mode at least once` : '';
  return `${fmt(m.decodedSessionShare * 100, 0)}% of sessions ended decoded by the server, ${fmt(m.decodedTokenShare * 100, 0)}% of tokens decoded there${switched}; ${fmt(m.meanDraftsPerRound)} drafts per round speculated`;
}
