import { expect } from 'chai';
import { createActor } from 'xstate';
import { applyEdgeSessionEvent, startEdgeSession } from '../../machines/edge-session.ts';
import { schedulerMachine, SWITCHES_PER_PASS, type SchedulerSettings } from '../../machines/scheduler.ts';
import { stepSharesPass } from '../../machines/verifier-worker.ts';
import { createVarlenEstimatorState } from '../../policies/estimator.ts';
import {
  agreementOf,
  calibrate,
  calibrationAt,
  CALIBRATION_FADE_MS,
  chooseServingMode,
  countAgreement,
  currentModeTpots,
  expectedTokensPerRound,
  MODE_SLO_MARGIN,
  NO_AGREEMENT_SEEN,
  pickServingMode,
  PRIOR_AGREEMENT,
  roundOutsideMs,
  SWITCH_EDGE,
  UNCALIBRATED,
  type ServingModeInput,
} from '../../policies/serving-mode.ts';
import { PROTOCOL_VERSION, SessionOpenSchema, type SessionOpen, type VerifyBatch, type WorkerStatus } from '../../protocol/messages.ts';

/** A memory-bound server: 40 ms a pass plus 0.05 ms per token fed (policies/estimator.ts varlenFeatures: 1, tokens, …). */
const ENGINE = createVarlenEstimatorState({ pass: { theta: [40, 0.05 * 256, 0, 0, 0, 0, 0, 0, 0], floorMs: 0 } });

const input = (over: Partial<ServingModeInput> = {}): ServingModeInput => ({
  drafting: { msPerToken: 10, agreement: 0.85, kMax: 8 },
  rttMs: 10,
  tpotMs: 100,
  estimator: ENGINE,
  otherSessions: 0,
  contextTokens: 250,
  promptTokens: 200,
  maxNewTokens: 100,
  ...over,
});

describe('adaptive: how a session is served (policies/serving-mode.ts)', () => {
  it('expects 1 + α + … + α^k tokens from a round of k drafts', () => {
    expect(expectedTokensPerRound(0.5, 0)).to.equal(1);
    expect(expectedTokensPerRound(0.5, 2)).to.be.closeTo(1.75, 1e-12);
    expect(expectedTokensPerRound(0, 5)).to.equal(1);
  });

  it('decodes on the server where a decode pass meets the SLO with its margin', () => {
    const c = chooseServingMode(input());
    expect(c.decodeTpotMs).to.be.closeTo(40.05, 0.01);
    expect(c.mode).to.equal('centralized');
  });

  it('speculates where the decode pass is slower than the SLO allows and a fast drafter meets it', () => {
    const c = chooseServingMode(input({ tpotMs: 38 }));
    // 40 ms a pass > 38; a round of k drafts at 10 ms with 0.85 agreement commits 1 + 0.85 + … tokens.
    expect(c.decodeTpotMs).to.be.greaterThan(38);
    expect(c.speculativeTpotMs).to.be.at.most(MODE_SLO_MARGIN * 38);
    expect(c.mode).to.equal('speculative');
    expect(c.k).to.be.within(2, 8);
  });

  it('a slow drafter decodes even when nothing meets the SLO: the faster mode wins', () => {
    const c = chooseServingMode(input({ tpotMs: 38, drafting: { msPerToken: 50, agreement: 0.7, kMax: 8 } }));
    expect(c.decodeTpotMs).to.be.greaterThan(38);
    expect(c.speculativeTpotMs).to.be.greaterThan(c.decodeTpotMs);
    expect(c.mode).to.equal('centralized');
  });

  it('on a memory-bound server the decode pass grows with the sessions (KV reads) and load moves them to their devices', () => {
    // 40 ms a pass, 0.01 ms per token fed, 0.5 µs per cached token read (varlenFeatures' kvTokens).
    const memoryBound = createVarlenEstimatorState({ pass: { theta: [40, 0.01 * 256, 0, 0, 0, 0, 0.0005 * 65536, 0, 0], floorMs: 0 } });
    const light = chooseServingMode(input({ tpotMs: 80, estimator: memoryBound }));
    const loaded = chooseServingMode(input({ tpotMs: 80, estimator: memoryBound, otherSessions: 300 }));
    expect(light.mode).to.equal('centralized');
    expect(loaded.decodeTpotMs).to.be.greaterThan(80);
    // A verification reads its session's cache once for k + 1 tokens, and only the sessions waiting join a pass.
    expect(loaded.speculativeTpotMs).to.be.lessThan(loaded.decodeTpotMs / 1.5);
    expect(loaded.mode).to.equal('speculative');
  });

  it('refuses a pace, agreement or SLO out of range', () => {
    expect(() => chooseServingMode(input({ tpotMs: 0 }))).to.throw(RangeError);
    expect(() => chooseServingMode(input({ drafting: { msPerToken: 10, agreement: 1, kMax: 8 } }))).to.throw(RangeError);
    expect(() => chooseServingMode(input({ drafting: { msPerToken: -1, agreement: 0.5, kMax: 8 } }))).to.throw(RangeError);
  });

  it('learns the agreement from verified rounds, from its prior', () => {
    expect(agreementOf(NO_AGREEMENT_SEEN)).to.equal(PRIOR_AGREEMENT);
    expect(agreementOf(NO_AGREEMENT_SEEN, 0.9)).to.be.closeTo(0.9, 1e-12);
    let c = countAgreement(NO_AGREEMENT_SEEN, 3, 4); // 3 accepted, then a rejection
    c = countAgreement(c, 4, 4); // all accepted: no rejection seen
    expect(c).to.deep.equal({ accepted: 7, rejected: 1 });
    for (let i = 0; i < 200; i++) c = countAgreement(c, 1, 2);
    expect(agreementOf(c)).to.be.closeTo(0.5, 0.02);
  });
});

