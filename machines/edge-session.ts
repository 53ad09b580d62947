/**
 * EdgeSession: one user request on one edge device, from open to done.
 *
 *   opening ─(round-0 result: first target token)─▶ drafting ─▶ awaiting ─(result)─▶ drafting …
 *      │                                                                     └▶ done | failed
 *      └─ centralized mode: streaming (the server decodes; tokens arrive as TokenStream chunks)
 *   adaptive: the first answer says which — a round-0 result (drafting) or a stream (streaming);
 *   later a result marked `decodes` moves a drafting session to streaming, and a chunk marked
 *   `speculate` a streaming one back to drafting (the scheduler revisits each session's mode)
 *
 * The whole behaviour is one pure transition, `reduceEdgeSession(context, event) → {context,
 * effects}` (as machines/scheduler.ts has reduceScheduler): the XState machine below runs it
 * for the live device, and the simulator (sim/engine.ts) runs it directly on simulated time —
 * one session logic for both. Effects are what the adapter must do: send a message, emit
 * tokens, let the controller learn, draft a round, (re)arm or clear the reply timer. No I/O
 * here; every event that carries a time carries it (`atMs`), stamped by the adapter.
 */
import { enqueueActions, fromPromise, setup } from 'xstate';
import type { ErrorCode, ErrorMessage, RequestedMode, TokenStream, VerifyResult } from '../protocol/messages.ts';
import type { SparseDist } from '../inference/types.ts';
import type { DraftTokenFeatures } from '../policies/types.ts';

export type { DraftTokenFeatures };

/** What one drafting step produced. */
export interface DraftOutput {
  tokens: number[];
  predictedAcceptance: number[];
  features: DraftTokenFeatures[];
  /** Present when sampling: the renormalised top-k each token was sampled from. */
  dists?: SparseDist[];
  /** Device time spent drafting each token, ms (emulated profile time included). */
  draftMsPerToken: number[];
  /** Time spent on a token drafted and then dropped by the controller, ms. */
  discardedDraftMs?: number;
}

export interface DraftInput {
  sessionId: string;
  /** Prompt + generated tokens so far. */
  context: number[];
  /** Most tokens worth drafting this round (remaining budget − 1, capped by K_max). */
  maxDraft: number;
  round: number;
}

export interface EdgeSessionInput {
  sessionId: string;
  deviceId: string;
  requestId: string;
  /** `adaptive` until the server's first answer says which: a round-0 result (speculate) or a stream (it decodes). */
  mode: RequestedMode;
  promptTokens: number[];
  maxNewTokens: number;
  eosTokenId: number | null;
  verifyTimeoutMs: number;
  maxRetries: number;
  kMax: number;
  startedAtMs: number;
}

export interface SessionCounters {
  rounds: number;
  drafted: number;
  accepted: number;
  /** Drafted tokens thrown away: rejected, after a rejection, or truncated unverified. */
  wastedDraftTokens: number;
  wastedDraftMs: number;
  draftMs: number;
  queueMs: number;
  verifyMs: number;
  draftedByPosition: number[];
  acceptedByPosition: number[];
  /** Tokens the server decoded for it (stream chunks), and how often the scheduler switched its mode. */
  decodedTokens: number;
  modeSwitches: number;
}

/** Where a session is: waiting for its first token, relaying a stream, drafting, waiting for a verdict, or over. */
export type EdgePhase = 'opening' | 'streaming' | 'drafting' | 'awaiting' | 'done' | 'failed' | 'cancelled';

export interface EdgeSessionContext extends EdgeSessionInput {
  phase: EdgePhase;
  generated: number[];
  round: number;
  attempt: number;
  draft: DraftOutput | null;
  firstTokenAtMs: number | null;
  lastTokenAtMs: number | null;
  /** Next expected TokenStream sequence number (centralized mode). */
  streamSeq: number;
  /** How many generated tokens were already handed to emitTokens. */
  emitted: number;
  counters: SessionCounters;
  error: { code: ErrorCode; message: string } | null;
}

export type EdgeSessionEvent =
  | { type: 'RESULT'; result: VerifyResult; atMs: number }
  | { type: 'STREAM'; chunk: TokenStream; atMs: number }
  | { type: 'ERROR'; error: ErrorMessage; atMs: number }
  /** The draft of the current round is ready (the adapter drafted it). */
  | { type: 'DRAFTED'; draft: DraftOutput; atMs: number }
  | { type: 'DRAFT_FAILED'; message: string; atMs: number }
  /** The reply timer armed by the last `timer` effect fired. */
  | { type: 'TIMEOUT' }
  | { type: 'CANCEL' };

