/**
 * Chunked prefill's pure parts: the per-pass token budget rule (policies/pass-budget.ts), the
 * policies' chunk choices under a budget (policies/batch-*.ts), and the scheduler's bookkeeping
 * of a prompt fed over several passes (machines/scheduler.ts).
 */
import { expect } from 'chai';
import { createActor } from 'xstate';
import { schedulerMachine, type SchedulerSettings } from '../../machines/scheduler.ts';
import type { BatchPolicyState } from '../../policies/batch-common.ts';
import { MIN_CHUNK_TOKENS } from '../../policies/batch-common.ts';
import { selectBatch } from '../../policies/batch.ts';
import { createEstimatorState } from '../../policies/estimator.ts';
import { CURVE_TOKENS, MAX_PASS_TOKENS, MIN_PASS_TOKENS, passTokenBudget } from '../../policies/pass-budget.ts';
import type { PendingRequest, PolicyName } from '../../policies/types.ts';
import { PROTOCOL_VERSION, type SessionOpen, type VerifyBatch, type WorkerStatus } from '../../protocol/messages.ts';

/** A pass-time curve: flat at 30 ms up to 128 tokens, then 0.25 ms per token more. */
const CURVE = CURVE_TOKENS.map((t) => 30 + 0.25 * Math.max(0, t - 128));

describe('policies/pass-budget: one budget rule for every policy', () => {
  it('is the largest pass within the TPOT SLO on the worker’s curve, a multiple of 16', () => {
    // 30 + 0.25 (T − 128) ≤ 100 → T ≤ 408 → 400.
    expect(passTokenBudget(CURVE, 100)).to.equal(400);
    // ≤ 50 → T ≤ 208 → 208.
    expect(passTokenBudget(CURVE, 50)).to.equal(208);
  });

  it('never goes below the knee of the curve (a smaller pass costs the same), nor outside [16, 8192]', () => {
    // An SLO no pass meets: the knee, the largest T within 1.1 × a 16-token pass (≤ 33 ms: T ≤ 140, so 128 on the 16-token grid).
    expect(passTokenBudget(CURVE, 5)).to.equal(128);
    expect(passTokenBudget(CURVE.map(() => 1), 5)).to.equal(MAX_PASS_TOKENS);
    expect(passTokenBudget(CURVE.map((_, i) => 10 * 2 ** i), 5)).to.equal(MIN_PASS_TOKENS);
  });

  it('grows, when prompts would miss their TTFT, to the smallest budget that feeds them in time', () => {
    const load = (tokensLeft: number, inMs: number) => ({ otherTokens: 100, prompts: [{ tokensLeft, deadlineMs: 5_000 + inMs }], nowMs: 5_000 });
    // At the rule's 208: 108 prompt tokens a pass, 50 ms a pass, 20 passes in 1 s: 2,160 ≥ 2,000.
    expect(passTokenBudget(CURVE, 50, 0, load(2_000, 1_000))).to.equal(208);
    // 3,000 tokens: 384 feeds 284 × 10 passes (94 ms each) = 2,840, short; 400 feeds 300 × 10 (98 ms) = 3,000.
    expect(passTokenBudget(CURVE, 50, 0, load(3_000, 1_000))).to.equal(400);
    // A prompt out of time even in one pass, or one no budget can feed in time, leaves the rule's budget.
    expect(passTokenBudget(CURVE, 50, 0, load(3_000, 20))).to.equal(208);
    expect(passTokenBudget(CURVE, 50, 0, load(100_000, 1_000))).to.equal(208);
    // A fixed budget is fixed, whatever the load.
    expect(passTokenBudget(CURVE, 50, 64, load(3_000, 1_000))).to.equal(64);
  });

  it('a configured budget replaces the rule', () => {
    expect(passTokenBudget(CURVE, 100, 64)).to.equal(64);
  });

  it('falls back on the estimator when a worker reports no curve', () => {
    // 10 ms + 1 ms per token (the padded family's B·n term): ≤ 100 ms → T ≤ 90 → 80; ≤ 50 → 32.
    const est = createEstimatorState({ verify: { theta: [10, 0, 576, 0, 0, 0], floorMs: 0 }, prefill: { theta: [10, 32768, 0], floorMs: 0 } });
    expect(passTokenBudget(est, 100)).to.equal(80);
    expect(passTokenBudget(est, 50)).to.equal(32);
  });
});

