/**
 * SLED's batch policy (baseline, docs/design.md §5): FIFO static batching. A batch goes out when
 * B_max requests are pending or the oldest of them has waited W ms; until then the worker
 * idles and the caller is asked to wake at the oldest's arrival + W. No deadlines, no
 * estimator: that is the interference WISP removes. Drafts are always verified in full.
 *
 * Without chunked prefill each kind (verifications, prompts) batches on its own, the kind
 * holding the oldest request first. With it, one FIFO line: prompts join as chunks, as large as
 * the pass's token budget leaves room for.
 */
import { BatchDraft, byArrival, checkBatchState, fullSize, idleDecision, smallestSize, type BatchPolicyState, type RequestKind } from './batch-common.ts';
import type { BatchDecision, PendingRequest } from './types.ts';

/** SLED: dispatch the oldest requests (up to bMax and the token cap) once a batch is due. */
export function selectBatchSled(state: BatchPolicyState, nowMs: number): BatchDecision {
  checkBatchState(state);
  if (state.pending.length === 0) return idleDecision();
  const groups = new Map<RequestKind | 'all', PendingRequest[]>();
  for (const r of [...state.pending].sort(byArrival)) {
    const key = state.chunkedPrefill ? 'all' : r.kind;
    const g = groups.get(key);
    if (g) g.push(r);
    else groups.set(key, [r]);
  }
  // Among groups whose batch is due, the one holding the oldest request goes first.
  let due: PendingRequest[] | null = null;
  let wakeAtMs = Infinity;
  for (const g of groups.values()) {
    const oldest = g[0];
    // Compared as a time, the same expression the wake-up is set to, so a wake at that time is due.
    const dueAtMs = oldest.arrivalMs + state.waitMs;
    const isDue = g.length >= state.bMax || nowMs >= dueAtMs;
    if (isDue && (due === null || byArrival(oldest, due[0]) < 0)) due = g;
    if (!isDue) wakeAtMs = Math.min(wakeAtMs, dueAtMs);
  }
  if (due === null) return idleDecision(wakeAtMs);
  const batch = new BatchDraft(state, due[0].kind);
  for (const r of due) {
    // Strict FIFO: the first request that does not fit closes the batch (a prompt takes the largest chunk that fits).
    const size = batch.largestWithinCaps(r, r.kind === 'prefill' ? smallestSize(state, r) : fullSize(r));
    if (size === null) break;
    batch.add(r, size);
  }
  return batch.decision();
}
