/**
 * Redis state of wisp (docs/design.md §4): per-session metadata and committed token history (so a
 * lost worker's sessions can be re-prefilled elsewhere), worker heartbeats, and the
 * verification-time estimator's statistics.
 *
 * Keys (prefix configurable, default `wisp:`):
 *   <p>session:{<id>}          hash   workerId, deviceId, model, committedLength, kvBytes, lastAccessMs
 *   <p>session:{<id>}:tokens   list   committed tokens (prompt + generated), in order
 *   <p>worker:<id>             string heartbeat JSON, expires after its TTL
 *   <p>workers                 set    ids that sent a heartbeat (pruned when read)
 *   <p>estimator:<model>:<worker> string estimator statistics JSON
 * The `{<id>}` hash tag keeps a session's two keys in one cluster slot, so the Lua scripts
 * that touch both stay valid on Redis Cluster.
 *
 * Session keys expire `sessionTtlMs` after their last access, so abandoned sessions vanish.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { z } from 'zod';
import { redactUrl } from '../broker/errors.ts';
import { WispError } from '../common/errors.ts';

export type StoreErrorCode = 'store_unavailable' | 'unknown_session' | 'session_closed' | 'history_conflict' | 'bad_value';

export class StoreError extends WispError {
  declare readonly code: StoreErrorCode;
  constructor(code: StoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** Redis could not be reached when the store was opened. */
export class StoreUnavailableError extends StoreError {
  constructor(url: string, cause: unknown) {
    super('store_unavailable', `store: cannot connect to ${redactUrl(url)}: ${(cause as Error)?.message ?? String(cause)}`, { cause });
  }
}

export class UnknownSessionError extends StoreError {
  readonly sessionId: string;
  constructor(sessionId: string) {
    super('unknown_session', `store: session ${sessionId} does not exist (closed or expired)`);
    this.sessionId = sessionId;
  }
}

/**
 * A commit for a session its device closed (its record deleted, a marker left for the session
 * TTL): the writer stops serving it instead of writing the record again, as it would after a
 * FLUSHDB (UnknownSessionError).
 */
export class SessionClosedError extends StoreError {
  readonly sessionId: string;
  constructor(sessionId: string) {
    super('session_closed', `store: session ${sessionId} was closed`);
    this.sessionId = sessionId;
  }
}

/** A commit does not continue the stored history (another writer got there with other tokens). */
export class HistoryConflictError extends StoreError {
  readonly storedLength: number;
  constructor(sessionId: string, fromLength: number, count: number, storedLength: number) {
    super(
      'history_conflict',
      `store: session ${sessionId}: commit of ${count} token(s) at ${fromLength} conflicts with the stored history (length ${storedLength})`,
    );
    this.storedLength = storedLength;
  }
}

export interface SessionRecord {
  sessionId: string;
  workerId: string;
  deviceId: string;
  model: string;
  /** Committed tokens (prompt + generated). */
  committedLength: number;
  /** KV-cache bytes the owning worker holds for this session. */
  kvBytes: number;
  /** Last write, on the writer's clock (ms). */
  lastAccessMs: number;
  /** Caller-defined session settings (JSON), written at open. */
  attrs: string;
  /** Round of the last committed result (-1 before any) and that result (JSON), for replays. */
  lastRound: number;
  lastResult: string;
  /** The committed length at which the server last handed a decoded session back to its device (-1: never). */
  handedBackAt: number;
}

export interface OpenSessionInput {
  deviceId: string;
  model: string;
  workerId: string;
  promptTokens: readonly number[];
  kvBytes?: number;
  nowMs?: number;
  /** Caller-defined settings kept with the session (JSON text). */
  attrs?: string;
}