describe('adaptive: revisiting a session\'s mode (policies/serving-mode.ts)', () => {
  it('a new or decoded session is decoded within the SLO, and speculates past it only where that is clearly faster', () => {
    for (const current of [undefined, 'centralized'] as const) {
      expect(pickServingMode(100, 10, 100, current)).to.equal('centralized');
      expect(pickServingMode(101, 101 * SWITCH_EDGE - 1, 100, current)).to.equal('speculative');
      // Past the SLO but speculation barely faster: not worth a switch.
      expect(pickServingMode(101, 101 * SWITCH_EDGE + 1, 100, current)).to.equal('centralized');
    }
  });

  it('a speculating session goes to the server when decoding is well within the SLO, or clearly faster than a failing speculation', () => {
    expect(pickServingMode(MODE_SLO_MARGIN * 100, 50, 100, 'speculative')).to.equal('centralized');
    // Between the margin and the SLO nothing moves, whichever way the session is served now.
    expect(pickServingMode(95, 50, 100, 'speculative')).to.equal('speculative');
    expect(pickServingMode(95, 50, 100, 'centralized')).to.equal('centralized');
    expect(pickServingMode(150, 200, 100, 'speculative')).to.equal('centralized');
    expect(pickServingMode(190, 200, 100, 'speculative')).to.equal('speculative');
  });

  it('calibration: an EWMA of observed over predicted, kept in range, fading back to 1 when nothing measures it', () => {
    let c = calibrate(UNCALIBRATED, 'decode', 60, 40, 1_000);
    expect(c.decode).to.be.closeTo(0.9 + 0.1 * 1.5, 1e-12);
    expect(c.speculative).to.equal(1);
    c = calibrate(c, 'speculative', 1_000, 1, 1_000);
    expect(c.speculative).to.be.closeTo(0.9 + 0.1 * 4, 1e-12); // the ratio is capped at 4
    expect(calibrationAt(c, 'decode', 1_000)).to.equal(c.decode);
    expect(calibrationAt(c, 'decode', 1_000 + CALIBRATION_FADE_MS)).to.be.closeTo(1 + (c.decode - 1) / Math.E, 1e-12);
    expect(calibrationAt(c, 'decode', 1_000 + 20 * CALIBRATION_FADE_MS)).to.be.closeTo(1, 1e-6);
    expect(calibrate(c, 'decode', NaN, 40, 2_000)).to.equal(c);
    // A calibrated decode prediction past the SLO sends a session that would decode to its device.
    expect(chooseServingMode(input({ tpotMs: 60 })).mode).to.equal('centralized');
    expect(chooseServingMode(input({ tpotMs: 60 }), { decode: 2, speculative: 1 }).mode).to.equal('speculative');
  });

  it('pipelined drafting: a round away keeps the look-ahead\'s drafts when everything was accepted (α^(k+1))', () => {
    const d = { msPerToken: 20, agreement: 0.8, kMax: 8 };
    expect(roundOutsideMs(d, 4, 10, 30)).to.equal(90);
    // The look-ahead drafts while the round is away (10 + 2 × 30 ms), at most the k tokens the next round needs.
    expect(roundOutsideMs({ ...d, pipelined: true }, 4, 10, 30)).to.be.closeTo(90 - 0.8 ** 5 * 70, 1e-9);
    expect(roundOutsideMs({ ...d, pipelined: true }, 2, 10, 30)).to.be.closeTo(50 - 0.8 ** 3 * 40, 1e-9);
    expect(chooseServingMode(input({ tpotMs: 38, drafting: { ...d, pipelined: true } })).speculativeTpotMs).to.be.lessThan(chooseServingMode(input({ tpotMs: 38, drafting: d })).speculativeTpotMs);
  });

  it('predicts both modes for the worker as it is: decoded rows share the verifications\' passes', () => {
    const pace = { msPerToken: 10, agreement: 0.85, kMax: 8 };
    const allDecoded = currentModeTpots(ENGINE, 10, 10, 250, pace, 10, 4);
    const half = currentModeTpots(ENGINE, 10, 5, 250, pace, 10, 4);
    expect(allDecoded.decodeTpotMs).to.be.closeTo(40 + 0.05 * 10, 1e-9);
    // Five decode rows and the verifications in flight: a longer pass than five rows alone.
    expect(half.decodeTpotMs).to.be.greaterThan(40 + 0.05 * 5);
    expect(half.speculativeTpotMs).to.be.lessThan(half.decodeTpotMs);
  });
});

