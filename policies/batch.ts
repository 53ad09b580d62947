/**
 * Batch policy dispatcher: the scheduler machine (live and simulated) calls `selectBatch` with
 * the configured policy name whenever a worker can take a batch or a wake-up timer fires.
 */
import type { BatchPolicyState } from './batch-common.ts';
import { selectBatchCentralized } from './batch-centralized.ts';
import { selectBatchSled } from './batch-sled.ts';
import { selectBatchWisp } from './batch-wisp.ts';
import { POLICIES } from '../config/schema.ts';
import { PolicyConfigError } from './errors.ts';
import type { BatchDecision, PolicyName } from './types.ts';

export const POLICY_NAMES: readonly PolicyName[] = POLICIES;

/**
 * What `policy` would dispatch now on one worker.
 * @throws PolicyConfigError for an unknown policy name or out-of-range knobs
 */
export function selectBatch(policy: PolicyName, state: BatchPolicyState, nowMs: number): BatchDecision {
  switch (policy) {
    case 'wisp':
      return selectBatchWisp(state, nowMs);
    case 'adaptive':
      // Verifications waiting: WISP's batch, pricing in the decode rows of the sessions the server
      // decodes, which share the pass (sharedDecodeRows). None: the pass is a decode step and
      // prompt chunks, centralized serving's case, batched by its rule (decodes first, then
      // chunks oldest first) — WISP's deadline-driven chunks lengthened the decode passes there
      // (A100/34b at 100 ms, 88 devices all decoded: TPOT p90 105 ms against 93).
      return state.pending.some((r) => r.kind === 'verify') ? selectBatchWisp(state, nowMs) : selectBatchCentralized(state, nowMs);
    case 'sled':
      return selectBatchSled(state, nowMs);
    case 'centralized':
      return selectBatchCentralized(state, nowMs);
    default:
      throw new PolicyConfigError(`unknown batch policy "${String(policy)}" (known: ${POLICY_NAMES.join(', ')})`);
  }
}
