/**
 * The three machines end to end, without a broker, on one simulated clock: EdgeSession actors,
 * the Scheduler machine (each batch policy) and a VerifierWorker machine. The "models" are
 * deterministic functions — the target's next token, and a draft that is sometimes wrong — so
 * every session must produce exactly the target-only sequence under every policy.
 */
import { expect } from 'chai';
import { SimulatedClock, createActor, fromPromise, type Actor } from 'xstate';
import { PROTOCOL_VERSION, type SessionOpen, type TokenStream, type VerifyBatch, type VerifyRequest, type VerifyResult } from '../../protocol/messages.ts';
import { edgeSessionMachine, type DraftInput, type DraftOutput } from '../../machines/edge-session.ts';
import { schedulerMachine } from '../../machines/scheduler.ts';
import { verifierWorkerMachine, type BatchReport } from '../../machines/verifier-worker.ts';
import type { PolicyName } from '../../policies/types.ts';

const V = 50;
const target = (ctx: readonly number[]): number => (ctx[ctx.length - 1] * 31 + (ctx[ctx.length - 2] ?? 0) * 7 + 3) % V;
/** The draft agrees with the target except at every third position. */
const draft = (ctx: readonly number[]): number => (ctx.length % 3 === 0 ? (target(ctx) + 1) % V : target(ctx));

function targetOnly(prompt: number[], n: number): number[] {
  const seq = [...prompt];
  for (let i = 0; i < n; i++) seq.push(target(seq));
  return seq.slice(prompt.length);
}

const flush = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

