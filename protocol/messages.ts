/**
 * The wire protocol (docs/design.md §3): one zod schema per message, TS types derived from them.
 * Every message is JSON with `v` (schema version) and `type` (its kind, so one queue can
 * carry several kinds). Anything that arrives over the broker goes through `parseMessage`.
 */
import { z } from 'zod';

export const PROTOCOL_VERSION = 1 as const;

/** Caps that bound what one message may ask for; beyond them a message is refused. */
export const LIMITS = {
  idChars: 128,
  promptChars: 100_000,
  promptTokens: 32_768,
  maxNewTokens: 8_192,
  draftTokens: 64,
  topK: 64,
  batchMembers: 1_024,
  /** A body larger than this is dead-lettered before it is parsed. */
  messageBytes: 1_048_576,
} as const;

const id = z.string().min(1).max(LIMITS.idChars).regex(/^[A-Za-z0-9._:-]+$/, 'ids use [A-Za-z0-9._:-]');
const tokenId = z.number().int().nonnegative();
const ms = z.number().finite().nonnegative();
const prob = z.number().finite().min(0).max(1);

export const SloSchema = z.object({
  ttftMs: z.number().finite().positive(),
  tpotMs: z.number().finite().positive(),
});
export type Slo = z.infer<typeof SloSchema>;

export const SamplingSchema = z.object({
  temperature: z.number().finite().min(0).max(10),
  topP: z.number().finite().gt(0).max(1),
  seed: z.number().int().nonnegative().max(2 ** 32 - 1),
});
export type Sampling = z.infer<typeof SamplingSchema>;

export const SparseDistSchema = z
  .object({ ids: z.array(tokenId).min(1).max(LIMITS.topK), probs: z.array(prob).min(1).max(LIMITS.topK) })
  .refine((d) => d.ids.length === d.probs.length, 'ids and probs differ in length');

/** How the session is served: speculative (edge drafts) or centralized (server decodes alone). */
export const ServingModeSchema = z.enum(['speculative', 'centralized']);
export type ServingMode = z.infer<typeof ServingModeSchema>;
/** How a device asks to be served: a mode, or `adaptive` — the scheduler picks one (policies/serving-mode.ts). */
export const RequestedModeSchema = z.enum(['speculative', 'centralized', 'adaptive']);
export type RequestedMode = z.infer<typeof RequestedModeSchema>;
/** A device's drafting pace, for the scheduler's choice of mode: ms per drafted token, per-token agreement with the target. */
export const DraftingPaceSchema = z.object({
  msPerToken: ms,
  agreement: z.number().min(0).max(0.999),
  kMax: z.number().int().min(1).max(LIMITS.draftTokens),
  /** It drafts the next round while a round is verified (pipelined drafting). */
  pipelined: z.boolean().optional(),
});

/** client → devices */
export const PromptRequestSchema = z
  .object({
    v: z.literal(PROTOCOL_VERSION),
    type: z.literal('prompt'),
    requestId: id,
    prompt: z.string().max(LIMITS.promptChars).optional(),
    promptTokens: z.array(tokenId).min(1).max(LIMITS.promptTokens).optional(),
    maxNewTokens: z.number().int().min(1).max(LIMITS.maxNewTokens),
    slo: SloSchema.optional(),
    sampling: SamplingSchema.optional(),
    /** Target model wanted; default: whatever the workers serve. */
    model: id.optional(),
    deviceId: id.optional(),
    /** Queue where TokenChunk messages go. */
    replyTo: z.string().min(1).max(255),
  })
  .refine((m) => (m.prompt === undefined) !== (m.promptTokens === undefined), 'exactly one of prompt and promptTokens');
export type PromptRequest = z.infer<typeof PromptRequestSchema>;

/** device → scheduler: a new session; answered (by a worker) with a VerifyResult of round 0. */
export const SessionOpenSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('open'),
  sessionId: id,
  deviceId: id,
  requestId: id,
  draftModel: id,
  targetModel: id.optional(),
  /** `adaptive`: the scheduler chooses, and the worker answers in that mode (a round-0 VerifyResult: speculate; a TokenStream: the server decodes). */
  mode: RequestedModeSchema,
  /** With `adaptive`: how fast the device drafts and how well its draft agrees (absent: it speculates). */
  drafting: DraftingPaceSchema.optional(),
  promptTokens: z.array(tokenId).min(1).max(LIMITS.promptTokens),
  maxNewTokens: z.number().int().min(1).max(LIMITS.maxNewTokens),
  slo: SloSchema,
  sampling: SamplingSchema,
  replyTo: z.string().min(1).max(255),
  /** Device clock when sent (for latency accounting only, never for ordering). */
  sentAtMs: ms,
  /** The device's network round trip, ms: the scheduler subtracts the return half from deadlines. */
  rttMs: ms.optional(),
});
export type SessionOpen = z.infer<typeof SessionOpenSchema>;

