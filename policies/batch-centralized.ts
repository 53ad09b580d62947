/**
 * Centralized serving's batch policy (baseline, docs/design.md §5): continuous batching. The server
 * decodes every session itself, one token per step; each step takes every pending request of
 * the oldest request's kind, oldest first, up to bMax and the token cap. It never waits.
 */
import { BatchDraft, byArrival, checkBatchState, draftCount, idleDecision, type BatchPolicyState } from './batch-common.ts';
import type { BatchDecision } from './types.ts';

/** Centralized: run all pending step requests now (FIFO, same kind as the oldest). */
export function selectBatchCentralized(state: BatchPolicyState, _nowMs: number): BatchDecision {
  checkBatchState(state);
  if (state.pending.length === 0) return idleDecision();
  const fifo = [...state.pending].sort(byArrival);
  const batch = new BatchDraft(state, fifo[0].kind);
  for (const r of fifo) {
    if (r.kind !== batch.kind) continue;
    if (!batch.withinCaps(r, draftCount(r))) break;
    batch.add(r, draftCount(r));
  }
  return batch.decision();
}
