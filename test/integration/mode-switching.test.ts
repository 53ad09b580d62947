/**
 * Adaptive serving switches a session between edge speculation and server decoding mid-answer
 * (a verification marked `thenDecode`, a batch naming it in `speculate`), and the answer stays
 * target-only greedy decoding, token for token: several switches each way, at round boundaries
 * and right after a rejection. The real worker code (BatchExecutor) on the forged tiny target,
 * its ledger in the real Redis, and the device's own session logic (machines/edge-session.ts)
 * with the forged draft model drafting; only the broker hop is left out (the test hands each
 * message over itself, so it decides where the switches fall).
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { redisLedger } from '../../actors/store.ts';
import { BatchExecutor } from '../../actors/verifier/executor.ts';
import { generateTarget } from '../../inference/speculative.ts';
import type { DecoderRunner } from '../../inference/types.ts';
import { applyEdgeSessionEvent, startEdgeSession, type DraftOutput, type EdgeSessionContext, type EdgeSessionEffect } from '../../machines/edge-session.ts';
import { PROTOCOL_VERSION, type BatchItem, type ErrorMessage, type Sampling, type TokenStream, type VerifyBatch, type VerifyResult } from '../../protocol/messages.ts';
import { openRedisStore, type RedisStore } from '../../store/redis-store.ts';
import { loadTinyPair } from '../helpers/system.ts';

const REDIS_URL = process.env.WISP_REDIS_URL ?? 'redis://127.0.0.1:6379';
const GREEDY: Sampling = { temperature: 0, topP: 1, seed: 0 };
/** Tokens per answer: the last session speculates throughout and runs longest, so the others' switches back always have a batch to ride on. */
const MAX_NEW = [40, 40, 120];
const K_MAX = 4;
const PROMPTS = ['the old house on the hill stood alone at the end of a long road', 'once upon a time there was a river that ran through a quiet town', 'she opened the door and'];

/** When the test switches a session: the rounds whose verification hands it to the server, and how many tokens it is decoded for each time. */
interface SwitchPlan {
  decodeAtRounds: number[];
  /** Also switch at the first round after a rejection (a round that accepted fewer than it verified). */
  afterRejection: boolean;
  decodedTokens: number;
}

interface Dev {
  ctx: EdgeSessionContext;
  plan: SwitchPlan;
  /** Tokens decoded since its last switch to the server. */
  decodedSinceSwitch: number;
  pendingRejectionSwitch: boolean;
  switches: { toServer: number; toDevice: number };
}

