/**
 * WISP's verification batch scheduler (docs/design.md §5). A batch ends when its slowest member ends,
 * so one long request (many drafts, long context) can make every short one miss its SLO. When
 * a worker is free, the batch is built like a knapsack, with the estimator as the judge:
 *
 * 1. Starving — waited ≥ ageBoundMs: in first, oldest first, no deadline check (no request
 *    waits forever, whatever the others' deadlines).
 * 2. At risk — could still make its deadline but has little slack (deadline − now ≤
 *    urgencyFactor × its solo latency): earliest deadline first.
 * 3. The rest that can make their deadline: greedily by value density E[committed] / ΔT_est,
 *    ΔT_est being the estimator's marginal latency of adding it to the batch so far.
 * 4. The remaining ones (those that cannot make it in this batch, then those already late):
 *    earliest deadline first — served, never dropped, but after everything that can still
 *    meet its SLO.
 * In steps 2–4 an addition is allowed only while every member whose deadline holds still
 * meets it (completion = now + predicted batch latency); in 2–3 the newcomer's own deadline
 * must hold too. Caps: bMax members, Σ n ≤ maxBatchTokens (a lone first member is exempt).
 *
 * Truncation (switch): when a request's full draft would break a deadline or a cap, it may
 * join with only its first m drafts verified — the largest m that keeps everything — which
 * still commits E[committed | m] = 1 + Σ_{i≤m} Π_{j≤i} a_j tokens.
 *
 * Chunked prefill (switch): a prompt is an item like any other, with its TTFT deadline and the
 * estimator's cost; it joins with the largest chunk that keeps the caps and the deadlines, and
 * is worth the share of its first token the chunk completes (chunk ÷ what is left). Without it,
 * the first pick decides whether this is a verification or a prefill batch (see
 * batch-common.ts). WISP is work-conserving: with anything pending it always dispatches.
 */
import {
  BatchDraft,
  byArrival,
  byDeadline,
  checkBatchState,
  cmp,
  fullSize,
  idleDecision,
  largestSize,
  smallestSize,
  soloMs,
  type BatchPolicyState,
  type RequestKind,
} from './batch-common.ts';
import { expectedCommitted } from './deadline.ts';
import type { BatchDecision, PendingRequest } from './types.ts';

/** Marginal latency below this counts as this (a launch-bound batch gets members nearly free). */
const MIN_MARGINAL_MS = 0.01;

interface Classified {
  req: PendingRequest;
  solo: number;
  starving: boolean;
  /** Can make its deadline if run alone (with its shortest allowed draft). */
  viable: boolean;
  urgent: boolean;
}

