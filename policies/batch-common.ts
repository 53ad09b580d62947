/**
 * What the batch policies share: their input state, request helpers, and a batch under
 * construction that knows its shape and predicted latency.
 *
 * Without chunked prefill, batches are homogeneous — all verifications or all whole prompts: a
 * 512-token prompt in a pass of 5-token verifications would hold all of them back; the
 * schedulers keep the kinds apart and the age bound (WISP) or FIFO order (baselines) keeps
 * either kind from waiting forever. With chunked prefill (docs/design.md §5) a pass mixes
 * verifications with prompt chunks under one token budget, so no prompt stalls anyone: a
 * member's size is its verified drafts, or the prompt tokens its chunk feeds.
 */
import { addShape, EMPTY_PASS, predictPassMs, uniformPassAggregate, type EstimatorState, type PassAggregate } from './estimator.ts';
import { PolicyConfigError } from './errors.ts';
import type { BatchDecision, BatchMember, BatchShape, PendingRequest } from './types.ts';

/** Input of every batch policy: one worker's pending work, its estimator, and the knobs. */
export interface BatchPolicyState {
  pending: readonly PendingRequest[];
  estimator: EstimatorState;
  /** Most members per batch. */
  bMax: number;
  /** SLED: dispatch when the oldest has waited this long, ms. */
  waitMs: number;
  /** Most tokens fed per batch (Σ n); a lone request larger than this still runs alone. */
  maxBatchTokens: number;
  /** WISP: a request older than this is served first, whatever its deadline, ms. */
  ageBoundMs: number;
  /** WISP: may verify only a prefix of a request's drafts to keep deadlines. */
  truncation: boolean;
  /** WISP: a request is at risk when its slack ≤ urgencyFactor × its predicted solo latency (default 2). */
  urgencyFactor?: number;
  /** Prompts may be split into chunks that share a pass with other work (default false). */
  chunkedPrefill?: boolean;
  /** With chunked prefill: tokens one pass may feed, decode tokens included. */
  passTokenBudget?: number;
  /** With chunked prefill: tokens of decode steps that will share the pass (centralized sessions decoding on the worker). */
  decodeTokens?: number;
  /**
   * Decode rows that share every pass with verifications (adaptive: the sessions the server
   * decodes, one token each over about `context` cached tokens): priced into every prediction,
   * so deadline checks see the pass as it will run. Not counted against the token caps (the
   * budget rule accounts for them through decodeTokens).
   */
  sharedDecodeRows?: { count: number; context: number };
}

/** The smallest prompt chunk worth a pass (shorter prompts go whole). */
export const MIN_CHUNK_TOKENS = 16;

/** Tokens a batch may feed: the budget less the decode tokens sharing its pass (chunked), else the batch cap. */
export function tokenCap(s: BatchPolicyState): number {
  if (!s.chunkedPrefill) return s.maxBatchTokens;
  return Math.max(1, (s.passTokenBudget ?? s.maxBatchTokens) - (s.decodeTokens ?? 0));
}

/**
 * Tokens a batch may feed when a verification joins it: never fewer than without chunked
 * prefill. The budget rule sizes a pass for one token per session (a decode step within half
 * the TPOT SLO); a verification yields several tokens per pass and its own deadline checks
 * bound the pass, so the budget limits what prompt chunks add, not how many drafts are verified
 * (capping verifications by it cost WISP up to half its capacity in the regime map).
 */
export function verifyTokenCap(s: BatchPolicyState): number {
  return s.chunkedPrefill ? Math.max(s.maxBatchTokens, tokenCap(s)) : s.maxBatchTokens;
}

export type RequestKind = PendingRequest['kind'];

/** Nothing to run now; ask again at `wakeAtMs` (null: on the next event). */
export function idleDecision(wakeAtMs: number | null = null): BatchDecision {
  return { members: [], wakeAtMs, predictedMs: 0 };
}

