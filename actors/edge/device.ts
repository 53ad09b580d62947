/**
 * One emulated edge device: its profile (draft time per token, network round trip, jitter),
 * its draft model, its speculation controller (learning across its sessions), its reply queue,
 * and one EdgeSession machine per prompt it serves (one at a time, like a phone with one user).
 */
import { createActor, fromPromise } from 'xstate';
import {
  DeviceInboxSchema,
  PROTOCOL_VERSION,
  type DeviceInbox,
  type PromptRequest,
  type Sampling,
  type RequestedMode,
  type SessionStats,
  type Slo,
  type StopReason,
} from '../../protocol/messages.ts';
import type { BrokerTransport, ConsumerHandle } from '../../broker/transport.ts';
import { SCHEDULER_QUEUE, deviceQueue } from '../../broker/topology.ts';
import type { DeviceProfile } from '../../config/schema.ts';
import type { DecoderRunner } from '../../inference/types.ts';
import type { WispTokenizer } from '../../inference/tokenizer.ts';
import { edgeSessionMachine, stopReasonOf, type DraftInput, type EdgeSessionContext } from '../../machines/edge-session.ts';
import type { DraftTokenFeatures } from '../../policies/types.ts';
import { learnFromRound, type ControllerState } from '../../policies/controller.ts';
import { agreementOf, countAgreement, NO_AGREEMENT_SEEN, type AgreementCounts } from '../../policies/serving-mode.ts';
import { stopRuleOf } from '../../edge/drafting.ts';
import { initialRoundOverheadMs, nextRoundOverheadMs, oneWayDelayMs } from '../../edge/link.ts';
import { deviceEnergyJ, emptySessionStats, sessionStats } from '../../edge/session-stats.ts';
import type { Logger } from '../../telemetry/logger.ts';
import type { EdgeMetrics } from '../../telemetry/metrics.ts';
import { ATTR, startDraftSpan } from '../../telemetry/spans.ts';
import type { Clock } from '../clock.ts';
import { ClientStream } from './client-stream.ts';
import { SessionDrafter } from './drafter.ts';
import { SessionTrace } from './session-trace.ts';

export interface EdgeDeviceOptions {
  deviceId: string;
  profileName: string;
  profile: DeviceProfile;
  /** Multiplies every emulated time (draft pacing, network); 0 = none. */
  timeScale: number;
  /** `adaptive`: the scheduler picks each session's mode from the pace this device reports. */
  mode: RequestedMode;
  /** Keep drafting while a round is verified (see drafter.ts). */
  pipelinedDrafting: boolean;
  controller: ControllerState;
  draft: DecoderRunner;
  draftModelName: string;
  targetModel?: string;
  tokenizer: WispTokenizer;
  broker: BrokerTransport;
  defaultSlo: Slo;
  verifyTimeoutMs: number;
  maxRetries: number;
  logger: Logger;
  clock: Clock;
  /** Deterministic jitter source (tests and benchmarks seed it). */
  random?: () => number;
  /** Called after every served prompt (benchmarks collect their records here). */
  onServed?: (served: ServedPrompt) => void;
  /** Called for every drafted token the target judged: its draft features and the verdict. */
  onTokenJudged?: (sample: JudgedToken) => void;
  /** Called for every verified round: its timing as the device saw it (the simulator is fed these). */
  onRoundTimed?: (timing: RoundTiming) => void;
  /** Prometheus series of the edge role (telemetry/metrics.ts); none when absent. */
  metrics?: EdgeMetrics;
  /** Counts a reply let go on purpose (wisp_ignored_messages_total): one for a session this device does not serve. */
  onIgnored?: (reason: 'no_session') => void;
  /** Policy name, for the session span. */
  policy?: string;
}

/** The outcome of one served prompt, as the client sees it in the last TokenChunk. */
/** A drafted token the target judged: the draft's features, the verdict, and the device's profile. */
export type JudgedToken = DraftTokenFeatures & { accepted: boolean; deviceClass: string };

/** One verified round as a device saw it, ms of the device's clock (emulated units). */
export interface RoundTiming {
  profileName: string;
  /** From publishing the request (before the emulated uplink delay) to the result's delivery. */
  roundTripMs: number;
  /** The emulated network round trip this profile stands for (mean; jitter averages out). */
  networkRttMs: number;
  /** The worker's queueing (scheduler arrival → batch start) and model time. */
  queueMs: number;
  verifyMs: number;
  /** Device time per kept draft token (paced to the profile, or longer when the CPU is slower). */
  draftMsPerToken: number[];
}