/** What a transition asks the adapter to do, in order. */
export type EdgeSessionEffect =
  | { kind: 'sendOpen'; sessionId: string; attempt: number }
  | { kind: 'sendVerify'; params: SendVerifyParams }
  | { kind: 'sendClose'; sessionId: string; reason: 'done' | 'failed' | 'cancelled' }
  | { kind: 'emitTokens'; tokens: number[] }
  | { kind: 'roundVerified'; draft: DraftOutput; result: VerifyResult }
  /** Draft round `round`, at most `maxDraft` tokens, on the session's context (draftInputOf). */
  | { kind: 'draft'; round: number; maxDraft: number }
  /** Stop drafting the round in progress (the session ended while it drafted). */
  | { kind: 'cancelDraft'; round: number }
  /** (Re)arm the reply timer: TIMEOUT after `ms` unless armed again or cleared first. */
  | { kind: 'timer'; ms: number }
  | { kind: 'clearTimer' };

/** Parameters of the provided actions (what the adapter must send). */
export interface SendVerifyParams {
  sessionId: string;
  round: number;
  committedLength: number;
  draft: DraftOutput;
  attempt: number;
  /** A stalled server-decoded stream: decode on from `committedLength` (the draft is empty). */
  resume?: true;
}

const NO_DRAFT: DraftOutput = { tokens: [], predictedAcceptance: [], features: [], draftMsPerToken: [] };

/** Whether a stream chunk holds tokens past this device's committed text (and none beyond a gap). */
function extendsCommitted(ctx: EdgeSessionContext, chunk: TokenStream): boolean {
  const have = ctx.promptTokens.length + ctx.generated.length;
  return chunk.committedLength - chunk.tokens.length <= have && have < chunk.committedLength;
}

const notProvided = (name: string) => () => {
  throw new Error(`EdgeSession: ${name} was not provided by the adapter`);
};

function emptyCounters(): SessionCounters {
  return {
    rounds: 0,
    drafted: 0,
    accepted: 0,
    wastedDraftTokens: 0,
    wastedDraftMs: 0,
    draftMs: 0,
    queueMs: 0,
    verifyMs: 0,
    draftedByPosition: [],
    acceptedByPosition: [],
    decodedTokens: 0,
    modeSwitches: 0,
  };
}

/** A session's context before anything happened (the machine's, and the simulator's device model). */
export function initialEdgeSessionContext(input: EdgeSessionInput): EdgeSessionContext {
  return {
    ...input,
    phase: 'opening',
    generated: [],
    round: 0,
    attempt: 0,
    draft: null,
    firstTokenAtMs: null,
    lastTokenAtMs: null,
    streamSeq: 0,
    emitted: 0,
    counters: emptyCounters(),
    error: null,
  };
}

/** Appends tokens, stopping after EOS or at the token budget; returns what was kept. */
export function commitTokens(ctx: Pick<EdgeSessionContext, 'generated' | 'maxNewTokens' | 'eosTokenId'>, tokens: number[]): number[] {
  const kept: number[] = [];
  for (const t of tokens) {
    if (ctx.generated.length + kept.length >= ctx.maxNewTokens) break;
    kept.push(t);
    if (ctx.eosTokenId !== null && t === ctx.eosTokenId) break;
  }
  return kept;
}

export function isFinished(ctx: Pick<EdgeSessionContext, 'generated' | 'maxNewTokens' | 'eosTokenId'>): boolean {
  const last = ctx.generated[ctx.generated.length - 1];
  return ctx.generated.length >= ctx.maxNewTokens || (ctx.eosTokenId !== null && last === ctx.eosTokenId);
}

function addAt(arr: number[], i: number, by: number): number[] {
  const out = arr.slice();
  while (out.length <= i) out.push(0);
  out[i] += by;
  return out;
}

