/**
 * The roles' view of Redis: the verifier's session ledger (committed history and the last
 * round's answer, so another worker can take a session over), worker heartbeats, and the
 * scheduler's estimator statistics. One RedisStore underneath.
 */
import { z } from 'zod';
import { SamplingSchema, VerifyResultSchema, type WorkerStatus } from '../protocol/messages.ts';
import type { WispConfig } from '../config/schema.ts';
import type { EstimatorState } from '../policies/estimator.ts';
import { openRedisStore, type RedisStore } from '../store/redis-store.ts';
import type { Logger } from '../telemetry/logger.ts';
import type { SessionLedger, SessionRecord } from './verifier/executor.ts';
import type { EstimatorStore } from './scheduler/role.ts';

/** Session settings a worker needs to take a session over; kept beside the history. */
const SessionAttrsSchema = z.object({
  mode: z.enum(['speculative', 'centralized']),
  sampling: SamplingSchema,
  maxNewTokens: z.number().int().min(1),
  promptLength: z.number().int().min(1),
  replyTo: z.string().min(1),
});

export interface SessionStoreHandle {
  store: RedisStore;
  ledger(workerId: string): SessionLedger;
  estimators: EstimatorStore;
  heartbeat(status: WorkerStatus, ttlMs: number): Promise<void>;
  close(): Promise<void>;
}

export async function openSessionStore(config: WispConfig, logger: Logger): Promise<SessionStoreHandle> {
  const store = await openRedisStore({
    url: config.redisUrl,
    keyPrefix: config.redisKeyPrefix,
    sessionTtlMs: config.sessionTtlMs,
    ...(config.redisTls.enabled ? { tls: { caPath: config.redisTls.caPath } } : {}),
  });
  store.on('error', (err: Error) => logger.warn({ err: err.message }, 'redis error'));
  return {
    store,
    ledger: (workerId) => redisLedger(store, workerId),
    estimators: {
      load: async (model, workerId) => (await store.loadEstimatorState(model, workerId)) as EstimatorState | null,
      save: (model, workerId, state) => store.saveEstimatorState(model, workerId, state),
    },
    heartbeat: (s, ttlMs) => store.setWorkerHeartbeat(s.workerId, { model: s.model, state: s.state, sessions: s.sessions, kvBytes: s.kvBytes, sentAtMs: s.sentAtMs }, ttlMs),
    close: () => store.close(),
  };
}

/** The executor's ledger on Redis: open = history from the prompt (+ first token), commit = append. */
export function redisLedger(store: RedisStore, workerId: string): SessionLedger {
  return {
    async open(sessionId, rec: SessionRecord, kvBytes) {
      const attrs = JSON.stringify({ mode: rec.mode, sampling: rec.sampling, maxNewTokens: rec.maxNewTokens, promptLength: rec.promptLength, replyTo: rec.replyTo });
      await store.openSession(sessionId, { deviceId: rec.deviceId, model: 'target', workerId, promptTokens: rec.tokens.slice(0, rec.promptLength), kvBytes, attrs });
      // The first token; committing it again (a repeated open) is a no-op.
      await store.commitTokens(sessionId, {
        fromLength: rec.promptLength,
        tokens: rec.tokens.slice(rec.promptLength),
        kvBytes,
        workerId,
        lastRound: rec.lastRound,
        ...(rec.lastResult ? { lastResult: JSON.stringify(rec.lastResult) } : {}),
      });
    },
    async adopt(sessionId, kvBytes) {
      await store.moveSession(sessionId, workerId, kvBytes);
    },
    async commit(sessionId, newTokens, result, kvBytes) {
      await store.commitTokens(sessionId, {
        fromLength: result.committedLength - newTokens.length,
        tokens: newTokens,
        kvBytes,
        workerId,
        lastRound: result.round,
        lastResult: JSON.stringify(result),
      });
    },
    async append(sessionId, fromLength, newTokens, kvBytes, handBack) {
      await store.commitTokens(sessionId, { fromLength, tokens: newTokens, kvBytes, workerId, ...(handBack ? { handBack } : {}) });
    },
    async load(sessionId) {
      const meta = await store.getSession(sessionId);
      if (!meta) return null;
      const tokens = await store.getHistory(sessionId);
      const attrs = SessionAttrsSchema.safeParse(safeJson(meta.attrs));
      if (!tokens || !attrs.success) return null;
      const last = meta.lastResult ? VerifyResultSchema.safeParse(safeJson(meta.lastResult)) : null;
      return {
        deviceId: meta.deviceId,
        ...attrs.data,
        tokens,
        lastRound: meta.lastRound ?? -1,
        lastResult: last?.success ? last.data : null,
        ...(meta.handedBackAt >= 0 ? { handedBackAt: meta.handedBackAt } : {}),
      };
    },
    async remove(sessionId) {
      await store.deleteSession(sessionId);
    },
  };
}

function safeJson(raw: string | undefined): unknown {
  if (!raw) return undefined;
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}