/** device → scheduler: verify `draftTokens` on top of `committedLength` committed tokens. */
export const VerifyRequestSchema = z
  .object({
    v: z.literal(PROTOCOL_VERSION),
    type: z.literal('verify'),
    sessionId: id,
    deviceId: id,
    round: z.number().int().min(1),
    committedLength: z.number().int().min(1),
    draftTokens: z.array(tokenId).max(LIMITS.draftTokens),
    predictedAcceptance: z.array(prob).max(LIMITS.draftTokens),
    /** Present when sampling: the draft's renormalised top-k for each draft token. */
    draftDists: z.array(SparseDistSchema).max(LIMITS.draftTokens).optional(),
    replyTo: z.string().min(1).max(255),
    sentAtMs: ms,
    /**
     * The server decodes this session and its stream stalled (its worker died, or a chunk was
     * lost): decode on from the device's `committedLength`, re-sending what it lacks. No drafts.
     */
    resume: z.literal(true).optional(),
  })
  .refine((m) => m.predictedAcceptance.length === m.draftTokens.length, 'predictedAcceptance length differs from draftTokens')
  .refine((m) => m.resume === undefined || m.draftTokens.length === 0, 'a resume carries no drafts')
  .refine((m) => m.draftDists === undefined || m.draftDists.length === m.draftTokens.length, 'draftDists length differs from draftTokens');
export type VerifyRequest = z.infer<typeof VerifyRequestSchema>;

/** worker → device (round 0 answers a SessionOpen with the first target token). */
export const VerifyResultSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('result'),
  sessionId: id,
  round: z.number().int().min(0),
  accepted: z.number().int().min(0),
  /** The target's token: correction at the first rejection, or the bonus token. */
  token: tokenId,
  /** Draft tokens actually verified (fewer than sent when the scheduler truncated). */
  verified: z.number().int().min(0),
  /** Committed tokens (prompt + generated) after this result. */
  committedLength: z.number().int().min(1),
  queueMs: ms,
  verifyMs: ms,
  batchSize: z.number().int().min(1),
  workerId: id,
  /**
   * Adaptive serving: from this round on the server decodes the session (the scheduler switched
   * it); the device stops drafting and relays stream chunks from sequence number `streamSeq`.
   */
  decodes: z.boolean().optional(),
  streamSeq: z.number().int().min(0).optional(),
});
export type VerifyResult = z.infer<typeof VerifyResultSchema>;

/** worker → device in centralized mode: tokens the server decoded on its own. */
export const TokenStreamSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('stream'),
  sessionId: id,
  /** Sequence number of this chunk from its worker, from 0 (diagnostic: a resumed stream starts again). */
  seq: z.number().int().min(0),
  tokens: z.array(tokenId).min(1),
  /** Prompt and generated tokens once these are appended: the device takes only those it lacks. */
  committedLength: z.number().int().min(1),
  done: z.boolean(),
  workerId: id,
  /** On the chunk that answers the open (the prefill): its queueing and model time, ms. */
  queueMs: ms.optional(),
  verifyMs: ms.optional(),
  /** Adaptive serving: the server's last decoded chunk; the device drafts from the committed text on. */
  speculate: z.boolean().optional(),
});
export type TokenStream = z.infer<typeof TokenStreamSchema>;

export const SessionStatsSchema = z.object({
  ttftMs: ms,
  tpotMs: ms,
  sloAttained: z.boolean(),
  rounds: z.number().int().min(0),
  drafted: z.number().int().min(0),
  accepted: z.number().int().min(0),
  wastedDraftTokens: z.number().int().min(0),
  wastedDraftMs: ms,
  queueMs: ms,
  verifyMs: ms,
  acceptedByPosition: z.array(z.number().int().min(0)),
  draftedByPosition: z.array(z.number().int().min(0)),
  /** How it was served last, once the server's first answer said (absent before). */
  mode: ServingModeSchema.optional(),
  /** Tokens the server decoded for it, and how often its mode was switched (adaptive; absent: none). */
  decodedTokens: z.number().int().min(0).optional(),
  modeSwitches: z.number().int().min(0).optional(),
});
export type SessionStats = z.infer<typeof SessionStatsSchema>;

/** device → client */
/**
 * Why a session's answer ended (OpenAI's `finish_reason` habit): its requested token budget
 * (`length`), an EOS token (`eos`), the model's context (`context`: the budget was clipped to
 * it), cancelled, or failed (`error`). Every final message carries one.
 */
export const STOP_REASONS = ['length', 'eos', 'context', 'cancelled', 'error'] as const;
export const StopReasonSchema = z.enum(STOP_REASONS);
export type StopReason = z.infer<typeof StopReasonSchema>;