/** @throws PolicyConfigError when a knob is out of range */
export function checkBatchState(s: BatchPolicyState): void {
  if (!(Number.isInteger(s.bMax) && s.bMax >= 1)) throw new PolicyConfigError(`bMax must be an integer ≥ 1, got ${s.bMax}`);
  if (!(s.maxBatchTokens >= 1)) throw new PolicyConfigError(`maxBatchTokens must be ≥ 1, got ${s.maxBatchTokens}`);
  if (!(s.waitMs >= 0)) throw new PolicyConfigError(`waitMs must be ≥ 0, got ${s.waitMs}`);
  if (!(s.ageBoundMs >= 0)) throw new PolicyConfigError(`ageBoundMs must be ≥ 0, got ${s.ageBoundMs}`);
  if (s.urgencyFactor !== undefined && !(s.urgencyFactor >= 0)) throw new PolicyConfigError(`urgencyFactor must be ≥ 0, got ${s.urgencyFactor}`);
  if (s.passTokenBudget !== undefined && !(s.passTokenBudget >= 1)) throw new PolicyConfigError(`passTokenBudget must be ≥ 1, got ${s.passTokenBudget}`);
  if (s.decodeTokens !== undefined && !(s.decodeTokens >= 0)) throw new PolicyConfigError(`decodeTokens must be ≥ 0, got ${s.decodeTokens}`);
  if (s.sharedDecodeRows !== undefined && !(s.sharedDecodeRows.count >= 0 && s.sharedDecodeRows.context >= 0)) throw new PolicyConfigError(`sharedDecodeRows must have count and context ≥ 0, got ${JSON.stringify(s.sharedDecodeRows)}`);
}

/** Draft tokens a request carries (0 for a prefill). */
export function draftCount(r: PendingRequest): number {
  return r.kind === 'prefill' ? 0 : Math.max(0, r.n - 1);
}

/** A member's full size: all its drafts (verify), or all that is left of its prompt (prefill). */
export function fullSize(r: PendingRequest): number {
  return r.kind === 'prefill' ? Math.max(1, r.n) : draftCount(r);
}

/** A member's smallest size: no drafts with truncation, a minimal chunk with chunked prefill; else its full size. */
export function smallestSize(s: BatchPolicyState, r: PendingRequest): number {
  if (r.kind === 'prefill') return s.chunkedPrefill ? Math.min(fullSize(r), MIN_CHUNK_TOKENS) : fullSize(r);
  return s.truncation ? 0 : draftCount(r);
}

/**
 * The estimator's view of a member of size `size`: a verification of `size` drafts (+ the last
 * committed token) over its context, or a prompt chunk of `size` tokens over the chunks before it.
 */
export function memberShape(r: PendingRequest, size: number): BatchShape {
  if (r.kind === 'prefill') return r.contextLength > 0 ? { n: Math.max(1, size), L: r.contextLength, prefill: true } : { n: Math.max(1, size), L: 0 };
  // A verification always has the prompt in cache, so L ≥ 1 keeps it apart from a prefill.
  return { n: size + 1, L: Math.max(1, r.contextLength) };
}

/**
 * The largest size in [lo, hi] that `fits` (fits(size) turns false beyond some size: cost grows
 * with it), or null when none does. Prefill chunks are searched by bisection, drafts one by one.
 */
export function largestSize(r: PendingRequest, lo: number, hi: number, fits: (size: number) => boolean): number | null {
  if (hi < lo) return null;
  if (r.kind !== 'prefill') {
    for (let k = hi; k >= lo; k--) if (fits(k)) return k;
    return null;
  }
  if (fits(hi)) return hi;
  if (!fits(lo)) return null;
  let a = lo;
  let b = hi;
  while (b - a > 1) {
    const mid = (a + b) >> 1;
    if (fits(mid)) a = mid;
    else b = mid;
  }
  return a;
}

/** Oldest first; ties by requestId so the order never depends on input order. */
export function byArrival(a: PendingRequest, b: PendingRequest): number {
  return a.arrivalMs - b.arrivalMs || cmp(a.requestId, b.requestId);
}