describe('adaptive: the edge session switches modes when the server says', () => {
  const result = (round: number, over: Record<string, unknown> = {}) => ({ v: PROTOCOL_VERSION, type: 'result' as const, sessionId: 's', round, accepted: 1, token: 9, verified: 2, committedLength: 3, queueMs: 0, verifyMs: 1, batchSize: 1, workerId: 'w', ...over });
  /** `end`: the committed length (prompt of 2 included) once the chunk's tokens are appended. */
  const chunk = (seq: number, end: number, over: Record<string, unknown> = {}) => ({ v: PROTOCOL_VERSION, type: 'stream' as const, sessionId: 's', seq, tokens: [5], committedLength: end, done: false, workerId: 'w', ...over });
  const draft = { tokens: [3, 4], predictedAcceptance: [0.5, 0.5], features: [], draftMsPerToken: [1, 1] };

  it('a result marked `decodes` commits the round and relays the stream from its sequence number; a chunk marked `speculate` drafts the next round', () => {
    const ctx = startEdgeSession({ sessionId: 's', deviceId: 'd', requestId: 'r', mode: 'adaptive', promptTokens: [1, 2], maxNewTokens: 20, eosTokenId: null, verifyTimeoutMs: 1_000, maxRetries: 1, kMax: 4, startedAtMs: 0 }).context;
    applyEdgeSessionEvent(ctx, { type: 'RESULT', atMs: 1, result: result(0, { accepted: 0, verified: 0, token: 7 }) });
    applyEdgeSessionEvent(ctx, { type: 'DRAFTED', atMs: 2, draft });
    expect(ctx.phase).to.equal('awaiting');
    const switched = applyEdgeSessionEvent(ctx, { type: 'RESULT', atMs: 3, result: result(1, { decodes: true, streamSeq: 4 }) });
    expect(ctx.generated).to.deep.equal([7, 3, 9]);
    expect([ctx.mode, ctx.phase, ctx.streamSeq]).to.deep.equal(['centralized', 'streaming', 4]);
    expect(switched.some((e) => e.kind === 'draft')).to.equal(false);
    // A chunk of tokens it has is ignored; the next one is relayed.
    applyEdgeSessionEvent(ctx, { type: 'STREAM', atMs: 4, chunk: chunk(0, 5) });
    expect(ctx.generated).to.have.length(3);
    applyEdgeSessionEvent(ctx, { type: 'STREAM', atMs: 5, chunk: chunk(4, 6) });
    const back = applyEdgeSessionEvent(ctx, { type: 'STREAM', atMs: 6, chunk: chunk(5, 7, { speculate: true, tokens: [6] }) });
    expect(ctx.generated).to.deep.equal([7, 3, 9, 5, 6]);
    expect([ctx.mode, ctx.phase, ctx.round]).to.deep.equal(['speculative', 'drafting', 2]);
    expect(back.find((e) => e.kind === 'draft')).to.deep.include({ round: 2 });
    expect(ctx.counters.decodedTokens).to.equal(2);
    expect(ctx.counters.modeSwitches).to.equal(2);
  });

  it('a `speculate` chunk that ends the answer ends the session', () => {
    const ctx = startEdgeSession({ sessionId: 's', deviceId: 'd', requestId: 'r', mode: 'centralized', promptTokens: [1, 2], maxNewTokens: 2, eosTokenId: null, verifyTimeoutMs: 1_000, maxRetries: 1, kMax: 4, startedAtMs: 0 }).context;
    applyEdgeSessionEvent(ctx, { type: 'STREAM', atMs: 1, chunk: chunk(0, 3) });
    applyEdgeSessionEvent(ctx, { type: 'STREAM', atMs: 2, chunk: chunk(1, 4, { speculate: true }) });
    expect(ctx.phase).to.equal('done');
  });

  it('a stalled server-decoded stream asks to be resumed from the committed text, then fails after its retries', () => {
    const ctx = startEdgeSession({ sessionId: 's', deviceId: 'd', requestId: 'r', mode: 'centralized', promptTokens: [1, 2], maxNewTokens: 10, eosTokenId: null, verifyTimeoutMs: 1_000, maxRetries: 1, kMax: 4, startedAtMs: 0 }).context;
    applyEdgeSessionEvent(ctx, { type: 'STREAM', atMs: 1, chunk: chunk(0, 3) });
    const asked = applyEdgeSessionEvent(ctx, { type: 'TIMEOUT' });
    const resume = asked.find((e) => e.kind === 'sendVerify');
    expect(resume && resume.kind === 'sendVerify' && resume.params).to.deep.include({ resume: true, committedLength: 3, round: 1 });
    expect(resume && resume.kind === 'sendVerify' && resume.params.draft.tokens).to.deep.equal([]);
    expect(ctx.phase).to.equal('streaming');
    applyEdgeSessionEvent(ctx, { type: 'TIMEOUT' });
    expect([ctx.phase, ctx.error?.code]).to.deep.equal(['failed', 'timeout']);
  });
});