/** Folds one verify result into the counters (drafted/accepted/wasted, per position). */
export function countRound(c: SessionCounters, draft: DraftOutput, result: VerifyResult): SessionCounters {
  const drafted = draft.tokens.length;
  const verified = Math.min(result.verified, drafted);
  const accepted = Math.min(result.accepted, verified);
  let draftedByPosition = c.draftedByPosition;
  let acceptedByPosition = c.acceptedByPosition;
  for (let i = 0; i < verified; i++) {
    draftedByPosition = addAt(draftedByPosition, i, 1);
    if (i < accepted) acceptedByPosition = addAt(acceptedByPosition, i, 1);
  }
  let wastedMs = draft.discardedDraftMs ?? 0;
  for (let i = accepted; i < drafted; i++) wastedMs += draft.draftMsPerToken[i] ?? 0;
  return {
    rounds: c.rounds + 1,
    drafted: c.drafted + drafted,
    accepted: c.accepted + accepted,
    wastedDraftTokens: c.wastedDraftTokens + (drafted - accepted),
    wastedDraftMs: c.wastedDraftMs + wastedMs,
    draftMs: c.draftMs + draft.draftMsPerToken.reduce((a, b) => a + b, 0) + (draft.discardedDraftMs ?? 0),
    queueMs: c.queueMs + result.queueMs,
    verifyMs: c.verifyMs + result.verifyMs,
    draftedByPosition,
    acceptedByPosition,
    decodedTokens: c.decodedTokens,
    modeSwitches: c.modeSwitches,
  };
}

/** Whether a phase is one a session never leaves. */
export function isFinalPhase(phase: EdgePhase): boolean {
  return phase === 'done' || phase === 'failed' || phase === 'cancelled';
}

/** The first transition: a new session sends its open and waits for the answer. */
export function startEdgeSession(input: EdgeSessionInput): { context: EdgeSessionContext; effects: EdgeSessionEffect[] } {
  const context = initialEdgeSessionContext(input);
  return { context, effects: [{ kind: 'sendOpen', sessionId: context.sessionId, attempt: 0 }, { kind: 'timer', ms: context.verifyTimeoutMs }] };
}

/** Tokens committed since the last emission, as an effect (none when there are none). */
function flush(ctx: EdgeSessionContext, effects: EdgeSessionEffect[]): void {
  if (ctx.generated.length === ctx.emitted) return;
  effects.push({ kind: 'emitTokens', tokens: ctx.generated.slice(ctx.emitted) });
  ctx.emitted = ctx.generated.length;
}

function end(ctx: EdgeSessionContext, phase: 'done' | 'failed' | 'cancelled', effects: EdgeSessionEffect[], error: EdgeSessionContext['error'] = ctx.error): void {
  if (ctx.phase === 'drafting') effects.push({ kind: 'cancelDraft', round: ctx.round });
  effects.push({ kind: 'clearTimer' }, { kind: 'sendClose', sessionId: ctx.sessionId, reason: phase });
  ctx.phase = phase;
  ctx.error = error;
}

/** The draft input of the session's current round: its whole context and how far it may draft. */
export function draftInputOf(ctx: EdgeSessionContext): DraftInput {
  return { sessionId: ctx.sessionId, context: [...ctx.promptTokens, ...ctx.generated], maxDraft: maxDraftOf(ctx), round: ctx.round };
}

/**
 * Why a session that finished without error stopped: an EOS token, its requested budget, or the
 * model's context when the budget was clipped to it (`requestedMaxNewTokens` above the session's).
 */
export function stopReasonOf(ctx: Pick<EdgeSessionContext, 'generated' | 'maxNewTokens' | 'eosTokenId'>, requestedMaxNewTokens: number): 'eos' | 'length' | 'context' {
  const last = ctx.generated[ctx.generated.length - 1];
  if (ctx.eosTokenId !== null && last === ctx.eosTokenId) return 'eos';
  return ctx.maxNewTokens < requestedMaxNewTokens && ctx.generated.length >= ctx.maxNewTokens ? 'context' : 'length';
}

/** Most tokens worth drafting now: the remaining budget − 1 (the target adds one), capped by K_max. */
export function maxDraftOf(ctx: Pick<EdgeSessionContext, 'kMax' | 'maxNewTokens' | 'generated'>): number {
  return Math.max(0, Math.min(ctx.kMax, ctx.maxNewTokens - ctx.generated.length - 1));
}

/** After tokens were committed: finished, relay the stream, or draft the next round. */
function decide(ctx: EdgeSessionContext, effects: EdgeSessionEffect[]): void {
  if (isFinished(ctx)) return end(ctx, 'done', effects);
  if (ctx.mode === 'centralized') {
    effects.push({ kind: 'timer', ms: ctx.verifyTimeoutMs });
    ctx.phase = 'streaming';
    return;
  }
  ctx.phase = 'drafting';
  ctx.round += 1;
  ctx.attempt = 0;
  ctx.draft = null;
  effects.push({ kind: 'clearTimer' }, { kind: 'draft', round: ctx.round, maxDraft: maxDraftOf(ctx) });
}