/** 10 ms + 1 ms per padded token; prompts alike. */
const EST = createEstimatorState({ verify: { theta: [10, 0, 576, 0, 0, 0], floorMs: 0 }, prefill: { theta: [10, 32768, 0], floorMs: 0 } });
const verify = (id: string, drafts: number, deadlineMs: number, arrivalMs = 0): PendingRequest => ({
  requestId: `${id}:1`,
  sessionId: id,
  kind: 'verify',
  round: 1,
  n: drafts + 1,
  contextLength: 100,
  predictedAcceptance: new Array<number>(drafts).fill(0.8),
  arrivalMs,
  deadlineMs,
});
const prompt = (id: string, n: number, deadlineMs: number, arrivalMs = 0, contextLength = 0): PendingRequest => ({
  requestId: `${id}:0`,
  sessionId: id,
  kind: 'prefill',
  round: 0,
  n,
  contextLength,
  predictedAcceptance: [],
  arrivalMs,
  deadlineMs,
});
const state = (pending: PendingRequest[], over: Partial<BatchPolicyState> = {}): BatchPolicyState => ({
  pending,
  estimator: EST,
  bMax: 8,
  waitMs: 0,
  maxBatchTokens: 1000,
  ageBoundMs: 10_000,
  truncation: false,
  chunkedPrefill: true,
  passTokenBudget: 40,
  ...over,
});
const tokensOf = (d: ReturnType<typeof selectBatch>) => d.members.reduce((a, m) => a + (m.prefillTokens ?? 0) + m.verifyTokens + (m.prefillTokens === undefined ? 1 : 0), 0);

describe('policies: prompt chunks under the pass token budget', () => {
  it('wisp: a chunk joins a verification and fills what the budget leaves', () => {
    const d = selectBatch('wisp', state([verify('a', 2, 5_000, 1), prompt('b', 100, 5_000)]), 10);
    expect(d.members).to.deep.equal([
      { requestId: 'a:1', verifyTokens: 2 },
      { requestId: 'b:0', verifyTokens: 0, prefillTokens: 40 - 3 },
    ]);
    expect(tokensOf(d)).to.equal(40);
  });

  it('sled and centralized take the oldest first, the prompt cut to the budget', () => {
    for (const policy of ['sled', 'centralized'] as PolicyName[]) {
      const d = selectBatch(policy, state([verify('a', 2, 5_000, 1), prompt('b', 100, 5_000)]), 10);
      expect(d.members[0], policy).to.deep.equal({ requestId: 'b:0', verifyTokens: 0, prefillTokens: 40 });
      // The verification still joins: the budget bounds prompt chunks, not verified drafts.
      expect(d.members.slice(1), policy).to.deep.equal([{ requestId: 'a:1', verifyTokens: 2 }]);
    }
  });

  it('verifications are capped as without chunking, never by the budget; a chunk joins only where the budget has room', () => {
    const many = Array.from({ length: 6 }, (_, i) => verify(`v${i}`, 9, 5_000, i));
    for (const policy of ['wisp', 'sled'] as PolicyName[]) {
      // 6 × 10 = 60 verified tokens > the 40-token budget: all of them run, and no chunk fits beside them.
      const d = selectBatch(policy, state([...many, prompt('p', 100, 5_000, 10)]), 10);
      expect(d.members.filter((m) => m.prefillTokens === undefined).map((m) => m.verifyTokens), policy).to.deep.equal([9, 9, 9, 9, 9, 9]);
      expect(d.members.some((m) => m.prefillTokens !== undefined), policy).to.equal(false);
      // Without chunking the same cap applies: the batch cap, here 50 tokens.
      const capped = selectBatch(policy, state(many, { maxBatchTokens: 50 }), 10);
      expect(tokensOf(capped), policy).to.equal(50);
    }
  });

  it('decode tokens sharing the pass come off the budget first (vLLM’s rule); a minimal chunk still runs', () => {
    for (const policy of ['wisp', 'sled', 'centralized'] as PolicyName[]) {
      expect(selectBatch(policy, state([prompt('b', 100, 5_000)], { decodeTokens: 20 }), 10).members, policy).to.deep.equal([{ requestId: 'b:0', verifyTokens: 0, prefillTokens: 20 }]);
      // Decodes take all of it: the prompt still advances by the smallest chunk.
      expect(selectBatch(policy, state([prompt('b', 100, 5_000)], { decodeTokens: 39 }), 10).members, policy).to.deep.equal([{ requestId: 'b:0', verifyTokens: 0, prefillTokens: MIN_CHUNK_TOKENS }]);
    }
  });

  it('a prompt shorter than what is left goes whole, with a chunk size equal to its rest', () => {
    const d = selectBatch('sled', state([prompt('b', 12, 5_000, 0, 48)]), 10);
    expect(d.members).to.deep.equal([{ requestId: 'b:0', verifyTokens: 0, prefillTokens: 12 }]);
  });

  it('without chunked prefill a prompt runs whole and alone', () => {
    for (const policy of ['sled', 'centralized'] as PolicyName[]) {
      const d = selectBatch(policy, state([verify('a', 2, 5_000, 1), prompt('b', 100, 5_000)], { chunkedPrefill: false }), 10);
      expect(d.members, policy).to.deep.equal([{ requestId: 'b:0', verifyTokens: 0 }]);
    }
    const w = selectBatch('wisp', state([verify('a', 2, 5_000, 1), prompt('b', 100, 5_000)], { chunkedPrefill: false }), 10);
    expect(w.members.every((m) => m.prefillTokens === undefined)).to.equal(true);
    expect(w.members.map((m) => m.requestId)).to.have.length(1);
  });
});

