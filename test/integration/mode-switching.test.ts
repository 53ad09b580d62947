/**
 * Adaptive serving switches a session between edge speculation and server decoding mid-answer
 * (a verification marked `thenDecode`, a batch naming it in `speculate`), and the answer stays
 * target-only greedy decoding, token for token: several switches each way, at round boundaries
 * and right after a rejection. The real worker code (BatchExecutor) on the forged tiny target,
 * its ledger in the real Redis, and the device's own session logic (machines/edge-session.ts)
 * with the forged draft model drafting (the device's drafter); only the broker hop is left out
 * (the test hands each message over itself, so it decides where the switches and kills fall).
 *
 * A killed worker is one whose replies of a pass never went out (its ledger writes did) and whose
 * sessions a fresh worker takes over from Redis; the stalled devices' reply timers fire (the
 * test fires them when nothing else can run), and they retry their round or resume their stream.
 *
 * Sampled answers cannot equal target-only sampling token for token (speculative sampling keeps
 * the target's distribution, and where a round starts decides which of two allowed draws a
 * position gets), so a sampled answer is checked against what the protocol allows at each
 * position, and against itself: the same seeds and switches give the same answer, killed or not.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { redisLedger } from '../../actors/store.ts';
import { BatchExecutor } from '../../actors/verifier/executor.ts';
import { SessionDrafter } from '../../actors/edge/drafter.ts';
import { generateTarget } from '../../inference/speculative.ts';
import type { DecoderRunner } from '../../inference/types.ts';
import { applyEdgeSessionEvent, startEdgeSession, type EdgeSessionContext, type EdgeSessionEffect } from '../../machines/edge-session.ts';
import { PROTOCOL_VERSION, type BatchItem, type ErrorMessage, type Sampling, type TokenStream, type VerifyBatch, type VerifyResult } from '../../protocol/messages.ts';
import { openRedisStore, type RedisStore } from '../../store/redis-store.ts';
import { firstDisallowed } from '../helpers/sampled-check.ts';
import { loadTinyPair } from '../helpers/system.ts';

const REDIS_URL = process.env.WISP_REDIS_URL ?? 'redis://127.0.0.1:6379';
const GREEDY: Sampling = { temperature: 0, topP: 1, seed: 0 };
const sampled = (i: number): Sampling => ({ temperature: 0.8, topP: 0.95, seed: 2_000 + i });
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

/** Where the test kills the worker (at most once each, in order of the list). */
type KillPoint =
  /** The pass that switched a session to server decoding: its result never reaches the device. */
  | 'switchResult'
  /** The second decode step after a switch to the server. */
  | 'midDecode'
  /** The step that hands a session back to its device: the chunk saying so is lost. */
  | 'handBack';

interface ServeOptions {
  sampling: (i: number) => Sampling;
  kills: KillPoint[];
}

interface Dev {
  ctx: EdgeSessionContext;
  drafter: SessionDrafter;
  plan: SwitchPlan;
  /** Its generated length when it last switched to the server, and whether its hand-back was asked for since (by position, so lost and re-sent messages move nothing). */
  switchedAt: number;
  handBackAsked: boolean;
  pendingRejectionSwitch: boolean;
  /** The loop step in which it last sent or heard something (a stalled one's timer fires). */
  heardAtStep: number;
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

