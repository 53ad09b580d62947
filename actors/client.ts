/**
 * The client role: publishes PromptRequests through the broker and collects each request's
 * TokenChunks from its own result queue until the last one (or a typed error) arrives.
 */
import { randomUUID } from 'node:crypto';
import { publishUntilConfirmed } from '../broker/publish-retry.ts';
import { ClientInboxSchema, PROTOCOL_VERSION, type PromptRequest, type Sampling, type SessionStats, type Slo, type StopReason } from '../protocol/messages.ts';
import type { BrokerTransport, ConsumerHandle } from '../broker/transport.ts';
import { PROMPTS_QUEUE, clientQueue, devicePromptQueue } from '../broker/topology.ts';
import { wallClock, type Clock } from './clock.ts';

export interface PromptSpec {
  prompt?: string;
  promptTokens?: number[];
  maxNewTokens: number;
  sampling?: Sampling;
  slo?: Slo;
  model?: string;
  /** Send to this device's own queue instead of the shared one. */
  deviceId?: string;
}

export interface ClientResult {
  requestId: string;
  sessionId: string | null;
  tokens: number[];
  text: string;
  /** From the device's stats (device clock), null when the request failed. */
  stats: SessionStats | null;
  error: { code: string; message: string } | null;
  /** Why the answer ended (`error` for a failed request, also one the client gave up on). */
  stopReason: StopReason;
  /** What the device served instead of a value it clipped (maxNewTokens to the model's context). */
  clipped?: { maxNewTokens: number };
  /** Client-side wall time from publish to the last chunk, ms. */
  elapsedMs: number;
}

interface Pending {
  tokens: number[];
  text: string;
  sessionId: string | null;
  startedMs: number;
  resolve: (r: ClientResult) => void;
  timer: NodeJS.Timeout;
}

export class WispClient {
  readonly clientId: string;
  #broker: BrokerTransport;
  #clock: Clock;
  #pending = new Map<string, Pending>();
  #consumer: ConsumerHandle | null = null;

  constructor(broker: BrokerTransport, clientId = `c${randomUUID().slice(0, 12)}`, clock: Clock = wallClock) {
    this.clientId = clientId;
    this.#broker = broker;
    this.#clock = clock;
  }

  get replyQueue(): string {
    return clientQueue(this.clientId);
  }