describe('scheduler: a prompt fed over several passes', () => {
  const settings: SchedulerSettings = {
    policy: 'sled',
    bMax: 4,
    waitMs: 0,
    maxBatchTokens: 512,
    ageBoundMs: 1_000,
    truncation: false,
    defaultSlo: { ttftMs: 1_000, tpotMs: 100 },
    defaultReturnLatencyMs: 0,
    chunkedPrefill: true,
    passTokenBudget: 16,
  };
  const worker = (workerId: string, extra: Partial<WorkerStatus> = {}): WorkerStatus => ({
    v: PROTOCOL_VERSION,
    type: 'worker',
    workerId,
    model: 'm',
    vocabSize: 100,
    maxPositions: 512,
    state: 'ready',
    sessions: 0,
    kvBytes: 0,
    incarnation: 'i1',
    sentAtMs: 0,
    ...extra,
  });
  const open = (sessionId: string, length: number): SessionOpen => ({
    v: PROTOCOL_VERSION,
    type: 'open',
    sessionId,
    deviceId: 'd1',
    requestId: `r-${sessionId}`,
    draftModel: 'draft-1',
    mode: 'speculative',
    promptTokens: Array.from({ length }, (_, i) => 1 + (i % 90)),
    maxNewTokens: 8,
    slo: { ttftMs: 1_000, tpotMs: 100 },
    sampling: { temperature: 0, topP: 1, seed: 0 },
    replyTo: 'wisp.device.d1',
    sentAtMs: 0,
  });
  function harness(over: Partial<SchedulerSettings> = {}) {
    const batches: VerifyBatch[] = [];
    const actor = createActor(
      schedulerMachine.provide({ actions: { dispatchBatch: (_, p) => void batches.push(p.batch), refuseRequest: () => {}, persistEstimator: () => {}, forgetSession: () => {}, countIgnored: () => {}, scheduleWake: () => {} } }),
      { input: { ...settings, ...over } },
    );
    actor.start();
    return { actor, batches, ctx: () => actor.getSnapshot().context };
  }

  it('feeds the chunks in order, keeps the rest pending, and counts the first token only at the last chunk', () => {
    const h = harness();
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'OPEN', message: open('s1', 40), atMs: 1 });
    const chunks: { start: number; end: number }[] = [];
    for (let t = 2; h.batches.length > chunks.length; t++) {
      const b = h.batches[chunks.length];
      expect(b.items).to.have.length(1);
      chunks.push(b.items[0].chunk!);
      const last = b.items[0].chunk!.end === 40;
      if (!last) {
        const rest = h.ctx().pending.w1.find((p) => p.request.sessionId === 's1')!;
        expect(rest.request.contextLength, 'the rest starts where this chunk ends').to.equal(b.items[0].chunk!.end);
        expect(rest.request.n).to.equal(40 - b.items[0].chunk!.end);
      }
      h.actor.send({ type: 'WORKER_STATUS', message: worker('w1', { doneBatchId: b.batchId }), atMs: t });
      expect(h.ctx().sessions.s1.firstTokenAtMs, `after the chunk ending at ${b.items[0].chunk!.end}`).to.equal(last ? t : null);
    }
    expect(chunks).to.deep.equal([
      { start: 0, end: 16 },
      { start: 16, end: 32 },
      { start: 32, end: 40 },
    ]);
    expect(h.ctx().pending.w1 ?? []).to.deep.equal([]);
    // Each batch says whether more of the prompt follows (a decoding worker waits for it).
    expect(h.batches.map((b) => b.followUp === true)).to.deep.equal([true, true, false]);
  });

  it('a prompt half prefilled on a lost worker starts over from token 0 on the next', () => {
    const h = harness();
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'OPEN', message: open('s1', 40), atMs: 1 });
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1', { doneBatchId: h.batches[0].batchId }), atMs: 2 });
    expect(h.batches[1].items[0].chunk).to.deep.equal({ start: 16, end: 32 });
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w2'), atMs: 3 });
    h.actor.send({ type: 'WORKER_LOST', workerId: 'w1', atMs: 4 });
    expect(h.ctx().sessions.s1.workerId).to.equal('w2');
    const onW2 = h.batches.filter((b) => b.workerId === 'w2');
    expect(onW2).to.have.length(1);
    expect(onW2[0].items[0].chunk).to.deep.equal({ start: 0, end: 16 });
  });

  it('without chunked prefill the prompt goes in one piece, with no chunk field', () => {
    const h = harness({ chunkedPrefill: false });
    h.actor.send({ type: 'WORKER_STATUS', message: worker('w1'), atMs: 0 });
    h.actor.send({ type: 'OPEN', message: open('s1', 40), atMs: 1 });
    expect(h.batches).to.have.length(1);
    expect(h.batches[0].items[0].chunk).to.equal(undefined);
    expect(h.ctx().workers.w1.inflight?.opened).to.deep.equal(['s1']);
    expect(h.ctx().pending.w1 ?? []).to.deep.equal([]);
  });
});