export const TokenChunkSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('chunk'),
  requestId: id,
  sessionId: id,
  tokens: z.array(tokenId),
  text: z.string(),
  /** Tokens sent before this chunk: a client drops a chunk it already has (a resend after a broker restart). */
  offset: z.number().int().min(0).optional(),
  /**
   * Characters of text sent before this chunk. A prompt redelivered after a broker restart is
   * served again from the start, in chunks cut differently: the client keeps the part of an
   * overlapping chunk it lacks, tokens by `offset`, text by this.
   */
  textOffset: z.number().int().min(0).optional(),
  done: z.boolean(),
  stats: SessionStatsSchema.optional(),
  /** On the last chunk: why the answer ended. */
  stopReason: StopReasonSchema.optional(),
  /** On the last chunk of a request the device clipped: the value it served instead (maxNewTokens to the context). */
  clipped: z.object({ maxNewTokens: z.number().int().min(1) }).optional(),
}).refine((c) => !c.done || c.stopReason !== undefined, 'the last chunk (done) carries its stopReason');
export type TokenChunk = z.infer<typeof TokenChunkSchema>;

/** device → scheduler (→ worker): the session ended; its cache can go. */
export const SessionCloseSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('close'),
  sessionId: id,
  deviceId: id,
  reason: z.enum(['done', 'failed', 'cancelled']),
});
export type SessionClose = z.infer<typeof SessionCloseSchema>;

export const ERROR_CODES = [
  'malformed',
  'unknown_session',
  'not_owner',
  'token_out_of_vocab',
  'prompt_too_long',
  'unknown_model',
  'too_large',
  'worker_lost',
  'timeout',
  'internal',
  /** The device serving the request shut down: the answer stops where it was (stopReason `cancelled`). */
  'device_shutdown',
] as const;
export const ErrorCodeSchema = z.enum(ERROR_CODES);
export type ErrorCode = z.infer<typeof ErrorCodeSchema>;

/** Typed error answered to a sender (device or client) when a message of theirs is refused. */
export const ErrorMessageSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('error'),
  code: ErrorCodeSchema,
  message: z.string().max(2_000),
  sessionId: id.optional(),
  requestId: id.optional(),
  round: z.number().int().min(0).optional(),
  /** Where it ends a client's answer: `error`, or `cancelled` for one cut short on purpose (`device_shutdown`). */
  stopReason: z.enum(['error', 'cancelled']).optional(),
});
export type ErrorMessage = z.infer<typeof ErrorMessageSchema>;

/** One batch member as dispatched by the scheduler to a worker. */
export const BatchItemSchema = z.object({
  // Discriminated by `type`: a plain union tried SessionOpen first and paid for its failure on
  // every verify item (~0.15 ms per batch, on the worker's hot path).
  // An open reaches a worker with its mode resolved; one with `adaptive` is refused there (executor).
  request: z.discriminatedUnion('type', [SessionOpenSchema, VerifyRequestSchema]),
  /** Draft tokens to verify (≤ sent; the scheduler may truncate). Ignored for opens. */
  verifyTokens: z.number().int().min(0),
  /** When the scheduler received the request (scheduler clock), for queueMs. */
  arrivedAtMs: ms,
  /** The request's deadline on the scheduler clock (docs/design.md §5), for slack accounting. */
  deadlineMs: z.number().finite().optional(),
  /** Committed token history, sent when the worker must (re)build the session's cache. */
  history: z.array(tokenId).optional(),
  /** An open that waited for KV-cache memory: when the scheduler admitted it (scheduler clock). */
  admittedAtMs: ms.optional(),
  /** Adaptive serving, on a verification: after this round the server decodes the session (its result says so). */
  thenDecode: z.boolean().optional(),
  /**
   * Chunked prefill: the prompt tokens [start, end) this pass feeds, on top of the chunks before
   * it; the session's first token comes with the chunk that ends the prompt. Absent: the whole
   * prompt at once.
   */
  chunk: z
    .object({ start: z.number().int().min(0), end: z.number().int().min(1) })
    .refine((c) => c.end > c.start, 'chunk end must be after its start')
    .optional(),
});
export type BatchItem = z.infer<typeof BatchItemSchema>;

/** scheduler → worker */
export const VerifyBatchSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('batch'),
  batchId: id,
  workerId: id,
  items: z.array(BatchItemSchema).min(1).max(LIMITS.batchMembers),
  predictedMs: ms,
  dispatchedAtMs: ms,
  /** Sessions to drop from the worker's cache (closed or moved). */
  evict: z.array(id).max(LIMITS.batchMembers).default([]),
  /**
   * Chunked prefill: the scheduler holds more prompt work for this worker, to send as soon as this
   * batch is done. A worker with sessions decoding waits for it (FOLLOW_UP_HOLD_MS at most) so the
   * decode step rides in that pass instead of running alone first.
   */
  followUp: z.boolean().optional(),
  /**
   * Adaptive serving: sessions this worker decodes that go back to speculation on their device;
   * each gets its next decoded token in a chunk marked `speculate`, and no more.
   */
  speculate: z.array(id).max(LIMITS.batchMembers).optional(),
});
export type VerifyBatch = z.infer<typeof VerifyBatchSchema>;