function sendVerify(ctx: EdgeSessionContext, effects: EdgeSessionEffect[]): void {
  effects.push(
    {
      kind: 'sendVerify',
      params: { sessionId: ctx.sessionId, round: ctx.round, committedLength: ctx.promptTokens.length + ctx.generated.length, draft: ctx.draft!, attempt: ctx.attempt },
    },
    { kind: 'timer', ms: ctx.verifyTimeoutMs },
  );
}

function commit(ctx: EdgeSessionContext, tokens: number[]): void {
  for (const t of commitTokens(ctx, tokens)) ctx.generated.push(t);
}

/**
 * The whole transition function of a session: event → (new context, effects). Pure.
 * - opening: a round-0 result commits the first target token; a first stream chunk starts
 *   relaying; the timer resends the open, then fails the session.
 * - drafting → awaiting when the draft is ready (the verification is sent).
 * - awaiting: the current round's result commits the accepted drafts and the target's token;
 *   results of other rounds (duplicates, stale retries) change nothing; the timer resends.
 * - streaming (centralized): chunks by position (only tokens past the committed text count); the
 *   timer asks for the stream again (a resume), then fails.
 * - anywhere: the server's typed error for this session fails it; CANCEL cancels it.
 */
export function reduceEdgeSession(ctx: EdgeSessionContext, event: EdgeSessionEvent): { context: EdgeSessionContext; effects: EdgeSessionEffect[] } {
  if (isFinalPhase(ctx.phase)) return { context: ctx, effects: [] };
  const next: EdgeSessionContext = { ...ctx, generated: [...ctx.generated], counters: { ...ctx.counters } };
  return { context: next, effects: applyEdgeSessionEvent(next, event) };
}

/**
 * The same transition applied in place: mutates `ctx` and returns the effects. For a caller
 * that owns its context exclusively — the simulator — so it skips the copy reduceEdgeSession
 * makes of the context and its token list on every event.
 */
