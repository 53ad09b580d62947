/**
 * Builders of the messages more than one role writes, and the key of a server request, so each
 * is spelt once: error replies (scheduler, verifier, devices, the broker's refusals), verify
 * results and worker status (the live verifier and the simulator), `${sessionId}:${round}`.
 */
import {
  PROTOCOL_VERSION,
  type ErrorCode,
  type ErrorMessage,
  type SessionOpen,
  type VerifyRequest,
  type VerifyResult,
  type WorkerStatus,
} from './messages.ts';

/** The key of one server request: a session's round (0 = its open). */
export function requestKey(sessionId: string, round: number): string {
  return `${sessionId}:${round}`;
}

/** The key of an open or verify request. */
export function requestKeyOf(m: SessionOpen | VerifyRequest): string {
  return requestKey(m.sessionId, m.type === 'open' ? 0 : m.round);
}

/** A typed error reply (ids only where known). */
export function errorMessage(code: ErrorCode, message: string, ids: { sessionId?: string; requestId?: string; round?: number } = {}): ErrorMessage {
  return {
    v: PROTOCOL_VERSION,
    type: 'error',
    code,
    message,
    ...(ids.sessionId !== undefined ? { sessionId: ids.sessionId } : {}),
    ...(ids.requestId !== undefined ? { requestId: ids.requestId } : {}),
    ...(ids.round !== undefined ? { round: ids.round } : {}),
  };
}

export function verifyResult(f: Omit<VerifyResult, 'v' | 'type'>): VerifyResult {
  return { v: PROTOCOL_VERSION, type: 'result', ...f };
}

export function workerStatus(f: Omit<WorkerStatus, 'v' | 'type'>): WorkerStatus {
  return { v: PROTOCOL_VERSION, type: 'worker', ...f };
}
