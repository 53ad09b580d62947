/**
 * Centralized serving's batch policy (baseline, docs/design.md §5). The server decodes every
 * session itself in continuous-batching steps it runs on its own (actors/verifier/executor.ts,
 * the simulator's worker); what the scheduler dispatches is the sessions' prompts.
 *
 * Without chunked prefill each batch takes pending prompts oldest first, up to bMax and the
 * token cap, as a pass of its own. With it, vLLM's rule: the decode step's tokens come first,
 * prompt chunks fill what is left of the pass's token budget, oldest first, and the worker runs
 * them in the same pass as its next decode step. It never waits.
 */
import { BatchDraft, byArrival, checkBatchState, fullSize, idleDecision, smallestSize, type BatchPolicyState } from './batch-common.ts';
import type { BatchDecision } from './types.ts';

/** Centralized: run pending prompts now (FIFO; chunked into the budget the decode step leaves). */
export function selectBatchCentralized(state: BatchPolicyState, _nowMs: number): BatchDecision {
  checkBatchState(state);
  if (state.pending.length === 0) return idleDecision();
  const fifo = [...state.pending].sort(byArrival);
  const batch = new BatchDraft(state, fifo[0].kind);
  for (const r of fifo) {
    if (!state.chunkedPrefill && r.kind !== batch.kind) continue;
    // Verifications (none come in centralized serving) would go in full; prompts as the largest chunk that fits.
    const size = batch.largestWithinCaps(r, r.kind === 'prefill' ? smallestSize(state, r) : fullSize(r));
    if (size === null) break;
    batch.add(r, size);
  }
  return batch.decision();
}