describe('adaptive mode switches are lossless (worker, ledger in Redis, device logic, forged models)', function () {
  this.timeout(120_000);
  let target: DecoderRunner;
  let draft: DecoderRunner;
  let store: RedisStore;
  let prompts: number[][];
  let reference: number[][];
  const prefix = `wisp-test-ms-${randomUUID().slice(0, 8)}:`;

  before(async () => {
    let tokenizer;
    ({ target, draft, tokenizer } = await loadTinyPair());
    prompts = PROMPTS.map((p) => tokenizer.encode(p));
    reference = [];
    for (let i = 0; i < prompts.length; i++) reference.push((await generateTarget(target, prompts[i], { maxNewTokens: MAX_NEW[i], sampling: GREEDY, eosTokenId: target.info.eosTokenId })).tokens);
    store = await openRedisStore({ url: REDIS_URL, keyPrefix: prefix, sessionTtlMs: 60_000 });
  });
  after(async () => {
    if (store) {
      for (let i = 0; i < PROMPTS.length; i++) await store.deleteSession(`ms-${i}`).catch(() => {});
      await store.close();
    }
    await target?.dispose();
    await draft?.dispose();
  });

  /** The draft model's greedy continuation of `context`, as a device's round. */
  async function draftRound(context: number[], maxDraft: number): Promise<DraftOutput> {
    const tokens = maxDraft > 0 ? (await generateTarget(draft, context, { maxNewTokens: maxDraft, sampling: GREEDY, eosTokenId: null })).tokens : [];
    return { tokens, predictedAcceptance: tokens.map(() => 0.5), features: tokens.map((_, position) => ({ position, top1Prob: 0.5, entropy: 1, margin: 0.1, logitSpread: 1 })), draftMsPerToken: tokens.map(() => 0) };
  }

  /** Serves every prompt to the end, switching each session as its plan says; returns the answers and the switches made. */
  async function serve(plans: SwitchPlan[]): Promise<Dev[]> {
    const replies: { queue: string; message: VerifyResult | TokenStream | ErrorMessage }[] = [];
    const executor = new BatchExecutor({
      workerId: 'w-ms',
      runner: target,
      ledger: redisLedger(store, 'w-ms'),
      reply: async (queue, message) => void replies.push({ queue, message }),
      now: () => Date.now(),
      eosTokenId: target.info.eosTokenId,
    });
    const devs: Dev[] = [];
    const outbox: BatchItem[] = [];
    const handBack = new Set<string>();
    let batchSeq = 0;

    const run = async (d: Dev, effects: EdgeSessionEffect[]): Promise<void> => {
      for (const e of effects) {
        const c = d.ctx;
        if (e.kind === 'sendOpen') {
          outbox.push({
            request: {
              v: PROTOCOL_VERSION,
              type: 'open',
              sessionId: c.sessionId,
              deviceId: c.deviceId,
              requestId: c.requestId,
              draftModel: 'draft',
              mode: 'speculative',
              promptTokens: c.promptTokens,
              maxNewTokens: c.maxNewTokens,
              slo: { ttftMs: 1_000, tpotMs: 100 },
              sampling: GREEDY,
              replyTo: c.deviceId,
              sentAtMs: 0,
            },
            verifyTokens: 0,
            arrivedAtMs: Date.now(),
          });
        } else if (e.kind === 'draft') {
          const out = await draftRound([...c.promptTokens, ...c.generated], e.maxDraft);
          await run(d, applyEdgeSessionEvent(c, { type: 'DRAFTED', draft: out, atMs: Date.now() }));
        } else if (e.kind === 'sendVerify') {
          const p = e.params;
          const thenDecode = d.plan.decodeAtRounds.includes(p.round) || d.pendingRejectionSwitch;
          d.pendingRejectionSwitch = false;
          outbox.push({
            request: { v: PROTOCOL_VERSION, type: 'verify', sessionId: p.sessionId, deviceId: c.deviceId, round: p.round, committedLength: p.committedLength, draftTokens: p.draft.tokens, predictedAcceptance: p.draft.predictedAcceptance, replyTo: c.deviceId, sentAtMs: 0 },
            verifyTokens: p.draft.tokens.length,
            arrivedAtMs: Date.now(),
            ...(thenDecode ? { thenDecode: true } : {}),
          });
        }
      }
    };

    for (let i = 0; i < prompts.length; i++) {
      const { context, effects } = startEdgeSession({
        sessionId: `ms-${i}`,
        deviceId: `dev-ms-${i}`,
        requestId: `r-${i}`,
        mode: 'speculative',
        promptTokens: prompts[i],
        maxNewTokens: MAX_NEW[i],
        eosTokenId: target.info.eosTokenId,
        verifyTimeoutMs: Infinity,
        maxRetries: 0,
        kMax: K_MAX,
        startedAtMs: Date.now(),
      });
      const d: Dev = { ctx: context, plan: plans[i], decodedSinceSwitch: 0, pendingRejectionSwitch: false, switches: { toServer: 0, toDevice: 0 } };
      devs.push(d);
      await run(d, effects);
    }

    const finished = () => devs.every((d) => d.ctx.phase === 'done' || d.ctx.phase === 'failed');
    for (let step = 0; step < 2_000 && !finished(); step++) {
      const items = outbox.splice(0);
      if (items.length > 0) {
        const batch: VerifyBatch = { v: PROTOCOL_VERSION, type: 'batch', batchId: `b${batchSeq++}`, workerId: 'w-ms', items, predictedMs: 0, dispatchedAtMs: Date.now(), evict: [], ...(handBack.size > 0 ? { speculate: [...handBack] } : {}) };
        handBack.clear();
        await executor.execute(batch);
      } else if (executor.decodeActive > 0) {
        await executor.decodeStep();
      } else throw new Error('nothing to run and sessions not finished');
      for (const r of replies.splice(0)) {
        const d = devs.find((x) => x.ctx.deviceId === r.queue)!;
        const m = r.message;
        if (m.type === 'error') throw new Error(`worker refused: ${m.code}: ${m.message}`);
        if (m.type === 'result') {
          if (m.decodes) (d.switches.toServer++, (d.decodedSinceSwitch = 0));
          // The round after one that rejected a draft token switches (its verification carries the switch).
          else if (d.plan.afterRejection && m.round > 0 && m.accepted < m.verified && d.switches.toServer < 3) d.pendingRejectionSwitch = true;
          await run(d, applyEdgeSessionEvent(d.ctx, { type: 'RESULT', result: m, atMs: Date.now() }));
        } else {
          if (m.speculate) d.switches.toDevice++;
          else if (d.ctx.mode === 'centralized' && ++d.decodedSinceSwitch === d.plan.decodedTokens) handBack.add(d.ctx.sessionId);
          await run(d, applyEdgeSessionEvent(d.ctx, { type: 'STREAM', chunk: m, atMs: Date.now() }));
        }
      }
    }
    return devs;
  }

  it('greedy: switched to the server and back several times, each answer is target-only decoding token for token', async () => {
    const devs = await serve([
      { decodeAtRounds: [2, 6, 10], afterRejection: false, decodedTokens: 3 },
      { decodeAtRounds: [], afterRejection: true, decodedTokens: 2 },
      { decodeAtRounds: [], afterRejection: false, decodedTokens: 0 },
    ]);
    for (let i = 0; i < devs.length; i++) {
      const d = devs[i];
      expect(d.ctx.phase, JSON.stringify(d.ctx.error)).to.equal('done');
      expect(d.ctx.generated, `session ${i}`).to.deep.equal(reference[i]);
    }
    for (let i = 0; i < 2; i++) {
      const d = devs[i];
      expect(d.switches.toServer, `session ${i} went to the server`).to.be.at.least(2);
      expect(d.switches.toDevice, `session ${i} came back to its device`).to.be.at.least(2);
      expect(d.ctx.counters.decodedTokens, 'tokens came both ways').to.be.greaterThan(0).and.lessThan(d.ctx.generated.length);
      expect(d.ctx.counters.modeSwitches).to.equal(d.switches.toServer + d.switches.toDevice);
      // The ledger holds the whole answer, decoded tokens included (a takeover elsewhere would rebuild it).
      const history = await store.getHistory(d.ctx.sessionId);
      expect(history, 'ledger history').to.not.equal(null);
      expect(history!.slice(prompts[i].length)).to.deep.equal(reference[i].slice(0, history!.length - prompts[i].length));
    }
  });
});
