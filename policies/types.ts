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
  /** Tokens to feed: prompt length for a prefill, drafts + 1 for a verify. */
  n: number;
  /** Context already in the worker's cache for this session, in tokens. */
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
}

/** One chosen batch member; `verifyTokens` < drafts means the scheduler truncated the draft. */
export interface BatchMember {
  requestId: string;
  /** Number of draft tokens to verify (0 for a prefill; ≤ the request's draft count). */
  verifyTokens: number;
}

export interface BatchDecision {
  /** Members to dispatch now, or empty to wait. */
  members: BatchMember[];
  /** When to ask again if nothing was dispatched (a timer), or null to wait for an event. */
  wakeAtMs: number | null;
  /** The estimator's prediction for the chosen batch, in ms (0 when empty). */
  predictedMs: number;
}