/** Why a device cancels a session it serves: its client's reply queue is gone, or the device is shutting down. */
export type CancelReason = 'client_gone' | 'device_shutdown';

export interface ServedPrompt {
  requestId: string;
  sessionId: string;
  deviceId: string;
  profileName: string;
  tokens: number[];
  stats: SessionStats;
  error: { code: string; message: string } | null;
  /** Why it ended (refused before it started: `error`). */
  stopReason: StopReason;
  startedAtMs: number;
  endedAtMs: number;
  /** Device energy of the session, J (real-world units: emulated times divided by timeScale). */
  energyJ: number;
  /** Device time spent drafting, ms (emulated). */
  draftMs: number;
  /** Tokens of the prompt (0 when it was refused before tokenizing). */
  promptTokens: number;
}

let sessionCounter = 0;

export class EdgeDevice {
  readonly id: string;
  #opts: EdgeDeviceOptions;
  #controller: ControllerState;
  /**
   * EWMA of a round's overhead, ms: from sending a verification to its result (network,
   * queueing, verification). The controller weighs drafting one more token against it.
   * Starts at a guess: the profile's round trip plus 50 real-world ms of server time.
   */
  #roundOverheadMs: number;
  /** What this device has seen of its draft's agreement, and its drafting pace (EWMA, ms/token): reported in an adaptive open. */
  #agreement: AgreementCounts = NO_AGREEMENT_SEEN;
  #draftMsPerToken: number;
  #sessions = new Map<string, { deliver: (m: DeviceInbox) => void; link: Promise<void>; cancel: (why: CancelReason) => void; served: Promise<void> }>();
  #consumer: ConsumerHandle | null = null;
  #busy: Promise<unknown> = Promise.resolve();
  #random: () => number;
  energyJ = 0;
  /** Pipelined drafting: look-ahead tokens reused as drafts, and thrown away. */
  readonly pipelined = { reused: 0, discarded: 0 };

  constructor(opts: EdgeDeviceOptions) {
    this.id = opts.deviceId;
    this.#opts = opts;
    this.#controller = opts.controller;
    this.#random = opts.random ?? Math.random;
    this.#roundOverheadMs = initialRoundOverheadMs(opts.profile.rttMs, opts.timeScale);
    this.#draftMsPerToken = opts.profile.draftMsPerToken * opts.timeScale;
  }

  async start(): Promise<void> {
    this.#consumer = await this.#opts.broker.consume(deviceQueue(this.id), DeviceInboxSchema, (m) => this.#onReply(m), { prefetch: 64 });
  }

  async stop(): Promise<void> {
    await this.#consumer?.cancel();
    this.#consumer = null;
  }

  /** Sessions this device is serving now. */
  get activeSessions(): number {
    return this.#sessions.size;
  }

