/**
 * EdgeSession: one user request on one edge device, from open to done.
 *
 *   opening ─(round-0 result: first target token)─▶ deciding ─▶ drafting ─▶ awaiting ─(result)─▶ deciding …
 *      │                                              │                                   └▶ done | failed
 *      └─ centralized mode: streaming (the server decodes; tokens arrive as TokenStream chunks)
 *
 * No I/O here: sending (sendOpen/sendVerify/sendClose), emitting tokens and learning are
 * provided actions; drafting is a provided promise actor. Every event that carries a time
 * carries it (`atMs`), stamped by the adapter, so the simulator can drive the same machine.
 */
import { assign, enqueueActions, fromPromise, setup } from 'xstate';
import type { ErrorCode, ErrorMessage, ServingMode, TokenStream, VerifyResult } from '../protocol/messages.ts';
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
  mode: ServingMode;
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
}

export interface EdgeSessionContext extends EdgeSessionInput {
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
  | { type: 'CANCEL' };

/** Parameters of the provided actions (what the adapter must send). */
export interface SendVerifyParams {
  sessionId: string;
  round: number;
  committedLength: number;
  draft: DraftOutput;
  attempt: number;
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
  };
}

/** A session's context before anything happened (the machine's, and the simulator's device model). */
export function initialEdgeSessionContext(input: EdgeSessionInput): EdgeSessionContext {
  return {
    ...input,
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

function isFinished(ctx: EdgeSessionContext): boolean {
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
  };
}

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
    /** New tokens for the client; `done` on the last call. */
    emitTokens: notProvided('emitTokens') as (args: unknown, params: { tokens: number[] }) => void,
    /** A verified round, for the speculation controller to learn from. */
    roundVerified: notProvided('roundVerified') as (args: unknown, params: { draft: DraftOutput; result: VerifyResult }) => void,
    applyStream: assign(({ context, event }) => {
      if (event.type !== 'STREAM') return {};
      const kept = commitTokens(context, event.chunk.tokens);
      const c = context.counters;
      return {
        generated: [...context.generated, ...kept],
        streamSeq: context.streamSeq + 1,
        attempt: 0,
        // The server's queueing and pass time for this chunk (prefill, then each decode step).
        counters: { ...c, queueMs: c.queueMs + (event.chunk.queueMs ?? 0), verifyMs: c.verifyMs + (event.chunk.verifyMs ?? 0) },
        firstTokenAtMs: context.firstTokenAtMs ?? event.atMs,
        lastTokenAtMs: event.atMs,
      };
    }),
    /** Hands tokens committed since the last flush to emitTokens. */
    flushTokens: enqueueActions(({ context, enqueue }) => {
      const tokens = context.generated.slice(context.emitted);
      if (tokens.length === 0) return;
      enqueue({ type: 'emitTokens', params: { tokens } });
      enqueue.assign({ emitted: context.generated.length });
    }),
  },
  actors: {
    draft: fromPromise<DraftOutput, DraftInput>(async () => {
      throw new Error('EdgeSession: draft actor was not provided by the adapter');
    }),
  },
  delays: {
    verifyTimeout: ({ context }) => context.verifyTimeoutMs,
  },
  guards: {
    isCurrentRound: ({ context, event }) => event.type === 'RESULT' && event.result.round === context.round,
    isOpenResult: ({ event }) => event.type === 'RESULT' && event.result.round === 0,
    canRetry: ({ context }) => context.attempt < context.maxRetries,
    finished: ({ context }) => isFinished(context),
    isNextStreamChunk: ({ context, event }) => event.type === 'STREAM' && event.chunk.seq === context.streamSeq,
    isCentralized: ({ context }) => context.mode === 'centralized',
    errorForThisSession: ({ context, event }) =>
      event.type === 'ERROR' && (event.error.sessionId === undefined || event.error.sessionId === context.sessionId),
  },
}).createMachine({
  id: 'edgeSession',
  context: ({ input }) => initialEdgeSessionContext(input),
  initial: 'opening',
  on: {
    CANCEL: { target: '.cancelled' },
    ERROR: {
      guard: 'errorForThisSession',
      target: '.failed',
      actions: assign({ error: ({ event }) => (event.type === 'ERROR' ? { code: event.error.code, message: event.error.message } : null) }),
    },
  },
  states: {
    opening: {
      entry: { type: 'sendOpen', params: ({ context }) => ({ sessionId: context.sessionId, attempt: context.attempt }) },
      on: {
        RESULT: {
          guard: 'isOpenResult',
          target: 'deciding',
          actions: [
            assign(({ context, event }) => {
              if (event.type !== 'RESULT') return {};
              const kept = commitTokens(context, [event.result.token]);
              return {
                generated: [...context.generated, ...kept],
                firstTokenAtMs: event.atMs,
                lastTokenAtMs: event.atMs,
                counters: { ...context.counters, queueMs: event.result.queueMs, verifyMs: event.result.verifyMs },
              };
            }),
            'flushTokens',
          ],
        },
        STREAM: {
          guard: 'isNextStreamChunk',
          target: 'streaming',
          reenter: true,
          actions: ['applyStream', 'flushTokens'],
        },
      },
      after: {
        verifyTimeout: [
          { guard: 'canRetry', target: 'opening', reenter: true, actions: assign({ attempt: ({ context }) => context.attempt + 1 }) },
          { target: 'failed', actions: assign({ error: () => ({ code: 'timeout' as const, message: 'no answer to SessionOpen after all retries' }) }) },
        ],
      },
    },
    /** Centralized baseline: the server streams every token; the device only relays them. */
    streaming: {
      always: { guard: 'finished', target: 'done' },
      on: {
        STREAM: { guard: 'isNextStreamChunk', target: 'streaming', reenter: true, actions: ['applyStream', 'flushTokens'] },
      },
      after: {
        verifyTimeout: [
          { guard: 'canRetry', target: 'streaming', reenter: true, actions: assign({ attempt: ({ context }) => context.attempt + 1 }) },
          { target: 'failed', actions: assign({ error: () => ({ code: 'timeout' as const, message: 'token stream stalled' }) }) },
        ],
      },
    },
    deciding: {
      always: [
        { guard: 'finished', target: 'done' },
        { guard: 'isCentralized', target: 'streaming' },
        { target: 'drafting', actions: assign({ round: ({ context }) => context.round + 1, attempt: 0, draft: null }) },
      ],
    },
    drafting: {
      invoke: {
        src: 'draft',
        input: ({ context }) => ({
          sessionId: context.sessionId,
          context: [...context.promptTokens, ...context.generated],
          maxDraft: Math.max(0, Math.min(context.kMax, context.maxNewTokens - context.generated.length - 1)),
          round: context.round,
        }),
        onDone: { target: 'awaiting', actions: assign({ draft: ({ event }) => event.output }) },
        onError: {
          target: 'failed',
          actions: assign({ error: ({ event }) => ({ code: 'internal' as const, message: `drafting failed: ${String((event.error as Error)?.message ?? event.error)}` }) }),
        },
      },
    },
    awaiting: {
      entry: {
        type: 'sendVerify',
        params: ({ context }) => ({
          sessionId: context.sessionId,
          round: context.round,
          committedLength: context.promptTokens.length + context.generated.length,
          draft: context.draft!,
          attempt: context.attempt,
        }),
      },
      on: {
        // Results of other rounds (duplicates, stale retries) fall through: no transition.
        RESULT: {
          guard: 'isCurrentRound',
          target: 'deciding',
          actions: [
            { type: 'roundVerified', params: ({ context, event }) => ({ draft: context.draft!, result: (event as { result: VerifyResult }).result }) },
            assign(({ context, event }) => {
              if (event.type !== 'RESULT') return {};
              const draft = context.draft!;
              const r = event.result;
              const accepted = Math.min(r.accepted, r.verified, draft.tokens.length);
              const kept = commitTokens(context, [...draft.tokens.slice(0, accepted), r.token]);
              return {
                generated: [...context.generated, ...kept],
                lastTokenAtMs: event.atMs,
                counters: countRound(context.counters, draft, r),
              };
            }),
            'flushTokens',
          ],
        },
      },
      after: {
        verifyTimeout: [
          { guard: 'canRetry', target: 'awaiting', reenter: true, actions: assign({ attempt: ({ context }) => context.attempt + 1 }) },
          { target: 'failed', actions: assign({ error: () => ({ code: 'timeout' as const, message: 'no VerifyResult after all retries' }) }) },
        ],
      },
    },
    done: {
      type: 'final',
      entry: { type: 'sendClose', params: ({ context }) => ({ sessionId: context.sessionId, reason: 'done' as const }) },
    },
    failed: {
      type: 'final',
      entry: { type: 'sendClose', params: ({ context }) => ({ sessionId: context.sessionId, reason: 'failed' as const }) },
    },
    cancelled: {
      type: 'final',
      entry: { type: 'sendClose', params: ({ context }) => ({ sessionId: context.sessionId, reason: 'cancelled' as const }) },
    },
  },
});