/** WISP: deadline-aware, density-ordered batch for one free worker. */
export function selectBatchWisp(state: BatchPolicyState, nowMs: number): BatchDecision {
  checkBatchState(state);
  if (state.pending.length === 0) return idleDecision();
  const urgencyFactor = state.urgencyFactor ?? 2;
  const all: Classified[] = state.pending.map((req) => {
    const solo = soloMs(state.estimator, req, fullSize(req));
    // A prompt can be viable only if its whole remainder runs in time (its first token needs all of it).
    const shortest = req.kind === 'verify' && state.truncation ? soloMs(state.estimator, req, 0) : solo;
    const viable = nowMs + shortest <= req.deadlineMs;
    return {
      req,
      solo,
      starving: nowMs - req.arrivalMs >= state.ageBoundMs,
      viable,
      urgent: viable && req.deadlineMs - nowMs <= urgencyFactor * solo,
    };
  });

  const kind = state.chunkedPrefill ? 'verify' : firstKind(state, all);
  const left = state.chunkedPrefill ? [...all] : all.filter((c) => c.req.kind === kind);
  const batch = new BatchDraft(state, kind);
  const take = (c: Classified, size: number): void => {
    batch.add(c.req, size);
    left.splice(left.indexOf(c), 1);
  };

  // 1. Starving: oldest first, caps only.
  for (const c of left.filter((x) => x.starving).sort((a, b) => byArrival(a.req, b.req))) {
    const m = largestFit(state, batch, c.req, nowMs, false, true);
    if (m !== null) take(c, m);
  }
  // 2. At risk: earliest deadline first, with the deadline check.
  for (const c of left.filter((x) => x.urgent).sort((a, b) => byDeadline(a.req, b.req))) {
    const m = largestFit(state, batch, c.req, nowMs, true, false);
    if (m !== null) take(c, m);
  }
  // 3. The other viable ones by density, recomputed against the batch after each addition.
  for (;;) {
    let best: { c: Classified; m: number; density: number } | null = null;
    for (const c of left) {
      if (!c.viable) continue;
      const m = largestFit(state, batch, c.req, nowMs, true, false);
      if (m === null) continue;
      const deltaMs = Math.max(MIN_MARGINAL_MS, batch.predictWith(c.req, m) - batch.predictedMs);
      const density = value(state, c.req, m) / deltaMs;
      if (best === null || density > best.density || (density === best.density && byDeadline(c.req, best.c.req) < 0)) best = { c, m, density };
    }
    if (best === null) break;
    take(best.c, best.m);
  }
  // 4. Everything else: viable-but-not-in-time first, then late; earliest deadline first.
  const rest = [...left].sort((a, b) => Number(!a.viable) - Number(!b.viable) || byDeadline(a.req, b.req));
  for (const c of rest) {
    const m = largestFit(state, batch, c.req, nowMs, false, false);
    if (m !== null) take(c, m);
  }
  return batch.size > 0 ? batch.decision() : idleDecision();
}

/**
 * Expected tokens committed by `r` at size `size`: a verification of its first `size` drafts;
 * a prompt yields its first token — a chunk the share of it that the chunk completes.
 */
function value(state: BatchPolicyState, r: PendingRequest, size: number): number {
  if (r.kind === 'prefill') return state.chunkedPrefill ? size / Math.max(1, r.n) : 1;
  return expectedCommitted(r.predictedAcceptance.slice(0, size));
}

/**
 * The largest size `r` can join with — its full draft, or with truncation any prefix down to
 * 0; its whole remaining prompt, or with chunked prefill any chunk down to the minimum — or
 * null when none fits the caps and, unless `ignoreDeadlines`, the protected deadlines (and its
 * own, when `needOwn`: a chunk that does not finish the prompt has no deadline of its own).
 */
function largestFit(state: BatchPolicyState, batch: BatchDraft, r: PendingRequest, nowMs: number, needOwn: boolean, ignoreDeadlines: boolean): number | null {
  const full = fullSize(r);
  const guard = ignoreDeadlines ? Infinity : batch.protectedDeadlineMs(nowMs);
  return largestSize(r, smallestSize(state, r), full, (m) => {
    if (!batch.withinCaps(r, m)) return false;
    if (ignoreDeadlines) return true;
    const done = nowMs + batch.predictWith(r, m);
    if (done > guard) return false;
    // Its own deadline binds a verification, and a prompt only on the chunk that finishes it.
    return !(needOwn && (r.kind === 'verify' || m === full) && done > r.deadlineMs);
  });
}

/** Kind of the request that would be picked first: starving, at risk, best solo density, late. */
function firstKind(state: BatchPolicyState, all: readonly Classified[]): RequestKind {
  const starving = all.filter((c) => c.starving).sort((a, b) => byArrival(a.req, b.req));
  if (starving.length > 0) return starving[0].req.kind;
  const urgent = all.filter((c) => c.urgent).sort((a, b) => byDeadline(a.req, b.req));
  if (urgent.length > 0) return urgent[0].req.kind;
  const viable = all.filter((c) => c.viable);
  if (viable.length > 0) {
    const density = (c: Classified): number => value(state, c.req, fullSize(c.req)) / Math.max(MIN_MARGINAL_MS, c.solo);
    viable.sort((a, b) => density(b) - density(a) || byDeadline(a.req, b.req) || cmp(a.req.requestId, b.req.requestId));
    return viable[0].req.kind;
  }
  return [...all].sort((a, b) => byDeadline(a.req, b.req))[0].req.kind;
}