  /**
   * Cancels every session this device serves (it is shutting down) and resolves once each has
   * ended: its close sent (the server frees its cache and record) and its client told at once
   * with a `device_shutdown` error (stop reason `cancelled`), the tokens so far already sent.
   */
  async cancelSessions(): Promise<void> {
    const all = [...this.#sessions.values()];
    for (const s of all) s.cancel('device_shutdown');
    await Promise.all(all.map((s) => s.served));
    await Promise.all([...this.#uplink]);
  }

  get controller(): ControllerState {
    return this.#controller;
  }

  /** One-way network delay, ms (edge/link.ts). */
  #oneWayMs(): number {
    return oneWayDelayMs(this.#opts.profile, this.#opts.timeScale, this.#random());
  }

  #onReply(m: DeviceInbox): void {
    const target = m.sessionId ? this.#sessions.get(m.sessionId) : undefined;
    if (!target) return void this.#opts.onIgnored?.('no_session'); // a late answer for a session that ended, or a forged one: counted
    const clock = this.#opts.clock;
    const at = clock.now() + this.#oneWayMs();
    // A network link delivers in order: each message waits for the one before it, so jitter
    // (or timer rounding) never lets a stream chunk overtake an earlier one.
    target.link = target.link.then(async () => {
      const wait = at - clock.now();
      if (wait > 0) await clock.sleep(wait);
      target.deliver(m);
    }).catch((err: Error) => this.#opts.logger.warn({ err: err.message }, 'reply not delivered to its session'));
  }

  #sendUp(message: unknown): void {
    const delay = this.#oneWayMs();
    const publish = () => this.#opts.broker.publish(SCHEDULER_QUEUE, message).catch((err: Error) => this.#opts.logger.warn({ err: err.message }, 'publish failed; the session retries'));
    // Tracked until sent, so a device shutting down waits for its sessions' closes to leave.
    const sent: Promise<void> = delay > 0 ? new Promise<void>((resolve) => setTimeout(() => void publish().finally(resolve), delay)) : publish();
    this.#uplink.add(sent);
    void sent.finally(() => this.#uplink.delete(sent));
  }

  /** Messages to the server still on their (emulated) way up. */
  readonly #uplink = new Set<Promise<void>>();

  /** Serves prompts one after another; resolves when this one is done. */
  serve(prompt: PromptRequest): Promise<ServedPrompt> {
    const run = this.#busy.then(() => this.#serve(prompt));
    this.#busy = run.catch(() => {});
    return run;
  }

  async #serve(prompt: PromptRequest): Promise<ServedPrompt> {
    const o = this.#opts;
    const clock = o.clock;
    const startedAtMs = clock.now();
    const sessionId = `${this.id}.${(++sessionCounter).toString(36)}.${Math.floor(this.#random() * 1e9).toString(36)}`;
    const log = o.logger.child({ sessionId, requestId: prompt.requestId });
    const sampling: Sampling = prompt.sampling ?? { temperature: 0, topP: 1, seed: 0 };
    const slo = prompt.slo ?? o.defaultSlo;
    const client = new ClientStream(o.broker, prompt.replyTo, prompt.requestId, o.tokenizer, log);

    let promptTokens: number[];
    try {
      promptTokens = prompt.promptTokens ?? o.tokenizer.encode(prompt.prompt ?? '');
      if (promptTokens.length === 0) throw new Error('the prompt encodes to no tokens');
      const bad = promptTokens.find((t) => t >= o.draft.info.vocabSize);
      if (bad !== undefined) throw new Error(`prompt token ${bad} is outside the vocabulary (size ${o.draft.info.vocabSize})`);
    } catch (err) {
      const message = (err as Error).message;
      await client.error('malformed', message);
      const served: ServedPrompt = { requestId: prompt.requestId, sessionId, deviceId: this.id, profileName: o.profileName, tokens: [], stats: emptySessionStats(), error: { code: 'malformed', message }, stopReason: 'error', startedAtMs, endedAtMs: clock.now(), energyJ: 0, draftMs: 0, promptTokens: 0 };
      o.onServed?.(served);
      return served;
    }

    // Generation ends at the model's context as target-only decoding does: never draft past it.
    const maxNewTokens = Math.min(prompt.maxNewTokens, o.draft.info.maxPositions - promptTokens.length);
    if (maxNewTokens < 1) {
      const message = `prompt of ${promptTokens.length} tokens leaves no room in the ${o.draft.info.maxPositions}-token context`;
      await client.error('prompt_too_long', message);
      const served: ServedPrompt = { requestId: prompt.requestId, sessionId, deviceId: this.id, profileName: o.profileName, tokens: [], stats: emptySessionStats(), error: { code: 'prompt_too_long', message }, stopReason: 'error', startedAtMs, endedAtMs: clock.now(), energyJ: 0, draftMs: 0, promptTokens: promptTokens.length };
      o.onServed?.(served);
      return served;
    }

    client.bind(sessionId);
    const trace = new SessionTrace({
      sessionId,
      requestId: prompt.requestId,
      deviceId: this.id,
      deviceProfile: o.profileName,
      draftModel: o.draftModelName,
      policy: o.policy,
      promptTokens: promptTokens.length,
      maxNewTokens: maxNewTokens,
    });
    o.metrics?.sessionStarted();

    const paceMsPerToken = o.profile.draftMsPerToken * o.timeScale;
    const stopRule = stopRuleOf(() => this.#controller, paceMsPerToken, () => this.#roundOverheadMs);
    const drafter = new SessionDrafter({ runner: o.draft, sampling, stopRule, paceMsPerToken, sleep: (ms) => clock.sleep(ms), now: () => clock.now(), eosTokenId: o.draft.info.eosTokenId });
    /** Context of the round being drafted/verified (prompt + generated). */
    let roundContext: number[] = promptTokens;
    /** When the current round was first sent (its overhead is measured to the result). */
    let verifySentAtMs: number | null = null;
    /** When the open was sent (null once resent: a retried open's answer is not timed). */
    let openSentAtMs: number | null | undefined;
    /** The emulated network round trip of this device (its profile's, time-scaled), ms. */
    const rttMs = o.profile.rttMs * o.timeScale;

    const machine = edgeSessionMachine.provide({
      actions: {
        sendOpen: () => {
          openSentAtMs = openSentAtMs === undefined ? clock.now() : null;
          return trace.round(0).run(() => this.#sendUp({
            v: PROTOCOL_VERSION,
            type: 'open',
            sessionId,
            deviceId: this.id,
            requestId: prompt.requestId,
            draftModel: o.draftModelName,
            ...(prompt.model ?? o.targetModel ? { targetModel: prompt.model ?? o.targetModel } : {}),
            mode: o.mode,
            promptTokens,
            maxNewTokens: maxNewTokens,
            slo,
            sampling,
            replyTo: deviceQueue(this.id),
            sentAtMs: clock.now(),
            rttMs,
            ...(o.mode === 'adaptive' ? { drafting: { msPerToken: this.#draftMsPerToken, agreement: agreementOf(this.#agreement, o.profile.agreement), kMax: this.#controller.kMax, ...(o.pipelinedDrafting ? { pipelined: true } : {}) } } : {}),
          }));
        },
        sendVerify: (_, p) => {
          verifySentAtMs = p.attempt === 0 ? clock.now() : null;
          const span = trace.round(p.round);
          span.set({ [ATTR.drafted]: p.draft.tokens.length, [ATTR.attempt]: p.attempt });
          span.run(() => this.#sendUp({
            v: PROTOCOL_VERSION,
            type: 'verify',
            sessionId,
            deviceId: this.id,
            round: p.round,
            committedLength: p.committedLength,
            draftTokens: p.draft.tokens,
            predictedAcceptance: p.draft.predictedAcceptance.map((a) => Math.min(1, Math.max(0, a))),
            ...(p.draft.dists ? { draftDists: p.draft.dists } : {}),
            replyTo: deviceQueue(this.id),
            sentAtMs: clock.now(),
            ...(p.resume ? { resume: true } : {}),
          }));
          const eos = o.draft.info.eosTokenId;
          const endsInEos = eos !== null && p.draft.tokens[p.draft.tokens.length - 1] === eos;
          if (o.pipelinedDrafting && p.attempt === 0 && p.draft.tokens.length > 0 && !endsInEos) {
            // Room left after this round commits everything plus the bonus token.
            const room = maxNewTokens - (roundContext.length - promptTokens.length) - p.draft.tokens.length - 1;
            drafter.startLookahead([...roundContext, ...p.draft.tokens], Math.min(this.#controller.kMax + 1, room));
          }
        },
        sendClose: (_, p) => this.#sendUp({ v: PROTOCOL_VERSION, type: 'close', sessionId, deviceId: this.id, reason: p.reason }),
        emitTokens: (_, p) => client.tokens(p.tokens),
        roundVerified: (_, p) => {
          o.metrics?.roundVerified({ drafted: p.draft.tokens.length, verified: p.result.verified, accepted: p.result.accepted });
          this.#controller = learnFromRound(this.#controller, p.draft.features, p.result.accepted, p.result.verified);
          this.#agreement = countAgreement(this.#agreement, p.result.accepted, Math.min(p.result.verified, p.draft.tokens.length));
          const paced = p.draft.draftMsPerToken;
          if (paced.length > 0) this.#draftMsPerToken = 0.8 * this.#draftMsPerToken + 0.2 * (paced.reduce((a, b) => a + b, 0) / paced.length);
          if (o.onTokenJudged) {
            // Labels as the controller learns them: accepted up to the first rejection, then that one.
            const judged = Math.min(p.result.verified, p.draft.tokens.length, p.result.accepted + 1);
            for (let i = 0; i < judged; i++) o.onTokenJudged({ ...p.draft.features[i], accepted: i < p.result.accepted, deviceClass: o.profileName });
          }
          if (verifySentAtMs !== null) {
            const roundTripMs = clock.now() - verifySentAtMs;
            this.#roundOverheadMs = nextRoundOverheadMs(this.#roundOverheadMs, roundTripMs);
            o.onRoundTimed?.({
              profileName: o.profileName,
              roundTripMs,
              networkRttMs: rttMs,
              queueMs: p.result.queueMs,
              verifyMs: p.result.verifyMs,
              draftMsPerToken: p.draft.draftMsPerToken,
            });
          }
        },
      },
      actors: {
        draft: fromPromise(async ({ input }: { input: DraftInput }) => {
          roundContext = input.context;
          const span = startDraftSpan(trace.round(input.round));
          try {
            const out = await drafter.draftRound(input);
            span.end({ [ATTR.drafted]: out.tokens.length, [ATTR.draftMs]: out.draftMsPerToken.reduce((a, b) => a + b, 0), [ATTR.discarded]: out.discardedDraftMs ? 1 : 0 });
            return out;
          } catch (err) {
            span.fail((err as Error).message);
            span.end();
            throw err;
          }
        }),
      },
    });

    const actor = createActor(machine, {
      input: {
        sessionId,
        deviceId: this.id,
        requestId: prompt.requestId,
        mode: o.mode,
        promptTokens,
        maxNewTokens: maxNewTokens,
        eosTokenId: o.draft.info.eosTokenId,
        verifyTimeoutMs: o.verifyTimeoutMs,
        maxRetries: o.maxRetries,
        kMax: this.#controller.kMax,
        startedAtMs,
      },
    });
    /** Why the session was cancelled, when it was: its client left, or this device is shutting down. */
    let cancelReason: CancelReason | null = null;
    const cancel = (why: CancelReason) => {
      cancelReason ??= why;
      actor.send({ type: 'CANCEL' });
    };
    let servedDone: () => void = () => {};
    const ended = new Promise<void>((resolve) => (servedDone = resolve));
    // A client whose reply queue is gone cannot read the answer: stop generating it.
    client.onGone = () => cancel('client_gone');
    this.#sessions.set(sessionId, {
      cancel,
      served: ended,
      link: Promise.resolve(),
      deliver: (m) => {
        const atMs = clock.now();
        // The open's answer (the prefill's result, or centralized serving's first chunk) times
        // the round without drafting: how the simulator learns the broker hops of every mode.
        const opening = (m.type === 'result' && m.round === 0) || (m.type === 'stream' && m.seq === 0);
        if (opening && typeof openSentAtMs === 'number' && m.queueMs !== undefined && m.verifyMs !== undefined) {
          o.onRoundTimed?.({ profileName: o.profileName, roundTripMs: atMs - openSentAtMs, networkRttMs: rttMs, queueMs: m.queueMs, verifyMs: m.verifyMs, draftMsPerToken: [] });
          openSentAtMs = null;
        }
        if (m.type === 'result') trace.answered(m);
        if (m.type === 'result') actor.send({ type: 'RESULT', result: m, atMs });
        else if (m.type === 'stream') actor.send({ type: 'STREAM', chunk: m, atMs });
        else actor.send({ type: 'ERROR', error: m, atMs });
      },
    });
    const finished = new Promise<EdgeSessionContext>((resolve, reject) => {
      actor.subscribe({
        next: (snap) => {
          if (snap.status === 'done') resolve(snap.context);
        },
        error: reject,
      });
    });
    actor.start();
    try {
      let ctx: EdgeSessionContext;
      try {
        ctx = await finished;
      } finally {
        this.#sessions.delete(sessionId);
        await drafter.close();
        this.pipelined.reused += drafter.pipelined.reused;
        this.pipelined.discarded += drafter.pipelined.discarded;
      }
      const endedAtMs = clock.now();
      const stats = sessionStats(ctx, slo, startedAtMs);
      const energyJ = deviceEnergyJ(o.profile, ctx, endedAtMs - startedAtMs, o.timeScale);
      this.energyJ += energyJ;
      trace.end(ctx.generated.length, stats, ctx.error);
      o.metrics?.sessionEnded({
        ok: ctx.error === null,
        ttftMs: stats.ttftMs,
        tpotMs: stats.tpotMs,
        e2eMs: endedAtMs - startedAtMs,
        tokens: ctx.generated.length,
        sloAttained: stats.sloAttained,
        wastedDraftMs: stats.wastedDraftMs,
      });
      // The budget was clipped to the context when the prompt left less room than asked for.
      const stopReason: StopReason = ctx.error ? 'error' : ctx.phase === 'cancelled' ? 'cancelled' : stopReasonOf(ctx, prompt.maxNewTokens);
      if (ctx.error) {
        log.warn({ code: ctx.error.code, err: ctx.error.message }, 'session failed');
        await client.error(ctx.error.code, ctx.error.message);
      } else if (cancelReason === 'device_shutdown') {
        await client.error('device_shutdown', `device ${this.id} shut down: the answer stops after ${ctx.generated.length} tokens`, 'cancelled');
      } else if (cancelReason === 'client_gone') {
        log.info({ tokens: ctx.generated.length }, 'session cancelled: its client is gone');
      } else {
        await client.done(stats, stopReason, maxNewTokens < prompt.maxNewTokens ? { maxNewTokens } : undefined);
      }
      const served: ServedPrompt = { requestId: prompt.requestId, sessionId, deviceId: this.id, profileName: o.profileName, tokens: ctx.generated, stats, error: ctx.error, stopReason, startedAtMs, endedAtMs, energyJ, draftMs: ctx.counters.draftMs, promptTokens: ctx.promptTokens.length };
      o.onServed?.(served);
      return served;
    } finally {
      servedDone();
    }
  }
}