export function applyEdgeSessionEvent(ctx: EdgeSessionContext, event: EdgeSessionEvent): EdgeSessionEffect[] {
  const effects: EdgeSessionEffect[] = [];
  if (isFinalPhase(ctx.phase)) return effects;
  switch (event.type) {
    case 'CANCEL':
      end(ctx, 'cancelled', effects);
      break;
    case 'ERROR':
      if (event.error.sessionId === undefined || event.error.sessionId === ctx.sessionId) end(ctx, 'failed', effects, { code: event.error.code, message: event.error.message });
      break;
    case 'RESULT': {
      const r = event.result;
      if (ctx.phase === 'opening' && r.round === 0) {
        if (ctx.mode === 'adaptive') ctx.mode = 'speculative';
        commit(ctx, [r.token]);
        ctx.firstTokenAtMs = event.atMs;
        ctx.lastTokenAtMs = event.atMs;
        ctx.counters = { ...ctx.counters, queueMs: r.queueMs, verifyMs: r.verifyMs };
        flush(ctx, effects);
        decide(ctx, effects);
      } else if (ctx.phase === 'awaiting' && r.round === ctx.round) {
        const draft = ctx.draft!;
        effects.push({ kind: 'roundVerified', draft, result: r });
        const accepted = Math.min(r.accepted, r.verified, draft.tokens.length);
        const fresh = draft.tokens.slice(0, accepted);
        fresh.push(r.token);
        commit(ctx, fresh);
        ctx.lastTokenAtMs = event.atMs;
        ctx.counters = countRound(ctx.counters, draft, r);
        if (r.decodes === true) {
          // The scheduler switched the session to server decoding: its tokens stream from here.
          ctx.mode = 'centralized';
          ctx.streamSeq = r.streamSeq ?? ctx.streamSeq;
          ctx.attempt = 0;
          ctx.counters = { ...ctx.counters, modeSwitches: ctx.counters.modeSwitches + 1 };
        }
        flush(ctx, effects);
        decide(ctx, effects);
      }
      break;
    }
    case 'STREAM':
      if ((ctx.phase === 'opening' || ctx.phase === 'streaming') && extendsCommitted(ctx, event.chunk)) {
        if (ctx.mode === 'adaptive') ctx.mode = 'centralized';
        // The chunk's tokens this device lacks (by position: a resumed stream re-sends some, from
        // a worker whose sequence numbers start again), and the server's queueing and pass time.
        const have = ctx.promptTokens.length + ctx.generated.length;
        commit(ctx, event.chunk.tokens.slice(have - (event.chunk.committedLength - event.chunk.tokens.length)));
        ctx.streamSeq = event.chunk.seq + 1;
        ctx.attempt = 0;
        {
          const c = ctx.counters;
          ctx.counters = { ...c, queueMs: c.queueMs + (event.chunk.queueMs ?? 0), verifyMs: c.verifyMs + (event.chunk.verifyMs ?? 0), decodedTokens: c.decodedTokens + event.chunk.tokens.length };
        }
        ctx.firstTokenAtMs ??= event.atMs;
        ctx.lastTokenAtMs = event.atMs;
        flush(ctx, effects);
        if (event.chunk.speculate === true && !isFinished(ctx)) {
          // The server handed the session back: draft the next round from the committed text.
          ctx.mode = 'speculative';
          ctx.counters = { ...ctx.counters, modeSwitches: ctx.counters.modeSwitches + 1 };
          decide(ctx, effects);
        } else if (isFinished(ctx)) end(ctx, 'done', effects);
        else {
          effects.push({ kind: 'timer', ms: ctx.verifyTimeoutMs });
          ctx.phase = 'streaming';
        }
      }
      break;
    case 'DRAFTED':
      if (ctx.phase === 'drafting') {
        ctx.phase = 'awaiting';
        ctx.draft = event.draft;
        sendVerify(ctx, effects);
      }
      break;
    case 'DRAFT_FAILED':
      if (ctx.phase === 'drafting') end(ctx, 'failed', effects, { code: 'internal', message: `drafting failed: ${event.message}` });
      break;
    case 'TIMEOUT': {
      const retry = ctx.attempt < ctx.maxRetries;
      if (ctx.phase === 'opening') {
        if (retry) {
          ctx.attempt += 1;
          effects.push({ kind: 'sendOpen', sessionId: ctx.sessionId, attempt: ctx.attempt }, { kind: 'timer', ms: ctx.verifyTimeoutMs });
        } else end(ctx, 'failed', effects, { code: 'timeout', message: 'no answer to SessionOpen after all retries' });
      } else if (ctx.phase === 'awaiting') {
        if (retry) {
          // Every retry re-sends the same draft, so a late answer to any of them is still valid.
          ctx.attempt += 1;
          sendVerify(ctx, effects);
        } else end(ctx, 'failed', effects, { code: 'timeout', message: 'no VerifyResult after all retries' });
      } else if (ctx.phase === 'streaming') {
        if (retry) {
          // The stream stalled (its worker died, or a chunk was lost): ask for it from what this
          // device has; the session's worker, or the one that takes it over from the ledger, decodes on.
          ctx.attempt += 1;
          effects.push(
            { kind: 'sendVerify', params: { sessionId: ctx.sessionId, round: ctx.round + 1, committedLength: ctx.promptTokens.length + ctx.generated.length, draft: NO_DRAFT, attempt: ctx.attempt, resume: true } },
            { kind: 'timer', ms: ctx.verifyTimeoutMs },
          );
        } else end(ctx, 'failed', effects, { code: 'timeout', message: 'token stream stalled' });
      }
      break;
    }
  }
  return effects;
}

const DRAFT_CHILD = 'draft';
const REPLY_TIMER = 'reply-timer';

/**
 * The live session: reduceEdgeSession in a machine. Effects become provided actions (sending,
 * emitting, learning), a spawned draft actor (its done/error events come back as DRAFTED /
 * DRAFT_FAILED) and a delayed TIMEOUT event on the actor's clock. The machine reaches its final
 * state when the session's phase is final.
 */