  /** Serves every prompt to the end, switching each session as its plan says and killing the worker where `opts` says; returns the answers, switches and kills. */
  async function serve(plans: SwitchPlan[], opts: ServeOptions = { sampling: () => GREEDY, kills: [] }): Promise<{ devs: Dev[]; kills: KillPoint[] }> {
    const replies: { queue: string; message: VerifyResult | TokenStream | ErrorMessage }[] = [];
    let workers = 0;
    const newWorker = () =>
      new BatchExecutor({
        workerId: `w-ms-${workers++}`,
        runner: target,
        ledger: redisLedger(store, `w-ms-${workers}`),
        reply: async (queue, message) => void replies.push({ queue, message }),
        now: () => Date.now(),
        eosTokenId: target.info.eosTokenId,
      });
    let executor = newWorker();
    const kills = [...opts.kills];
    const killed: KillPoint[] = [];
    const devs: Dev[] = [];
    const outbox: BatchItem[] = [];
    const handBack = new Set<string>();
    let batchSeq = 0;
    let stepsSinceSwitch = 0;

    let step = 0;
    const run = async (d: Dev, effects: EdgeSessionEffect[]): Promise<void> => {
      for (const e of effects) {
        const c = d.ctx;
        if (e.kind === 'sendOpen' || e.kind === 'sendVerify') d.heardAtStep = step;
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
              sampling: opts.sampling(devs.indexOf(d)),
              replyTo: c.deviceId,
              sentAtMs: 0,
            },
            verifyTokens: 0,
            arrivedAtMs: Date.now(),
          });
        } else if (e.kind === 'draft') {
          const out = await d.drafter.draftRound({ sessionId: c.sessionId, context: [...c.promptTokens, ...c.generated], maxDraft: e.maxDraft, round: e.round });
          await run(d, applyEdgeSessionEvent(c, { type: 'DRAFTED', draft: out, atMs: Date.now() }));
        } else if (e.kind === 'sendVerify') {
          const p = e.params;
          const thenDecode = p.resume !== true && (d.plan.decodeAtRounds.includes(p.round) || d.pendingRejectionSwitch);
          d.pendingRejectionSwitch = false;
          outbox.push({
            request: {
              v: PROTOCOL_VERSION,
              type: 'verify',
              sessionId: p.sessionId,
              deviceId: c.deviceId,
              round: p.round,
              committedLength: p.committedLength,
              draftTokens: p.draft.tokens,
              predictedAcceptance: p.draft.predictedAcceptance,
              ...(p.draft.dists ? { draftDists: p.draft.dists } : {}),
              replyTo: c.deviceId,
              sentAtMs: 0,
              ...(p.resume ? { resume: true as const } : {}),
            },
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
        maxRetries: 6,
        kMax: K_MAX,
        startedAtMs: Date.now(),
      });
      // The device's drafter, drafting every token up to K_max (the stop rule is not under test).
      const drafter = new SessionDrafter({
        runner: draft,
        sampling: opts.sampling(i),
        stopRule: { predict: () => 0.5, decide: () => 'keep' },
        paceMsPerToken: 0,
        sleep: async () => {},
        now: () => Date.now(),
        eosTokenId: null,
      });
      const d: Dev = { ctx: context, drafter, plan: plans[i], switchedAt: 0, handBackAsked: true, pendingRejectionSwitch: false, heardAtStep: 0, switches: { toServer: 0, toDevice: 0 } };
      devs.push(d);
      await run(d, effects);
    }

    const finished = () => devs.every((d) => d.ctx.phase === 'done' || d.ctx.phase === 'failed');
    for (; step < 2_000 && !finished(); step++) {
      // A device that heard nothing for two steps is stalled (a live worker answers every pass
      // it runs, and decodes its sessions in each): its reply timer fires.
      for (const d of devs) if ((d.ctx.phase === 'awaiting' || d.ctx.phase === 'streaming') && step - d.heardAtStep > 2) await run(d, applyEdgeSessionEvent(d.ctx, { type: 'TIMEOUT' }));
      const items = outbox.splice(0);
      if (items.length > 0) {
        const batch: VerifyBatch = { v: PROTOCOL_VERSION, type: 'batch', batchId: `b${batchSeq++}`, workerId: 'w-ms', items, predictedMs: 0, dispatchedAtMs: Date.now(), evict: [], ...(handBack.size > 0 ? { speculate: [...handBack] } : {}) };
        handBack.clear();
        await executor.execute(batch);
      } else if (executor.decodeActive > 0) {
        await executor.decodeStep();
      } else {
        // Nothing can run: the stalled devices' reply timers fire.
        const stalled = devs.filter((d) => d.ctx.phase === 'awaiting' || d.ctx.phase === 'streaming');
        if (stalled.length === 0) throw new Error('nothing to run and sessions not finished');
        for (const d of stalled) await run(d, applyEdgeSessionEvent(d.ctx, { type: 'TIMEOUT' }));
        continue;
      }
      const out = replies.splice(0);
      const switched = out.some((r) => r.message.type === 'result' && r.message.decodes === true);
      if (switched) stepsSinceSwitch = 0;
      else if (out.some((r) => r.message.type === 'stream')) stepsSinceSwitch++;
      const handedBack = out.some((r) => r.message.type === 'stream' && r.message.speculate === true);
      const kill = kills[0];
      if ((kill === 'switchResult' && switched) || (kill === 'midDecode' && stepsSinceSwitch === 2) || (kill === 'handBack' && handedBack)) {
        // The worker died before its replies went out; a fresh one takes its sessions over.
        killed.push(kills.shift()!);
        executor = newWorker();
        continue;
      }
      for (const r of out) {
        const d = devs.find((x) => x.ctx.deviceId === r.queue)!;
        const m = r.message;
        d.heardAtStep = step;
        if (m.type === 'error') throw new Error(`worker refused: ${m.code}: ${m.message}`);
        if (m.type === 'result') {
          // The round after one that rejected a draft token switches (its verification carries the switch).
          if (!m.decodes && d.plan.afterRejection && m.round > 0 && m.accepted < m.verified && d.switches.toServer < 3) d.pendingRejectionSwitch = true;
          await run(d, applyEdgeSessionEvent(d.ctx, { type: 'RESULT', result: m, atMs: Date.now() }));
          if (m.decodes) (d.switches.toServer++, (d.switchedAt = d.ctx.generated.length), (d.handBackAsked = false));
        } else {
          if (m.speculate) d.switches.toDevice++;
          await run(d, applyEdgeSessionEvent(d.ctx, { type: 'STREAM', chunk: m, atMs: Date.now() }));
          if (d.ctx.mode === 'centralized' && !d.handBackAsked && d.ctx.generated.length - d.switchedAt >= d.plan.decodedTokens) (handBack.add(d.ctx.sessionId), (d.handBackAsked = true));
        }
      }
    }
    return { devs, kills: killed };
  }

  /** Forgets the sessions of the last serve (their ledger entries), so the next one opens them afresh. */
  async function forget(): Promise<void> {
    for (let i = 0; i < PROMPTS.length; i++) await store.deleteSession(`ms-${i}`);
  }

  const PLANS: SwitchPlan[] = [
    { decodeAtRounds: [2, 6, 10], afterRejection: false, decodedTokens: 3 },
    { decodeAtRounds: [], afterRejection: true, decodedTokens: 2 },
    { decodeAtRounds: [], afterRejection: false, decodedTokens: 0 },
  ];

  afterEach(forget);

  /** Every answer is done and equals target-only greedy decoding; sessions 0 and 1 switched both ways (`minSwitches` times at least), and the ledger holds their answers. */
  async function expectGreedyExact(devs: Dev[], minSwitches: number): Promise<void> {
    for (let i = 0; i < devs.length; i++) {
      const d = devs[i];
      expect(d.ctx.phase, JSON.stringify(d.ctx.error)).to.equal('done');
      expect(d.ctx.generated, `session ${i}`).to.deep.equal(reference[i]);
    }
    for (let i = 0; i < 2; i++) {
      const d = devs[i];
      expect(d.switches.toServer, `session ${i} went to the server`).to.be.at.least(minSwitches);
      expect(d.switches.toDevice, `session ${i} came back to its device`).to.be.at.least(minSwitches);
      expect(d.ctx.counters.decodedTokens, 'tokens came both ways').to.be.greaterThan(0).and.lessThan(d.ctx.generated.length);
      expect(d.ctx.counters.modeSwitches).to.equal(d.switches.toServer + d.switches.toDevice);
      // The ledger holds the whole answer, decoded tokens included (a takeover elsewhere rebuilds it).
      const history = await store.getHistory(d.ctx.sessionId);
      expect(history, 'ledger history').to.not.equal(null);
      expect(history!.slice(prompts[i].length)).to.deep.equal(reference[i]);
    }
  }

  it('greedy: switched to the server and back several times, each answer is target-only decoding token for token', async () => {
    const { devs } = await serve(PLANS);
    await expectGreedyExact(devs, 2);
  });

  it('greedy: the worker killed as it switches a session, while it decodes one, and as it hands one back — still target-only decoding', async () => {
    const { devs, kills } = await serve(PLANS, { sampling: () => GREEDY, kills: ['switchResult', 'midDecode', 'handBack'] });
    expect(kills, 'every kill happened').to.deep.equal(['switchResult', 'midDecode', 'handBack']);
    // A switch whose message was lost is counted once, when the retry or the resume delivers it.
    await expectGreedyExact(devs, 1);
  });

  it('sampled: every token is one the protocol allows at its position, and the same seeds give the same answers with the worker killed at each switch', async () => {
    const plain = await serve(PLANS, { sampling: sampled, kills: [] });
    await forget();
    const killed = await serve(PLANS, { sampling: sampled, kills: ['switchResult', 'midDecode', 'handBack'] });
    expect(killed.kills).to.have.length(3);
    for (let i = 0; i < prompts.length; i++) {
      expect(plain.devs[i].ctx.phase, JSON.stringify(plain.devs[i].ctx.error)).to.equal('done');
      expect(killed.devs[i].ctx.phase, JSON.stringify(killed.devs[i].ctx.error)).to.equal('done');
      expect(await firstDisallowed({ target, draft }, prompts[i], plain.devs[i].ctx.generated, sampled(i)), `session ${i}`).to.equal(null);
      expect(killed.devs[i].ctx.generated, `session ${i}, killed`).to.deep.equal(plain.devs[i].ctx.generated);
    }
    for (let i = 0; i < 2; i++) {
      const c = plain.devs[i].ctx.counters;
      expect(c.decodedTokens, `session ${i}: tokens came both ways`).to.be.greaterThan(0).and.lessThan(plain.devs[i].ctx.generated.length);
      expect(c.drafted, `session ${i} drafted`).to.be.greaterThan(0);
    }
  });
});
