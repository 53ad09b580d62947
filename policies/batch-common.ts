/**
 * What the batch policies share: their input state, request helpers, and a batch under
 * construction that knows its padded shape and predicted latency.
 *
 * Batches are homogeneous — all verifications or all prefills. Members are padded to the
 * longest, so one 512-token prompt in a batch of 5-token verifications would make every
 * member pay for 512 tokens; the schedulers keep the kinds apart and the age bound (WISP) or
 * FIFO order (baselines) keeps either kind from waiting forever.
 */
import { addShape, EMPTY_PASS, predictPassMs, type EstimatorState, type PassAggregate } from './estimator.ts';
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
}

/** Draft tokens a request carries (0 for a prefill). */
export function draftCount(r: PendingRequest): number {
  return r.kind === 'prefill' ? 0 : Math.max(0, r.n - 1);
}

/** The estimator's view of a member verifying `verifyTokens` drafts (prefill: whole prompt, L = 0). */
export function memberShape(r: PendingRequest, verifyTokens: number): BatchShape {
  // A verification always has the prompt in cache, so L ≥ 1 keeps it apart from a prefill.
  return r.kind === 'prefill' ? { n: Math.max(1, r.n), L: 0 } : { n: verifyTokens + 1, L: Math.max(1, r.contextLength) };
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
  readonly members: { req: PendingRequest; verifyTokens: number }[] = [];
  private agg: PassAggregate = EMPTY_PASS;
  private latencyMs = 0;

  constructor(
    private readonly state: BatchPolicyState,
    kind: RequestKind,
  ) {
    this.kind = kind;
  }

  get size(): number {
    return this.members.length;
  }

  get sumTokens(): number {
    return this.agg.totals.tokens;
  }

  /** Predicted latency of the batch as it stands, ms. */
  get predictedMs(): number {
    return this.latencyMs;
  }

  /** Predicted latency if `r` joined with `verifyTokens` drafts, ms. */
  predictWith(r: PendingRequest, verifyTokens: number): number {
    return predictPassMs(this.state.estimator, this.aggWith(r, verifyTokens));
  }

  /** Whether `r` with `verifyTokens` drafts stays within bMax and the token cap (a first member always does). */
  withinCaps(r: PendingRequest, verifyTokens: number): boolean {
    if (this.members.length >= this.state.bMax) return false;
    if (this.members.length === 0) return true;
    return this.agg.totals.tokens + memberShape(r, verifyTokens).n <= this.state.maxBatchTokens;
  }

  add(r: PendingRequest, verifyTokens: number): void {
    this.agg = this.aggWith(r, verifyTokens);
    this.latencyMs = predictPassMs(this.state.estimator, this.agg);
    this.members.push({ req: r, verifyTokens });
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
    const members: BatchMember[] = this.members.map((m) => ({ requestId: m.req.requestId, verifyTokens: m.verifyTokens }));
    return { members, wakeAtMs: null, predictedMs: this.latencyMs };
  }

  private aggWith(r: PendingRequest, verifyTokens: number): PassAggregate {
    return addShape(this.agg, memberShape(r, verifyTokens));
  }
}

/** Predicted latency of `r` run alone with `verifyTokens` drafts, ms. */
export function soloMs(estimator: EstimatorState, r: PendingRequest, verifyTokens: number): number {
  return predictPassMs(estimator, addShape(EMPTY_PASS, memberShape(r, verifyTokens)));
}