export interface CommitInput {
  /** Committed length before these tokens (the caller's view). */
  fromLength: number;
  tokens: readonly number[];
  kvBytes?: number;
  /** Set when the session moved to another worker. */
  workerId?: string;
  nowMs?: number;
  /** The round these tokens answer and its result (JSON), so a retried round can be replayed. */
  lastRound?: number;
  lastResult?: string;
  /** Adaptive serving: these tokens end the server's decoding of the session; its device drafts from here. */
  handBack?: boolean;
}

export interface CommitResult {
  committedLength: number;
  /** false: these exact tokens were already committed (a redelivered round); nothing changed. */
  applied: boolean;
}

export const WorkerHeartbeatSchema = z.object({
  model: z.string(),
  state: z.enum(['ready', 'busy', 'stopping']),
  sessions: z.number().int().min(0),
  kvBytes: z.number().int().min(0),
  sentAtMs: z.number().finite(),
});
export type WorkerHeartbeat = z.infer<typeof WorkerHeartbeatSchema>;

export interface LiveWorker {
  workerId: string;
  info: WorkerHeartbeat;
}

export interface RedisStoreOptions {
  url: string;
  /** Prefix of every key (default `wisp:`); tests use a unique one. */
  keyPrefix?: string;
  /** Session keys expire this long after their last access, ms (default 600 000). */
  sessionTtlMs?: number;
  /** CA file (PEM) for rediss:// URLs. */
  tls?: { caPath?: string };
  /** Reconnect attempts a command waits through before it fails (default 3). */
  maxRetriesPerRequest?: number;
  /** Longest delay between reconnect attempts, ms (default 2000). */
  maxReconnectDelayMs?: number;
  /** How long opening waits for the first connection, ms (default 5000). */
  connectTimeoutMs?: number;
  connectionName?: string;
}

// Appends committed tokens, updates metadata and refreshes both TTLs, atomically.
// Idempotent: the same tokens at the same position again report applied = 0.
const COMMIT_LUA = `
if redis.call('EXISTS', KEYS[3]) == 1 then return {-3, 0} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local from = tonumber(ARGV[1])
local n = #ARGV - 8
local len = redis.call('LLEN', KEYS[2])
local applied = 0
if len == from then
  local i = 9
  while i <= #ARGV do
    local j = math.min(i + 3999, #ARGV)
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
    i = j + 1
  end
  len = len + n
  applied = 1
elseif len >= from + n then
  local stored = redis.call('LRANGE', KEYS[2], from, from + n - 1)
  for i = 1, n do
    if stored[i] ~= ARGV[8 + i] then return {-2, len} end
  end
else
  return {-2, len}
end
redis.call('HSET', KEYS[1], 'committedLength', len, 'lastAccessMs', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'kvBytes', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'workerId', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'lastRound', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'lastResult', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'handedBackAt', from + n) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {applied, len}
`;

// Creates a session with its prompt as the first committed tokens; an existing one is only touched.
const OPEN_LUA = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
  return {0, redis.call('LLEN', KEYS[2])}