describe('adaptive: the edge session learns its mode from the first answer', () => {
  const start = () =>
    startEdgeSession({ sessionId: 's', deviceId: 'd', requestId: 'r', mode: 'adaptive', promptTokens: [1, 2], maxNewTokens: 4, eosTokenId: null, verifyTimeoutMs: 1_000, maxRetries: 1, kMax: 4, startedAtMs: 0 }).context;

  it('a round-0 result: it speculates (drafts the next round)', () => {
    const ctx = start();
    const effects = applyEdgeSessionEvent(ctx, { type: 'RESULT', atMs: 5, result: { v: PROTOCOL_VERSION, type: 'result', sessionId: 's', round: 0, accepted: 0, token: 7, verified: 0, committedLength: 3, queueMs: 0, verifyMs: 1, batchSize: 1, workerId: 'w' } });
    expect(ctx.mode).to.equal('speculative');
    expect(ctx.phase).to.equal('drafting');
    expect(effects.some((e) => e.kind === 'draft')).to.equal(true);
  });

  it('a stream: the server decodes it, and the session relays the tokens', () => {
    const ctx = start();
    applyEdgeSessionEvent(ctx, { type: 'STREAM', atMs: 5, chunk: { v: PROTOCOL_VERSION, type: 'stream', sessionId: 's', seq: 0, tokens: [7], committedLength: 3, done: false, workerId: 'w' } });
    expect(ctx.mode).to.equal('centralized');
    expect(ctx.phase).to.equal('streaming');
    expect(ctx.generated).to.deep.equal([7]);
  });
});