export const edgeSessionMachine = setup({
  types: {
    context: {} as EdgeSessionContext,
    events: {} as EdgeSessionEvent,
    input: {} as EdgeSessionInput,
  },
  actions: {
    sendOpen: notProvided('sendOpen') as (args: unknown, params: { sessionId: string; attempt: number }) => void,
    sendVerify: notProvided('sendVerify') as (args: unknown, params: SendVerifyParams) => void,
    sendClose: notProvided('sendClose') as (args: unknown, params: { sessionId: string; reason: 'done' | 'failed' | 'cancelled' }) => void,
    /** New tokens for the client. */
    emitTokens: notProvided('emitTokens') as (args: unknown, params: { tokens: number[] }) => void,
    /** A verified round, for the speculation controller to learn from. */
    roundVerified: notProvided('roundVerified') as (args: unknown, params: { draft: DraftOutput; result: VerifyResult }) => void,
  },
  actors: {
    draft: fromPromise<DraftOutput, DraftInput>(async () => {
      throw new Error('EdgeSession: draft actor was not provided by the adapter');
    }),
  },
}).createMachine({
  id: 'edgeSession',
  context: ({ input }) => initialEdgeSessionContext(input),
  initial: 'running',
  states: {
    running: {
      entry: enqueueActions(({ context, enqueue }) => {
        const { effects } = startEdgeSession(context);
        for (const e of effects) runEffect(e, context, enqueue);
      }),
      always: { guard: ({ context }) => isFinalPhase(context.phase), target: 'ended' },
      on: {
        '*': {
          actions: enqueueActions(({ context, event, enqueue }) => {
            const e = fromMachineEvent(event as EdgeSessionEvent | { type: string; output?: unknown; error?: unknown }, context);
            if (!e) return;
            const { context: next, effects } = reduceEdgeSession(context, e);
            enqueue.assign(() => next);
            for (const effect of effects) runEffect(effect, next, enqueue);
          }),
        },
      },
    },
    ended: { type: 'final' },
  },
});

/** The session event a machine event stands for (the draft child's completion included). */
function fromMachineEvent(event: EdgeSessionEvent | { type: string; output?: unknown; error?: unknown }, ctx: EdgeSessionContext): EdgeSessionEvent | null {
  if (event.type === `xstate.done.actor.${DRAFT_CHILD}-${ctx.round}`) return { type: 'DRAFTED', draft: (event as { output: DraftOutput }).output, atMs: ctx.lastTokenAtMs ?? ctx.startedAtMs };
  if (event.type === `xstate.error.actor.${DRAFT_CHILD}-${ctx.round}`) {
    const err = (event as { error?: unknown }).error;
    return { type: 'DRAFT_FAILED', message: String((err as Error)?.message ?? err), atMs: ctx.lastTokenAtMs ?? ctx.startedAtMs };
  }
  if (event.type.startsWith('xstate.')) return null; // a stale draft child, or XState's own events
  return event as EdgeSessionEvent;
}

// The enqueue object of enqueueActions, as far as runEffect uses it.
type Enqueue = {
  (action: { type: 'sendOpen'; params: { sessionId: string; attempt: number } } | { type: 'sendVerify'; params: SendVerifyParams } | { type: 'sendClose'; params: { sessionId: string; reason: 'done' | 'failed' | 'cancelled' } } | { type: 'emitTokens'; params: { tokens: number[] } } | { type: 'roundVerified'; params: { draft: DraftOutput; result: VerifyResult } }): void;
  raise: (event: EdgeSessionEvent, options: { id: string; delay: number }) => void;
  cancel: (id: string) => void;
  spawnChild: (src: 'draft', options: { id: string; input: DraftInput }) => void;
  stopChild: (id: string) => void;
};

function runEffect(e: EdgeSessionEffect, ctx: EdgeSessionContext, enqueueAny: unknown): void {
  const enqueue = enqueueAny as Enqueue;
  switch (e.kind) {
    case 'sendOpen':
      enqueue({ type: 'sendOpen', params: { sessionId: e.sessionId, attempt: e.attempt } });
      break;
    case 'sendVerify':
      enqueue({ type: 'sendVerify', params: e.params });
      break;
    case 'sendClose':
      enqueue({ type: 'sendClose', params: { sessionId: e.sessionId, reason: e.reason } });
      break;
    case 'emitTokens':
      enqueue({ type: 'emitTokens', params: { tokens: e.tokens } });
      break;
    case 'roundVerified':
      enqueue({ type: 'roundVerified', params: { draft: e.draft, result: e.result } });
      break;
    case 'draft':
      enqueue.spawnChild('draft', { id: `${DRAFT_CHILD}-${e.round}`, input: draftInputOf(ctx) });
      break;
    case 'cancelDraft':
      enqueue.stopChild(`${DRAFT_CHILD}-${e.round}`);
      break;
    case 'timer':
      enqueue.cancel(REPLY_TIMER);
      if (Number.isFinite(e.ms)) enqueue.raise({ type: 'TIMEOUT' }, { id: REPLY_TIMER, delay: e.ms });
      break;
    case 'clearTimer':
      enqueue.cancel(REPLY_TIMER);
      break;
  }
}