end
redis.call('DEL', KEYS[2])
-- A session opened (again) under this id is a live one: no closed marker stops its writes.
redis.call('DEL', KEYS[3])
local i = 8
while i <= #ARGV do
  local j = math.min(i + 3999, #ARGV)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
local len = redis.call('LLEN', KEYS[2])
redis.call('HSET', KEYS[1], 'deviceId', ARGV[3], 'model', ARGV[4], 'workerId', ARGV[5], 'kvBytes', ARGV[6],
  'committedLength', len, 'lastAccessMs', ARGV[2], 'attrs', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {1, len}
`;

// Reads the metadata and refreshes the TTLs (access keeps a session alive).
const GET_LUA = `
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return h end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return h
`;

// Reads the history from an index and refreshes the TTLs; nil when the session is gone.
const HISTORY_LUA = `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return redis.call('LRANGE', KEYS[2], ARGV[2], -1)
`;

// Changes the owning worker (after a worker loss) if the session exists.
const MOVE_LUA = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'workerId', ARGV[2], 'kvBytes', ARGV[3], 'lastAccessMs', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
`;

type Arg = string | number;
interface ScriptedRedis extends Redis {
  wispCommit(k1: string, k2: string, k3: string, ...args: Arg[]): Promise<[number, number]>;
  wispOpen(k1: string, k2: string, k3: string, ...args: Arg[]): Promise<[number, number]>;
  wispGet(k1: string, k2: string, ttlMs: number): Promise<string[]>;
  wispHistory(k1: string, k2: string, ttlMs: number, from: number): Promise<string[] | null>;
  wispMove(k1: string, k2: string, ...args: Arg[]): Promise<number>;
}

/**
 * The Redis store. Make one with `openRedisStore`. Connection problems are emitted as
 * `error` events when someone listens (never thrown from a timer); commands issued while
 * Redis is away wait through `maxRetriesPerRequest` reconnects, then reject.
 * Events: `error` (err), `reconnecting` (delayMs), `ready` ().
 */
export class RedisStore extends EventEmitter {
  readonly keyPrefix: string;
  readonly sessionTtlMs: number;
  #redis: ScriptedRedis;
  #lastReported = '';
  /** While opening, failures are thrown by openRedisStore, not reported as well. */
  #opening = true;

  /** @internal use openRedisStore */
  constructor(options: RedisStoreOptions) {
    super();
    this.keyPrefix = options.keyPrefix ?? 'wisp:';
    this.sessionTtlMs = options.sessionTtlMs ?? 600_000;
    const maxDelayMs = options.maxReconnectDelayMs ?? 2_000;
    const redis = new Redis(options.url, {
      lazyConnect: true,
      connectionName: options.connectionName,
      connectTimeout: options.connectTimeoutMs ?? 5_000,
      maxRetriesPerRequest: options.maxRetriesPerRequest ?? 3,
      retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 10), maxDelayMs),
      tls: options.tls?.caPath ? { ca: readFileSync(options.tls.caPath) } : undefined,
    });
    redis.defineCommand('wispCommit', { numberOfKeys: 3, lua: COMMIT_LUA });
    redis.defineCommand('wispOpen', { numberOfKeys: 3, lua: OPEN_LUA });
    redis.defineCommand('wispGet', { numberOfKeys: 2, lua: GET_LUA });
    redis.defineCommand('wispHistory', { numberOfKeys: 2, lua: HISTORY_LUA });
    redis.defineCommand('wispMove', { numberOfKeys: 2, lua: MOVE_LUA });
    redis.on('error', (err: Error) => this.#report(err)); // without a listener ioredis only logs; we surface it
    redis.on('reconnecting', (delayMs: number) => this.emit('reconnecting', delayMs));
    redis.on('ready', () => {
      this.#lastReported = '';
      this.emit('ready');
    });
    this.#redis = redis as ScriptedRedis;
  }

  /** The underlying client, for tests and tools (e.g. cleaning up a key prefix). */
  get client(): Redis {
    return this.#redis;
  }

  /** @internal */
  async connect(url: string, timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.#redis.connect(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no connection within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } catch (err) {
      this.#redis.disconnect();
      throw new StoreUnavailableError(url, err);
    } finally {
      clearTimeout(timer);
      this.#opening = false;
    }
  }

  #report(err: Error): void {
    if (this.#opening) return;
    if (this.listenerCount('error') > 0) this.emit('error', err);
    else if (err.message !== this.#lastReported) process.stderr.write(`store: ${err.message}\n`); // once per distinct error while down
    this.#lastReported = err.message;
  }

  #sessionKey(sessionId: string): string {
    return `${this.keyPrefix}session:{${sessionId}}`;
  }

  #tokensKey(sessionId: string): string {
    return `${this.keyPrefix}session:{${sessionId}}:tokens`;
  }

  #closedKey(sessionId: string): string {
    return `${this.keyPrefix}closed:{${sessionId}}`;
  }

  /**
   * Creates a session with its prompt as the first committed tokens. Idempotent: an existing
   * session is only touched (TTL refreshed) and `created` is false.
   */
  async openSession(sessionId: string, input: OpenSessionInput): Promise<{ created: boolean; committedLength: number }> {
    if (input.promptTokens.length === 0) throw new StoreError('bad_value', `store: session ${sessionId}: empty prompt`);
    const [created, len] = await this.#redis.wispOpen(
      this.#sessionKey(sessionId),
      this.#tokensKey(sessionId),
      this.#closedKey(sessionId),
      this.sessionTtlMs,
      input.nowMs ?? Date.now(),
      input.deviceId,
      input.model,
      input.workerId,
      input.kvBytes ?? 0,
      input.attrs ?? '',
      ...input.promptTokens,
    );
    return { created: created === 1, committedLength: len };
  }

  /**
   * Appends committed tokens after `fromLength`, updates the metadata and refreshes the TTL in
   * one atomic script. Committing the same tokens again is a no-op (`applied: false`);
   * different tokens at a committed position throw HistoryConflictError.
   */
  async commitTokens(sessionId: string, input: CommitInput): Promise<CommitResult> {
    const [status, len] = await this.#redis.wispCommit(
      this.#sessionKey(sessionId),
      this.#tokensKey(sessionId),
      this.#closedKey(sessionId),
      input.fromLength,
      this.sessionTtlMs,
      input.nowMs ?? Date.now(),
      input.kvBytes === undefined ? '' : input.kvBytes,
      input.workerId ?? '',
      input.lastRound === undefined ? '' : input.lastRound,
      input.lastResult ?? '',
      input.handBack === true ? '1' : '',
      ...input.tokens,
    );
    if (status === -3) throw new SessionClosedError(sessionId);
    if (status === -1) throw new UnknownSessionError(sessionId);
    if (status === -2) throw new HistoryConflictError(sessionId, input.fromLength, input.tokens.length, len);
    return { committedLength: len, applied: status === 1 };
  }

  /** The session's metadata (refreshing its TTL), or null when it is gone. */
  async getSession(sessionId: string): Promise<SessionRecord | null> {
    const flat = await this.#redis.wispGet(this.#sessionKey(sessionId), this.#tokensKey(sessionId), this.sessionTtlMs);
    if (flat.length === 0) return null;
    const h: Record<string, string> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) h[flat[i]] = flat[i + 1];
    return {
      sessionId,
      workerId: h.workerId ?? '',
      deviceId: h.deviceId ?? '',
      model: h.model ?? '',
      committedLength: Number(h.committedLength ?? 0),
      kvBytes: Number(h.kvBytes ?? 0),
      lastAccessMs: Number(h.lastAccessMs ?? 0),
      attrs: h.attrs ?? '',
      lastRound: h.lastRound === undefined ? -1 : Number(h.lastRound),
      lastResult: h.lastResult ?? '',
      handedBackAt: h.handedBackAt === undefined ? -1 : Number(h.handedBackAt),
    };
  }

  /** Committed tokens from index `fromIndex` on (refreshing the TTL), or null when the session is gone. */
  async getHistory(sessionId: string, fromIndex = 0): Promise<number[] | null> {
    const raw = await this.#redis.wispHistory(this.#sessionKey(sessionId), this.#tokensKey(sessionId), this.sessionTtlMs, fromIndex);
    return raw === null ? null : raw.map(Number);
  }

  /** Hands a session to another worker (after its worker was lost). False when the session is gone. */
  async moveSession(sessionId: string, workerId: string, kvBytes = 0, nowMs = Date.now()): Promise<boolean> {
    const moved = await this.#redis.wispMove(this.#sessionKey(sessionId), this.#tokensKey(sessionId), this.sessionTtlMs, workerId, kvBytes, nowMs);
    return moved === 1;
  }

  /**
   * Removes a session's keys (on SessionClose) and leaves a marker for the session TTL, so a
   * worker still serving it (a cancelled session it decodes) stops rather than writing the
   * record again. True when it existed.
   */
  async deleteSession(sessionId: string): Promise<boolean> {
    const [[, n]] = (await this.#redis.multi().del(this.#sessionKey(sessionId), this.#tokensKey(sessionId)).set(this.#closedKey(sessionId), '1', 'PX', this.sessionTtlMs).exec()) as [[Error | null, number]];
    return n > 0;
  }

  /** Records that a worker is alive; the record expires after `ttlMs` without a new one. */
  async setWorkerHeartbeat(workerId: string, info: WorkerHeartbeat, ttlMs: number): Promise<void> {
    await this.#redis
      .multi()
      .set(`${this.keyPrefix}worker:${workerId}`, JSON.stringify(WorkerHeartbeatSchema.parse(info)), 'PX', Math.max(1, Math.round(ttlMs)))
      .sadd(`${this.keyPrefix}workers`, workerId)
      .exec();
  }

  /** Removes a worker's heartbeat at once (orderly shutdown). */
  async removeWorker(workerId: string): Promise<void> {
    await this.#redis.multi().del(`${this.keyPrefix}worker:${workerId}`).srem(`${this.keyPrefix}workers`, workerId).exec();
  }

  /** Workers whose heartbeat has not expired, sorted by id; expired ones are pruned from the set. */
  async listLiveWorkers(): Promise<LiveWorker[]> {
    const ids = (await this.#redis.smembers(`${this.keyPrefix}workers`)).sort();
    if (ids.length === 0) return [];
    const values = await this.#redis.mget(...ids.map((id) => `${this.keyPrefix}worker:${id}`));
    const live: LiveWorker[] = [];
    const dead: string[] = [];
    ids.forEach((workerId, i) => {
      const raw = values[i];
      if (raw === null) return void dead.push(workerId);
      const parsed = WorkerHeartbeatSchema.safeParse(safeJson(raw));
      if (parsed.success) live.push({ workerId, info: parsed.data });
      else this.#report(new Error(`store: worker ${workerId}: unreadable heartbeat ignored`));
    });
    if (dead.length > 0) await this.#redis.srem(`${this.keyPrefix}workers`, ...dead);
    return live;
  }

  /** Saves the estimator's statistics for (model, worker); a value is serialised as JSON. */
  async saveEstimatorState(model: string, workerId: string, state: unknown): Promise<void> {
    await this.#redis.set(`${this.keyPrefix}estimator:${model}:${workerId}`, typeof state === 'string' ? state : JSON.stringify(state));
  }

  /** The saved statistics (parsed JSON), or null when none were saved or they are unreadable. */
  async loadEstimatorState(model: string, workerId: string): Promise<unknown | null> {
    const raw = await this.#redis.get(`${this.keyPrefix}estimator:${model}:${workerId}`);
    if (raw === null) return null;
    const value = safeJson(raw);
    if (value === undefined) {
      this.#report(new Error(`store: estimator state of ${model}/${workerId} is not JSON; ignored`));
      return null;
    }
    return value;
  }

  /** Closes the connection after pending replies. */
  async close(): Promise<void> {
    try {
      await this.#redis.quit();
    } catch {
      this.#redis.disconnect();
    }
  }
}

/**
 * Opens the store and waits for the first connection (StoreUnavailableError after
 * `connectTimeoutMs`); afterwards ioredis reconnects by itself.
 * @example const store = await openRedisStore({ url: config.redisUrl, keyPrefix: config.redisKeyPrefix, sessionTtlMs: config.sessionTtlMs });
 */
export async function openRedisStore(options: RedisStoreOptions): Promise<RedisStore> {
  const store = new RedisStore(options);
  await store.connect(options.url, options.connectTimeoutMs ?? 5_000);
  return store;
}

function safeJson(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}