/** Earliest deadline first; ties by arrival, then requestId. */
export function byDeadline(a: PendingRequest, b: PendingRequest): number {
  return a.deadlineMs - b.deadlineMs || byArrival(a, b);
}

export function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A batch under construction (mutable, local to one policy call). */
export class BatchDraft {
  readonly kind: RequestKind;
  readonly members: { req: PendingRequest; size: number }[] = [];
  private agg: PassAggregate = EMPTY_PASS;
  private latencyMs = 0;
  /** Tokens of the shared decode rows in `agg` (priced, not capped). */
  private readonly baseTokens: number;

  constructor(
    private readonly state: BatchPolicyState,
    kind: RequestKind,
  ) {
    this.kind = kind;
    const rows = state.sharedDecodeRows;
    if (rows && rows.count > 0) this.agg = uniformPassAggregate(rows.count, 1, Math.max(1, Math.round(rows.context)));
    this.baseTokens = this.agg.totals.tokens;
  }

  get size(): number {
    return this.members.length;
  }

  get sumTokens(): number {
    return this.agg.totals.tokens - this.baseTokens;
  }

  /** Predicted latency of the batch as it stands, ms. */
  get predictedMs(): number {
    return this.latencyMs;
  }

  /** Predicted latency if `r` joined with size `size`, ms. */
  predictWith(r: PendingRequest, size: number): number {
    return predictPassMs(this.state.estimator, this.aggWith(r, size));
  }

  /**
   * Whether `r` with size `size` stays within bMax and the token cap (a prompt chunk: the pass
   * budget; a verification: verifyTokenCap). A first member always does — except a prompt chunk
   * larger than the budget (chunks are cut to fit; a minimal one always may run alone).
   */
  withinCaps(r: PendingRequest, size: number): boolean {
    if (this.members.length >= this.state.bMax) return false;
    const n = memberShape(r, size).n;
    if (this.members.length === 0) return !(this.state.chunkedPrefill && r.kind === 'prefill') || n <= Math.max(tokenCap(this.state), Math.min(fullSize(r), MIN_CHUNK_TOKENS));
    return this.sumTokens + n <= (r.kind === 'prefill' ? tokenCap(this.state) : verifyTokenCap(this.state));
  }

  /** The largest size of `r` from `lo` up to its full size within the caps (null when even `lo` is over). */
  largestWithinCaps(r: PendingRequest, lo: number): number | null {
    return largestSize(r, lo, fullSize(r), (k) => this.withinCaps(r, k));
  }

  add(r: PendingRequest, size: number): void {
    this.agg = this.aggWith(r, size);
    this.latencyMs = predictPassMs(this.state.estimator, this.agg);
    this.members.push({ req: r, size });
  }

  /**
   * Earliest deadline among members whose deadline holds now (completion = nowMs + latency);
   * Infinity when none. An addition must not push completion past it.
   */
  protectedDeadlineMs(nowMs: number): number {
    const done = nowMs + this.latencyMs;
    let min = Infinity;
    for (const m of this.members) if (m.req.deadlineMs >= done && m.req.deadlineMs < min) min = m.req.deadlineMs;
    return min;
  }

  decision(): BatchDecision {
    const members: BatchMember[] = this.members.map((m) =>
      m.req.kind !== 'prefill' ? { requestId: m.req.requestId, verifyTokens: m.size } : this.state.chunkedPrefill ? { requestId: m.req.requestId, verifyTokens: 0, prefillTokens: m.size } : { requestId: m.req.requestId, verifyTokens: 0 },
    );
    return { members, wakeAtMs: null, predictedMs: this.latencyMs };
  }

  private aggWith(r: PendingRequest, size: number): PassAggregate {
    return addShape(this.agg, memberShape(r, size));
  }
}

/** Predicted latency of `r` run alone with size `size`, ms. */
export function soloMs(estimator: EstimatorState, r: PendingRequest, size: number): number {
  return predictPassMs(estimator, addShape(EMPTY_PASS, memberShape(r, size)));
}
