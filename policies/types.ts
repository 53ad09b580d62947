/**
 * Interfaces between the policies (pure functions of state and time) and the machines,
 * actors and simulator that run them. Times are milliseconds on the caller's clock.
 */

/** One pending unit of server work: a prefill (new session) or a verification round. */
export interface PendingRequest {
  /** Unique per request: `${sessionId}:${round}`. */
  requestId: string;
  sessionId: string;
  kind: 'prefill' | 'verify';
  round: number;
  /** Tokens to feed: what is left of the prompt for a prefill, drafts + 1 for a verify. */
  n: number;
  /** Context already in the worker's cache for this session, in tokens (a prefill: the prompt chunks already run). */
  contextLength: number;
  /** Draft tokens' predicted acceptance probabilities (empty for a prefill). */
  predictedAcceptance: number[];
  /** When the scheduler received it. */
  arrivalMs: number;
  /** When its result must reach the device to keep the session within its SLO. */
  deadlineMs: number;
}

/** Shape of one batch member as the estimator sees it. */
export interface BatchShape {
  /** Tokens fed for this request. */
  n: number;
  /** Cache length before the request, in tokens. */
  L: number;
  /** A prompt chunk over L cached prompt tokens (L = 0 is always a prompt; logits only at its end). */
  prefill?: boolean;
}

/** One chosen batch member; `verifyTokens` < drafts means the scheduler truncated the draft. */
export interface BatchMember {
  requestId: string;
  /** Number of draft tokens to verify (0 for a prefill; ≤ the request's draft count). */
  verifyTokens: number;
  /** A prefill: prompt tokens this pass feeds (a chunk; all of what is left when it equals the request's n). */
  prefillTokens?: number;
}

export interface BatchDecision {
  /** Members to dispatch now, or empty to wait. */
  members: BatchMember[];
  /** When to ask again if nothing was dispatched (a timer), or null to wait for an event. */
  wakeAtMs: number | null;
  /** The estimator's prediction for the chosen batch, in ms (0 when empty). */
  predictedMs: number;
}

// ---- Added by the policies module (H4) ----

/** Draft-logit statistics of one drafted token, the speculation controller's input. */
export interface DraftTokenFeatures {
  /** Probability of the token the draft chose (its top-1), in [0, 1]. */
  top1Prob: number;
  /** Entropy of the draft distribution, nats. */
  entropy: number;
  /** top-1 probability minus top-2 probability, in [0, 1]. */
  margin: number;
  /** Largest minus smallest logit (or top-1 minus mean; whatever the producer uses consistently). */
  logitSpread: number;
  /** 0-based index of the token within this round's draft. */
  position: number;
}

/** The batch policies available by config (config/schema.ts POLICIES: the baselines plus WISP). */
export type { PolicyName } from '../config/schema.ts';
