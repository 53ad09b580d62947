import { expect } from 'chai';
import { SimulatedClock, createActor, fromPromise } from 'xstate';
import { PROTOCOL_VERSION, TokenChunkSchema, type VerifyResult } from '../../protocol/messages.ts';
import { edgeSessionMachine, stopReasonOf, type DraftInput, type DraftOutput, type EdgeSessionInput } from '../../machines/edge-session.ts';

const baseInput: EdgeSessionInput = {
  sessionId: 's1',
  deviceId: 'd1',
  requestId: 'r1',
  mode: 'speculative',
  promptTokens: [5, 6, 7],
  maxNewTokens: 6,
  eosTokenId: 0,
  verifyTimeoutMs: 100,
  maxRetries: 2,
  kMax: 3,
  startedAtMs: 0,
};

function result(round: number, accepted: number, token: number, verified = accepted, committedLength = 0): VerifyResult {
  return { v: PROTOCOL_VERSION, type: 'result', sessionId: 's1', round, accepted, token, verified, committedLength: Math.max(1, committedLength), queueMs: 1, verifyMs: 2, batchSize: 1, workerId: 'w1' };
}

/** Drafts tokens 100, 101, … (maxDraft of them) and records every call. */
function harness(input: Partial<EdgeSessionInput> = {}) {
  const clock = new SimulatedClock();
  const sent: { kind: string; round?: number; attempt?: number; committedLength?: number; draft?: DraftOutput; reason?: string }[] = [];
  const emitted: number[] = [];
  const learned: number[] = [];
  const drafts: DraftInput[] = [];
  let next = 100;
  const machine = edgeSessionMachine.provide({
    actions: {
      sendOpen: (_, p) => void sent.push({ kind: 'open', attempt: p.attempt }),
      sendVerify: (_, p) => void sent.push({ kind: 'verify', round: p.round, attempt: p.attempt, committedLength: p.committedLength, draft: p.draft }),
      sendClose: (_, p) => void sent.push({ kind: 'close', reason: p.reason }),
      emitTokens: (_, p) => void emitted.push(...p.tokens),
      roundVerified: (_, p) => void learned.push(p.result.accepted),
    },
    actors: {
      draft: fromPromise<DraftOutput, DraftInput>(async ({ input }) => {
        drafts.push(input);
        const tokens = Array.from({ length: input.maxDraft }, () => next++);
        return {
          tokens,
          predictedAcceptance: tokens.map(() => 0.5),
          features: tokens.map((_, i) => ({ top1Prob: 0.5, entropy: 1, margin: 0.1, logitSpread: 1, position: i })),
          draftMsPerToken: tokens.map(() => 10),
        };
      }),
    },
  });
  const actor = createActor(machine, { input: { ...baseInput, ...input }, clock });
  actor.subscribe({ error: (e) => { throw e; } });
  actor.start();
  return { actor, clock, sent, emitted, learned, drafts };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

describe('EdgeSession machine (simulated clock, no broker)', () => {
  it('opens, drafts, applies results and finishes at the token budget', async () => {
    const h = harness();
    expect(h.sent[0]).to.deep.equal({ kind: 'open', attempt: 0 });
    h.actor.send({ type: 'RESULT', result: result(0, 0, 42), atMs: 10 });
    await settle();
    expect(h.drafts[0].context).to.deep.equal([5, 6, 7, 42]);
    expect(h.drafts[0].maxDraft).to.equal(3); // min(kMax 3, 6 − 1 − 1)
    const v1 = h.sent.find((s) => s.kind === 'verify')!;
    expect(v1.round).to.equal(1);
    expect(v1.committedLength).to.equal(4);
    // Target accepts 2 of [100,101,102] and corrects with 55.
    h.actor.send({ type: 'RESULT', result: result(1, 2, 55, 3), atMs: 20 });
    await settle();
    expect(h.actor.getSnapshot().context.generated).to.deep.equal([42, 100, 101, 55]);
    // Round 2 may draft at most 6 − 4 − 1 = 1 token.
    expect(h.drafts[1].maxDraft).to.equal(1);
    h.actor.send({ type: 'RESULT', result: result(2, 1, 77, 1), atMs: 30 });
    await settle();
    const snap = h.actor.getSnapshot();
    expect(snap.context.phase).to.equal('done');
    expect(snap.context.generated).to.deep.equal([42, 100, 101, 55, 103, 77]);
    expect(h.emitted).to.deep.equal([42, 100, 101, 55, 103, 77]);
    expect(h.learned).to.deep.equal([2, 1]);
    expect(snap.context.counters.drafted).to.equal(4);
    expect(snap.context.counters.accepted).to.equal(3);
    expect(snap.context.counters.wastedDraftTokens).to.equal(1);
    expect(snap.context.counters.wastedDraftMs).to.equal(10);
    expect(snap.context.counters.acceptedByPosition).to.deep.equal([2, 1]);
    expect(h.sent[h.sent.length - 1]).to.deep.equal({ kind: 'close', reason: 'done' });
  });

  it('ignores duplicate and stale results by round number', async () => {
    const h = harness();
    h.actor.send({ type: 'RESULT', result: result(0, 0, 42), atMs: 10 });
    await settle();
    h.actor.send({ type: 'RESULT', result: result(0, 0, 43), atMs: 11 }); // duplicate open answer
    h.actor.send({ type: 'RESULT', result: result(5, 3, 44), atMs: 12 }); // a round not asked for
    await settle();
    expect(h.actor.getSnapshot().context.phase).to.equal('awaiting');
    expect(h.actor.getSnapshot().context.generated).to.deep.equal([42]);
    h.actor.send({ type: 'RESULT', result: result(1, 3, 9, 3), atMs: 20 });
    await settle();
    h.actor.send({ type: 'RESULT', result: result(1, 0, 1, 3), atMs: 21 }); // redelivered old round
    await settle();
    expect(h.actor.getSnapshot().context.generated).to.deep.equal([42, 100, 101, 102, 9]);
  });

  it('retries a verification after its timeout, then fails when retries run out', async () => {
    const h = harness();
    h.actor.send({ type: 'RESULT', result: result(0, 0, 42), atMs: 10 });
    await settle();
    h.clock.increment(100);
    h.clock.increment(100);
    const verifies = h.sent.filter((s) => s.kind === 'verify');
    expect(verifies.map((v) => [v.round, v.attempt])).to.deep.equal([[1, 0], [1, 1], [1, 2]]);
    // Every retry re-sends the same draft, so a late answer to any of them is still valid.
    expect(verifies[2].draft!.tokens).to.deep.equal(verifies[0].draft!.tokens);
    h.clock.increment(100);
    expect(h.actor.getSnapshot().context.phase).to.equal('failed');
    expect(h.actor.getSnapshot().context.error?.code).to.equal('timeout');
  });

  it('fails with the typed error the server sent', async () => {
    const h = harness();
    h.actor.send({ type: 'ERROR', error: { v: PROTOCOL_VERSION, type: 'error', code: 'prompt_too_long', message: 'too long', sessionId: 's1' }, atMs: 3 });
    expect(h.actor.getSnapshot().context.phase).to.equal('failed');
    expect(h.actor.getSnapshot().context.error).to.deep.equal({ code: 'prompt_too_long', message: 'too long' });
  });

  it('stops at EOS inside an accepted draft', async () => {
    const h = harness({ maxNewTokens: 20, eosTokenId: 101 });
    h.actor.send({ type: 'RESULT', result: result(0, 0, 42), atMs: 10 });
    await settle();
    // The draft is [100, 101, 102] and 101 is EOS: tokens after it are never committed.
    h.actor.send({ type: 'RESULT', result: result(1, 3, 9, 3), atMs: 20 });
    await settle();
    const snap = h.actor.getSnapshot();
    expect(snap.context.phase).to.equal('done');
    expect(snap.context.generated).to.deep.equal([42, 100, 101]);
  });

  it('relays a centralized token stream by position: duplicates and overlaps add only what is new', async () => {
    const h = harness({ mode: 'centralized', maxNewTokens: 4 });
    // The prompt has 3 tokens; `end` is the committed length once a chunk's tokens are appended.
    const chunk = (seq: number, tokens: number[], end: number) => ({ v: PROTOCOL_VERSION, type: 'stream' as const, sessionId: 's1', seq, tokens, committedLength: end, done: false, workerId: 'w1' });
    h.actor.send({ type: 'STREAM', chunk: chunk(0, [11], 4), atMs: 5 });
    h.actor.send({ type: 'STREAM', chunk: chunk(0, [11], 4), atMs: 6 }); // duplicate
    h.actor.send({ type: 'STREAM', chunk: chunk(3, [13], 6), atMs: 6 }); // past a gap: not yet
    h.actor.send({ type: 'STREAM', chunk: chunk(1, [12], 5), atMs: 7 });
    // A resumed stream (another worker, numbering from 0) re-sends a token the device has.
    h.actor.send({ type: 'STREAM', chunk: chunk(0, [12, 13, 14], 7), atMs: 8 });
    expect(h.actor.getSnapshot().context.phase).to.equal('done');
    expect(h.emitted).to.deep.equal([11, 12, 13, 14]);
    expect(h.drafts).to.have.length(0);
  });
});

describe('stop reasons (every final message says why the answer ended)', () => {
  it('an EOS token, the requested budget, or the context the budget was clipped to', () => {
    expect(stopReasonOf({ generated: [5, 6, 2], maxNewTokens: 8, eosTokenId: 2 }, 8)).to.equal('eos');
    expect(stopReasonOf({ generated: [5, 6, 7], maxNewTokens: 3, eosTokenId: 2 }, 3)).to.equal('length');
    // Asked for 8192, the context left room for 3.
    expect(stopReasonOf({ generated: [5, 6, 7], maxNewTokens: 3, eosTokenId: 2 }, 8_192)).to.equal('context');
    // An EOS inside the clipped budget is still an EOS.
    expect(stopReasonOf({ generated: [5, 2], maxNewTokens: 3, eosTokenId: 2 }, 8_192)).to.equal('eos');
    expect(stopReasonOf({ generated: [5, 6, 7], maxNewTokens: 3, eosTokenId: null }, 3)).to.equal('length');
  });

  it('a last chunk without its stop reason is malformed', () => {
    const chunk = { v: PROTOCOL_VERSION, type: 'chunk', requestId: 'r', sessionId: 's', tokens: [], text: '', done: true } as const;
    expect(TokenChunkSchema.safeParse(chunk).success).to.equal(false);
    expect(TokenChunkSchema.safeParse({ ...chunk, stopReason: 'context', clipped: { maxNewTokens: 3 } }).success).to.equal(true);
    expect(TokenChunkSchema.safeParse({ ...chunk, done: false }).success, 'a middle chunk needs none').to.equal(true);
    expect(TokenChunkSchema.safeParse({ ...chunk, stopReason: 'max_tokens' }).success).to.equal(false);
  });
});