async function runAll(policy: PolicyName, prompts: number[][], maxNewTokens: number): Promise<number[][]> {
  const clock = new SimulatedClock();
  const verifyMs = 3;
  const netMs = 1;
  const sessions = new Map<string, Actor<typeof edgeSessionMachine>>();
  /** Worker-side state per session: committed tokens (and centralized decoding). */
  const server = new Map<string, { tokens: number[]; prompt: number; max: number; decoding: boolean; seq: number; mode: SessionOpen['mode'] }>();
  const later = (ms: number, fn: () => void) => clock.setTimeout(fn, ms);
  let scheduler!: Actor<typeof schedulerMachine>;
  const deliver = (sessionId: string, m: VerifyResult | TokenStream) =>
    later(netMs, () => {
      const a = sessions.get(sessionId);
      if (!a) return;
      if (m.type === 'result') a.send({ type: 'RESULT', result: m, atMs: clock.now() });
      else a.send({ type: 'STREAM', chunk: m, atMs: clock.now() });
    });

  const worker = createActor(
    verifierWorkerMachine.provide({
      actors: {
        loadModel: fromPromise(async () => ({ model: 'fn', vocabSize: V, maxPositions: 1_000 })),
        executeBatch: fromPromise(async ({ input }: { input: { batch: VerifyBatch } }): Promise<BatchReport> => {
          const shapes: { n: number; L: number }[] = [];
          for (const item of input.batch.items) {
            const r = item.request;
            if (r.type === 'open') {
              const tokens = [...r.promptTokens, target(r.promptTokens)];
              server.set(r.sessionId, { tokens, prompt: r.promptTokens.length, max: r.maxNewTokens, decoding: r.mode === 'centralized' && r.maxNewTokens > 1, seq: 0, mode: r.mode });
              shapes.push({ n: r.promptTokens.length, L: 0 });
              const s = server.get(r.sessionId)!;
              if (r.mode === 'centralized') deliver(r.sessionId, { v: PROTOCOL_VERSION, type: 'stream', sessionId: r.sessionId, seq: s.seq++, tokens: [tokens[tokens.length - 1]], committedLength: tokens.length, done: !s.decoding, workerId: 'w' });
              else deliver(r.sessionId, { v: PROTOCOL_VERSION, type: 'result', sessionId: r.sessionId, round: 0, accepted: 0, token: tokens[tokens.length - 1], verified: 0, committedLength: tokens.length, queueMs: 0, verifyMs, batchSize: input.batch.items.length, workerId: 'w' });
              continue;
            }
            const s = server.get(r.sessionId)!;
            const m = Math.min(item.verifyTokens, r.draftTokens.length);
            let accepted = 0;
            const seq = [...s.tokens];
            while (accepted < m && r.draftTokens[accepted] === target(seq)) seq.push(r.draftTokens[accepted++]);
            const token = target(seq);
            s.tokens = [...seq, token];
            shapes.push({ n: m + 1, L: r.committedLength - 1 });
            deliver(r.sessionId, { v: PROTOCOL_VERSION, type: 'result', sessionId: r.sessionId, round: r.round, accepted, token, verified: m, committedLength: s.tokens.length, queueMs: 0, verifyMs, batchSize: input.batch.items.length, workerId: 'w' });
          }
          await new Promise<void>((resolve) => later(verifyMs, resolve));
          return { batchId: input.batch.batchId, shapes, actualMs: verifyMs, predictedMs: input.batch.predictedMs, sessions: server.size, kvBytes: 0, decodeActive: [...server.values()].filter((x) => x.decoding).length };
        }),
        decodeStep: fromPromise(async (): Promise<BatchReport> => {
          const active = [...server.entries()].filter(([, s]) => s.decoding);
          for (const [id, s] of active) {
            s.tokens.push(target(s.tokens));
            s.decoding = s.tokens.length - s.prompt < s.max;
            deliver(id, { v: PROTOCOL_VERSION, type: 'stream', sessionId: id, seq: s.seq++, tokens: [s.tokens[s.tokens.length - 1]], committedLength: s.tokens.length, done: !s.decoding, workerId: 'w' });
          }
          await new Promise<void>((resolve) => later(1, resolve));
          return { batchId: `step-${clock.now()}`, shapes: [{ n: 1, L: 0 }], actualMs: 1, predictedMs: 0, sessions: server.size, kvBytes: 0, decodeActive: [...server.values()].filter((x) => x.decoding).length };
        }),
      },
      actions: {
        reportReady: (_, p) =>
          scheduler.send({
            type: 'WORKER_STATUS',
            atMs: clock.now(),
            message: { v: PROTOCOL_VERSION, type: 'worker', workerId: 'w', model: 'fn', vocabSize: V, maxPositions: 1_000, state: 'ready', sessions: server.size, kvBytes: 0, incarnation: 'i', ...(p.report ? { doneBatchId: p.report.batchId, lastBatch: { batchId: p.report.batchId, shapes: p.report.shapes, actualMs: p.report.actualMs, predictedMs: p.report.predictedMs } } : {}), sentAtMs: clock.now() },
          }),
        reportBatchFailed: (_, p) => {
          throw new Error(`batch failed: ${p.message}`);
        },
        evictIdle: () => {},
      },
    }),
    { input: { workerId: 'w', idleEvictMs: 60_000 }, clock },
  );

  scheduler = createActor(
    schedulerMachine.provide({
      actions: {
        dispatchBatch: (_, { batch }) => later(netMs, () => worker.send({ type: 'BATCH', batch })),
        refuseRequest: (_, p) => {
          throw new Error(`refused: ${p.code} ${p.message}`);
        },
        persistEstimator: () => {},
        forgetSession: () => {},
        countIgnored: () => {},
        scheduleWake: (_, { atMs }) => later(Math.max(0, atMs - clock.now()), () => scheduler.send({ type: 'WAKE', atMs: clock.now() })),
      },
    }),
    { input: { policy, bMax: 4, waitMs: 2, maxBatchTokens: 512, ageBoundMs: 1_000, truncation: true, defaultSlo: { ttftMs: 200, tpotMs: 50 }, defaultReturnLatencyMs: netMs }, clock },
  );
  scheduler.subscribe({ error: (e) => { throw e; } });
  worker.subscribe({ error: (e) => { throw e; } });
  scheduler.start();
  worker.start();

  const up = (m: SessionOpen | VerifyRequest) => later(netMs, () => scheduler.send(m.type === 'open' ? { type: 'OPEN', message: m, atMs: clock.now() } : { type: 'VERIFY', message: m, atMs: clock.now() }));
  const results: number[][] = [];
  const done: Promise<void>[] = [];
  prompts.forEach((prompt, i) => {
    const sessionId = `s${i}`;
    const mode = policy === 'centralized' ? 'centralized' : 'speculative';
    const actor = createActor(
      edgeSessionMachine.provide({
        actions: {
          sendOpen: () => up({ v: PROTOCOL_VERSION, type: 'open', sessionId, deviceId: `d${i}`, requestId: `r${i}`, draftModel: 'fn', mode, promptTokens: prompt, maxNewTokens, slo: { ttftMs: 200, tpotMs: 50 }, sampling: { temperature: 0, topP: 1, seed: 0 }, replyTo: `d${i}`, sentAtMs: clock.now() }),
          sendVerify: (_, p) =>
            up({ v: PROTOCOL_VERSION, type: 'verify', sessionId, deviceId: `d${i}`, round: p.round, committedLength: p.committedLength, draftTokens: p.draft.tokens, predictedAcceptance: p.draft.predictedAcceptance, replyTo: `d${i}`, sentAtMs: clock.now() }),
          sendClose: () => {},
          emitTokens: () => {},
          roundVerified: () => {},
        },
        actors: {
          draft: fromPromise(async ({ input }: { input: DraftInput }): Promise<DraftOutput> => {
            const ctx = [...input.context];
            const tokens: number[] = [];
            for (let k = 0; k < input.maxDraft; k++) ctx.push(tokens[tokens.push(draft(ctx)) - 1]);
            return { tokens, predictedAcceptance: tokens.map(() => 0.7), features: tokens.map((_, k) => ({ top1Prob: 0.7, entropy: 1, margin: 0.3, logitSpread: 2, position: k })), draftMsPerToken: tokens.map(() => 2) };
          }),
        },
      }),
      { input: { sessionId, deviceId: `d${i}`, requestId: `r${i}`, mode, promptTokens: prompt, maxNewTokens, eosTokenId: null, verifyTimeoutMs: 500, maxRetries: 2, kMax: 4, startedAtMs: 0 }, clock },
    );
    sessions.set(sessionId, actor);
    done.push(
      new Promise((resolve, reject) =>
        actor.subscribe({
          next: (s) => {
            if (s.status === 'done') {
              results[i] = s.context.error ? [-1] : s.context.generated;
              resolve();
            }
          },
          error: reject,
        }),
      ),
    );
    actor.start();
  });
  let finished = false;
  void Promise.all(done).then(() => (finished = true));
  for (let t = 0; t < 20_000 && !finished; t++) {
    await flush();
    clock.increment(1);
  }
  await flush();
  expect(finished, `${policy}: sessions still running after 20 simulated seconds`).to.equal(true);
  return results;
}

describe('machines end to end on a simulated clock (no broker)', () => {
  const prompts = [
    [1, 2, 3],
    [4, 5],
    [7, 8, 9, 10],
    [11],
    [12, 13],
    [20, 21, 22],
  ];
  const maxNewTokens = 12;
  for (const policy of ['wisp', 'sled', 'centralized'] as const) {
    it(`${policy}: every session equals target-only decoding`, async () => {
      const got = await runAll(policy, prompts, maxNewTokens);
      prompts.forEach((p, i) => expect(got[i], `session ${i}`).to.deep.equal(targetOnly(p, maxNewTokens)));
    });
  }
});