  async start(): Promise<void> {
    await this.#broker.declareQueue(this.replyQueue);
    this.#consumer = await this.#broker.consume(
      this.replyQueue,
      ClientInboxSchema,
      (m) => {
        const id = m.requestId;
        const p = id ? this.#pending.get(id) : undefined;
        if (!p || !id) return;
        if (m.type === 'error') return this.#settle(id, p, null, { code: m.code, message: m.message });
        p.sessionId = m.sessionId;
        let tokens = m.tokens;
        let text = m.text;
        if (m.offset !== undefined && m.offset !== p.tokens.length) {
          // Ahead: a chunk was lost.
          if (m.offset > p.tokens.length) return this.#settle(id, p, null, { code: 'internal', message: `tokens ${p.tokens.length}..${m.offset - 1} of request ${id} never arrived` });
          // Behind: a resent chunk, or one of a second run of the prompt (redelivered to a device
          // after a broker restart), whose chunks are cut differently. Keep only what is new; what
          // overlaps must be what is here (decoding is deterministic), or the answer is not one.
          const have = p.tokens.length - m.offset;
          if (m.tokens.length <= have && !m.done) return;
          const overlap = m.tokens.slice(0, have);
          if (overlap.some((t, i) => t !== p.tokens[m.offset! + i])) {
            return this.#settle(id, p, null, { code: 'internal', message: `a resent chunk of request ${id} disagrees with tokens ${m.offset}..${m.offset + overlap.length - 1}` });
          }
          tokens = m.tokens.slice(have);
          if (m.textOffset === undefined || m.textOffset > p.text.length) {
            if (tokens.length > 0) return this.#settle(id, p, null, { code: 'internal', message: `a resent chunk of request ${id} overlaps without a text offset` });
            text = '';
          } else text = m.text.slice(p.text.length - m.textOffset);
        }
        p.tokens.push(...tokens);
        p.text += text;
        // A last chunk always carries its stop reason (TokenChunkSchema refuses one without).
        if (m.done) this.#settle(id, p, m.stats ?? null, null, { stopReason: m.stopReason!, ...(m.clipped ? { clipped: m.clipped } : {}) });
      },
      { prefetch: 256 },
    );
  }

  #settle(id: string, p: Pending, stats: SessionStats | null, error: ClientResult['error'], end: Pick<ClientResult, 'stopReason' | 'clipped'> = { stopReason: 'error' }): void {
    clearTimeout(p.timer);
    this.#pending.delete(id);
    p.resolve({ requestId: id, sessionId: p.sessionId, tokens: p.tokens, text: p.text, stats, error, ...end, elapsedMs: this.#clock.now() - p.startedMs });
  }

  /** Publishes one prompt; resolves with its whole answer (or its error, or a timeout). */
  async submit(spec: PromptSpec, timeoutMs = 120_000, requestId?: string): Promise<ClientResult> {
    return (await this.send(spec, timeoutMs, requestId)).result;
  }

  /** Publishes one prompt; resolves once the broker confirmed it, with the answer still to come. */
  async send(spec: PromptSpec, timeoutMs = 120_000, requestId = `r${randomUUID().slice(0, 12)}`): Promise<{ requestId: string; result: Promise<ClientResult> }> {
    const message: PromptRequest = {
      v: PROTOCOL_VERSION,
      type: 'prompt',
      requestId,
      ...(spec.prompt !== undefined ? { prompt: spec.prompt } : {}),
      ...(spec.promptTokens !== undefined ? { promptTokens: spec.promptTokens } : {}),
      maxNewTokens: spec.maxNewTokens,
      ...(spec.sampling ? { sampling: spec.sampling } : {}),
      ...(spec.slo ? { slo: spec.slo } : {}),
      ...(spec.model ? { model: spec.model } : {}),
      ...(spec.deviceId ? { deviceId: spec.deviceId } : {}),
      replyTo: this.replyQueue,
    };
    const result = new Promise<ClientResult>((resolve) => {
      const p: Pending = {
        tokens: [],
        text: '',
        sessionId: null,
        startedMs: this.#clock.now(),
        resolve,
        timer: setTimeout(() => this.#settle(requestId, p, null, { code: 'timeout', message: `no answer within ${timeoutMs} ms` }), timeoutMs),
      };
      this.#pending.set(requestId, p);
    });
    // Resent until confirmed, so a broker restart does not fail the request (a copy that did
    // arrive is served twice; this client keeps one answer by its offsets).
    let failure: Error | null = null;
    const sent = await publishUntilConfirmed(this.#broker, spec.deviceId ? devicePromptQueue(spec.deviceId) : PROMPTS_QUEUE, message, (err) => (failure = err), timeoutMs);
    if (sent !== 'sent') {
      const p = this.#pending.get(requestId);
      if (p) {
        clearTimeout(p.timer);
        this.#pending.delete(requestId);
      }
      throw failure ?? new Error(`prompt ${requestId} not published`);
    }
    return { requestId, result };
  }

  async close(): Promise<void> {
    await this.#consumer?.cancel();
    for (const [id, p] of this.#pending) this.#settle(id, p, null, { code: 'cancelled', message: 'client closed' }, { stopReason: 'cancelled' });
  }

  /**
   * Gives up on every answer still coming (Ctrl-C): deletes this client's reply queue, so each
   * device serving one of its requests cancels that session at its next chunk (the server frees
   * its cache and record), and settles them as cancelled.
   */
  async abandon(): Promise<void> {
    await this.#consumer?.cancel();
    this.#consumer = null;
    await this.#broker.deleteQueue(this.replyQueue).catch(() => {});
    for (const [id, p] of this.#pending) this.#settle(id, p, null, { code: 'cancelled', message: 'the client gave up on its answers' }, { stopReason: 'cancelled' });
  }
}