describe('adaptive: the scheduler resolves the mode at admission and revisits it at the rounds', () => {
  const settings: SchedulerSettings = {
    policy: 'adaptive',
    bMax: 8,
    waitMs: 0,
    maxBatchTokens: 512,
    ageBoundMs: 1_000,
    truncation: false,
    defaultSlo: { ttftMs: 1_000, tpotMs: 100 },
    defaultReturnLatencyMs: 0,
    modeSwitching: true,
  };
  const worker: WorkerStatus = { v: PROTOCOL_VERSION, type: 'worker', workerId: 'w1', model: 'm', vocabSize: 100, maxPositions: 512, state: 'ready', sessions: 0, kvBytes: 0, incarnation: 'i1', sentAtMs: 0, passLayout: 'varlen' };
  const open = (sessionId: string, tpotMs: number, drafting: SessionOpen['drafting'] | undefined): SessionOpen => ({
    v: PROTOCOL_VERSION,
    type: 'open',
    sessionId,
    deviceId: 'd1',
    requestId: `r-${sessionId}`,
    draftModel: 'draft-1',
    mode: 'adaptive',
    ...(drafting ? { drafting } : {}),
    promptTokens: [1, 2, 3, 4],
    maxNewTokens: 8,
    slo: { ttftMs: 1_000, tpotMs },
    sampling: { temperature: 0, topP: 1, seed: 0 },
    replyTo: 'wisp.device.d1',
    sentAtMs: 0,
  });
  function harness() {
    const batches: VerifyBatch[] = [];
    const actor = createActor(
      schedulerMachine.provide({ actions: { dispatchBatch: (_, p) => void batches.push(p.batch), refuseRequest: () => {}, persistEstimator: () => {}, forgetSession: () => {}, countIgnored: () => {}, scheduleWake: () => {} } }),
      { input: settings },
    );
    actor.start();
    actor.send({ type: 'WORKER_STATUS', message: worker, atMs: 0 });
    return { actor, batches, sessions: () => actor.getSnapshot().context.sessions };
  }
  const modeSent = (b: VerifyBatch) => (b.items[0].request.type === 'open' ? b.items[0].request.mode : null);

  it('the worker gets a resolved mode, the session keeps it, and a redelivered open gets the same one', () => {
    const h = harness();
    const pace = { msPerToken: 1, agreement: 0.9, kMax: 4 };
    // The varlen priors put a pass near 47 ms: a 10 s TPOT SLO is met decoding, a 30 ms one only speculating.
    h.actor.send({ type: 'OPEN', message: open('lenient', 10_000, pace), atMs: 1 });
    expect(modeSent(h.batches[0])).to.equal('centralized');
    expect(h.sessions().lenient.mode).to.equal('centralized');
    h.actor.send({ type: 'WORKER_STATUS', message: { ...worker, doneBatchId: h.batches[0].batchId }, atMs: 2 });
    h.actor.send({ type: 'OPEN', message: open('strict', 30, pace), atMs: 3 });
    expect(modeSent(h.batches[1])).to.equal('speculative');
    h.actor.send({ type: 'WORKER_STATUS', message: { ...worker, doneBatchId: h.batches[1].batchId }, atMs: 4 });
    // The same open again (a device retry): the mode chosen before, whatever the load says now.
    h.actor.send({ type: 'OPEN', message: open('strict', 10_000, pace), atMs: 5 });
    expect(modeSent(h.batches[2])).to.equal('speculative');
    for (const b of h.batches) expect(SessionOpenSchema.parse(b.items[0].request).mode).to.not.equal('adaptive');
  });

  it('admission reserves the KV cache of every admitted session while it resolves their modes', () => {
    const h = harness();
    h.actor.send({ type: 'WORKER_STATUS', message: { ...worker, kvCapacityTokens: 30 }, atMs: 0 });
    const pace = { msPerToken: 1, agreement: 0.9, kMax: 4 };
    // Each needs 4 + 8 = 12 tokens of cache: two fit in 30, the third waits for memory.
    for (const id of ['a', 'b', 'c']) h.actor.send({ type: 'OPEN', message: open(id, 10_000, pace), atMs: 1 });
    const ctx = h.actor.getSnapshot().context;
    expect(ctx.workers.w1.kvReservedTokens).to.equal(24);
    expect(ctx.memoryWait.w1.map((q) => q.message.sessionId)).to.deep.equal(['c']);
    expect([ctx.sessions.a.mode, ctx.sessions.b.mode, ctx.sessions.c.mode]).to.deep.equal(['centralized', 'centralized', undefined]);
  });

  it('revisits a session at its rounds from what the worker measured: to the server when decoding is fast there, back to its device when it is slow', () => {
    const h = harness();
    const pace = { msPerToken: 1, agreement: 0.9, kMax: 4 };
    let t = 1;
    // A decoded session (a 10 s SLO), so the worker reports how long its decoded tokens take.
    h.actor.send({ type: 'OPEN', message: open('lenient', 10_000, pace), atMs: t++ });
    const status = (batch: VerifyBatch | undefined, decodeTpotMs: number): WorkerStatus => ({
      ...worker,
      decoding: 1,
      decodeTpotMs,
      ...(batch ? { doneBatchId: batch.batchId } : {}),
      lastBatch: { batchId: batch?.batchId ?? 'step-x', shapes: [{ n: 1, L: 10 }], actualMs: 47, predictedMs: 47 },
    });
    const report = (ms: number, times: number) => {
      for (let i = 0; i < times; i++) h.actor.send({ type: 'WORKER_STATUS', message: status(h.batches[h.batches.length - 1], ms), atMs: t++ });
    };
    // Decoded tokens take 200 ms where ~47 were predicted: decoding a 60 ms session would miss its SLO.
    report(200, 30);
    const w = () => h.actor.getSnapshot().context.workers.w1;
    expect(w().calibration!.decode).to.be.greaterThan(2);
    h.actor.send({ type: 'OPEN', message: open('s60', 60, pace), atMs: t++ });
    expect(modeSent(h.batches[h.batches.length - 1])).to.equal('speculative');
    report(200, 1);
    // Now decoded tokens come fast: its next round goes to the server, its verification marked so.
    report(20, 40);
    expect(w().calibration!.decode).to.be.lessThan(0.7);
    const verify = (round: number, committedLength: number) => ({ v: PROTOCOL_VERSION, type: 'verify' as const, sessionId: 's60', deviceId: 'd1', round, committedLength, draftTokens: [1, 2], predictedAcceptance: [0.9, 0.9], replyTo: 'wisp.device.d1', sentAtMs: 0 });
    h.actor.send({ type: 'VERIFY', message: verify(1, 5), atMs: t++ });
    const switched = h.batches[h.batches.length - 1];
    expect(switched.items[0].request.type).to.equal('verify');
    expect(switched.items[0].thenDecode).to.equal(true);
    expect(h.sessions().s60.mode).to.equal('centralized');
    // Decoded tokens slow again: the next batch made for the worker hands it back to its device.
    report(300, 40);
    h.actor.send({ type: 'OPEN', message: open('another', 10_000, pace), atMs: t++ });
    const handBack = h.batches[h.batches.length - 1];
    expect(handBack.speculate).to.deep.equal(['s60']);
    expect(h.sessions().s60.mode).to.equal('speculative');
    // The 10 s session stays decoded: 300 ms a token is well within its SLO.
    expect(h.sessions().lenient.mode).to.equal('centralized');
  });

  it('switches at most SWITCHES_PER_PASS sessions between two status reports of their worker', () => {
    const h = harness();
    const pace = { msPerToken: 1, agreement: 0.9, kMax: 4 };
    let t = 1;
    const last = () => h.batches[h.batches.length - 1];
    const report = (ms: number, times: number) => {
      for (let i = 0; i < times; i++) {
        const b = last();
        h.actor.send({ type: 'WORKER_STATUS', message: { ...worker, decoding: 6, decodeTpotMs: ms, ...(b ? { doneBatchId: b.batchId } : {}), lastBatch: { batchId: b?.batchId ?? 'step-x', shapes: [{ n: 1, L: 10 }], actualMs: 47, predictedMs: 47 } }, atMs: t++ });
      }
    };
    // Six 60 ms sessions, decoded while decoded tokens come fast.
    report(20, 40);
    for (let i = 0; i < 6; i++) {
      h.actor.send({ type: 'OPEN', message: open(`d${i}`, 60, pace), atMs: t++ });
      report(20, 1);
    }
    expect(Object.values(h.sessions()).map((x) => x.mode)).to.deep.equal(Array(6).fill('centralized'));
    // Decoded tokens turn slow: every one of them would rather speculate now.
    report(400, 40);
    h.actor.send({ type: 'OPEN', message: open('x0', 10_000, pace), atMs: t++ });
    expect(last().speculate).to.have.length(SWITCHES_PER_PASS);
    report(400, 1);
    h.actor.send({ type: 'OPEN', message: open('x1', 10_000, pace), atMs: t++ });
    expect(last().speculate).to.have.length(6 - SWITCHES_PER_PASS);
  });

  it('with mode switching off the mode is chosen once, at admission, and nothing is calibrated', () => {
    const batches: VerifyBatch[] = [];
    const actor = createActor(
      schedulerMachine.provide({ actions: { dispatchBatch: (_, p) => void batches.push(p.batch), refuseRequest: () => {}, persistEstimator: () => {}, forgetSession: () => {}, countIgnored: () => {}, scheduleWake: () => {} } }),
      { input: { ...settings, modeSwitching: false } },
    );
    actor.start();
    actor.send({ type: 'WORKER_STATUS', message: worker, atMs: 0 });
    const pace = { msPerToken: 1, agreement: 0.9, kMax: 4 };
    actor.send({ type: 'OPEN', message: open('lenient', 10_000, pace), atMs: 1 });
    for (let i = 0; i < 30; i++) actor.send({ type: 'WORKER_STATUS', message: { ...worker, decoding: 1, decodeTpotMs: 200, doneBatchId: batches[0].batchId, lastBatch: { batchId: batches[0].batchId, shapes: [{ n: 1, L: 10 }], actualMs: 47, predictedMs: 47 } }, atMs: 2 + i });
    expect(actor.getSnapshot().context.workers.w1.calibration).to.equal(undefined);
    actor.send({ type: 'OPEN', message: open('s60', 60, pace), atMs: 40 });
    expect(modeSent(batches[batches.length - 1])).to.equal('centralized');
  });

  it('a device that gave no drafting pace speculates', () => {
    const h = harness();
    h.actor.send({ type: 'OPEN', message: open('s', 10_000, undefined), atMs: 1 });
    expect(modeSent(h.batches[0])).to.equal('speculative');
  });

  it('the decode step shares passes of verifications and prompt chunks, not passes of whole prompts', () => {
    const item = (request: VerifyBatch['items'][number]['request'], chunk?: { start: number; end: number }) => ({ request, verifyTokens: 0, arrivedAtMs: 0, ...(chunk ? { chunk } : {}) });
    const o = open('s', 100, undefined);
    const v = { v: PROTOCOL_VERSION, type: 'verify' as const, sessionId: 's', deviceId: 'd1', round: 1, committedLength: 5, draftTokens: [1], predictedAcceptance: [0.5], replyTo: 'q', sentAtMs: 0 };
    expect(stepSharesPass({ items: [item(o)] })).to.equal(false);
    expect(stepSharesPass({ items: [item(o, { start: 0, end: 2 })] })).to.equal(true);
    expect(stepSharesPass({ items: [item(v)] })).to.equal(true);
  });
});