/** One member of an executed pass: tokens fed over a cache; `prefill` marks a prompt chunk. */
const PassShapeSchema = z.object({ n: z.number().int().min(1), L: z.number().int().min(0), prefill: z.boolean().optional() });

/** worker → scheduler: ready for work, and what the last batch cost (feeds the estimator). */
export const WorkerStatusSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  type: z.literal('worker'),
  workerId: id,
  model: id,
  vocabSize: z.number().int().positive(),
  maxPositions: z.number().int().positive(),
  state: z.enum(['ready', 'busy', 'stopping']),
  sessions: z.number().int().min(0),
  kvBytes: z.number().int().min(0),
  /** How the worker lays out a pass: padded to its longest member (default) or token-flat (a serving engine). */
  passLayout: z.enum(['padded', 'varlen']).optional(),
  /** KV-cache tokens the worker can hold for all its sessions; absent = no limit the scheduler must keep. */
  kvCapacityTokens: z.number().int().positive().optional(),
  /** Centralized sessions it decodes in continuous batching (their tokens share every pass). */
  decoding: z.number().int().min(0).optional(),
  /** Mean time between a decoded session's tokens over the worker's recent passes, ms (absent before any). */
  decodeTpotMs: ms.optional(),
  /**
   * A worker that knows its server's cost (a serving engine, a cost model): the time of a pass of
   * T one-token members at T = 16, 32, …, 8,192 (policies/pass-budget.ts), ms; the scheduler
   * derives the pass-token budget from it.
   */
  passCurveMs: z.array(ms).length(10).optional(),
  /** Changes every time the worker process starts: a new one has no batch in flight. */
  incarnation: id,
  /** The batch that just ended (done or failed); absent on heartbeats. */
  doneBatchId: id.optional(),
  lastBatch: z
    .object({
      batchId: id,
      shapes: z.array(PassShapeSchema).min(1),
      actualMs: ms,
      predictedMs: ms,
      /** A pass the worker ran as several model calls (a padded server: verifications, then prompt chunks), each timed. */
      parts: z.array(z.object({ shapes: z.array(PassShapeSchema).min(1), actualMs: ms })).max(4).optional(),
    })
    .optional(),
  sentAtMs: ms,
});
export type WorkerStatus = z.infer<typeof WorkerStatusSchema>;

/** Messages the scheduler consumes. */
export const SchedulerInboxSchema = z.discriminatedUnion('type', [
  SessionOpenSchema,
  VerifyRequestSchema,
  SessionCloseSchema,
  WorkerStatusSchema,
]);
export type SchedulerInbox = z.infer<typeof SchedulerInboxSchema>;

/** Messages a device's reply queue carries. */
export const DeviceInboxSchema = z.discriminatedUnion('type', [VerifyResultSchema, TokenStreamSchema, ErrorMessageSchema]);
export type DeviceInbox = z.infer<typeof DeviceInboxSchema>;

/** Messages a client's result queue carries. */
export const ClientInboxSchema = z.discriminatedUnion('type', [TokenChunkSchema, ErrorMessageSchema]);
export type ClientInbox = z.infer<typeof ClientInboxSchema>;

export type ParseResult<T> = { ok: true; value: T } | { ok: false; reason: string; raw: unknown };

/**
 * Decodes and validates a message body. Never throws: a refusal carries a one-line reason
 * (JSON error, or the first schema issues with their paths) for the dead-letter header.
 */
export function parseMessage<T>(schema: z.ZodType<T>, body: Buffer | string): ParseResult<T> {
  const size = typeof body === 'string' ? Buffer.byteLength(body) : body.length;
  if (size > LIMITS.messageBytes) return { ok: false, reason: `too_large: ${size} bytes > ${LIMITS.messageBytes}`, raw: undefined };
  let raw: unknown;
  try {
    raw = JSON.parse(typeof body === 'string' ? body : body.toString('utf8'));
  } catch (e) {
    return { ok: false, reason: `malformed: invalid JSON (${(e as Error).message})`, raw: undefined };
  }
  const r = schema.safeParse(raw);
  if (r.success) return { ok: true, value: r.data };
  const issues = r.error.issues
    .slice(0, 3)
    .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`)
    .join('; ');
  return { ok: false, reason: `malformed: ${issues}`, raw };
}
