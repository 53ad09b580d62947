/**
 * What an edge device sends the client of one prompt: its tokens as text chunks, then a final
 * chunk with the session's stats or a typed error. Everything goes out in order, each message
 * resent until the broker confirms it, so a broker restart loses no token; chunks carry the
 * token and text offsets they start at, so the client drops (or trims) a copy.
 */
import { publishUntilConfirmed } from '../../broker/publish-retry.ts';
import type { WispTokenizer } from '../../inference/tokenizer.ts';
import { errorMessage } from '../../protocol/builders.ts';
import { PROTOCOL_VERSION, type ClientInbox, type ErrorCode, type SessionStats, type StopReason, type TokenChunk } from '../../protocol/messages.ts';
import type { BrokerTransport } from '../../broker/transport.ts';
import type { Logger } from '../../telemetry/logger.ts';

export class ClientStream {
  #replies: Promise<void> = Promise.resolve();
  readonly #tokens: number[] = [];
  #text = '';
  /** The client's reply queue is gone (its client left): nothing more is sent, and `onGone` ran once. */
  #gone = false;
  /** Called once when the client's reply queue turns out to be gone (the device then cancels the session). */
  onGone: () => void = () => {};

  constructor(
    private readonly broker: BrokerTransport,
    private readonly replyTo: string,
    private readonly requestId: string,
    private readonly tokenizer: WispTokenizer,
    private readonly log: Logger,
    private sessionId?: string,
  ) {}

  /** The session the stream is for, once it has one (errors before that name only the request). */
  bind(sessionId: string): void {
    this.sessionId = sessionId;
  }

  #send(m: ClientInbox): Promise<void> {
    this.#replies = this.#replies.then(async () => {
      if (this.#gone) return;
      const sent = await publishUntilConfirmed(this.broker, this.replyTo, m, (err, outcome) =>
        this.log.warn({ err: err.message, queue: this.replyTo }, outcome === 'gone' ? 'client reply queue gone: the session is cancelled' : 'client reply failed'),
      );
      if (sent === 'gone') {
        this.#gone = true;
        this.onGone();
      }
    });
    return this.#replies;
  }

  /** New tokens, with the text they add. */
  tokens(tokens: readonly number[]): void {
    this.#tokens.push(...tokens);
    // Decode the whole output each time: a token may complete a multi-byte character.
    const full = this.tokenizer.decode(this.#tokens);
    const textOffset = this.#text.length;
    const delta = full.slice(textOffset);
    this.#text = full;
    void this.#send({ v: PROTOCOL_VERSION, type: 'chunk', requestId: this.requestId, sessionId: this.sessionId ?? this.requestId, tokens: [...tokens], text: delta, offset: this.#tokens.length - tokens.length, textOffset, done: false });
  }

  /** The last chunk: nothing new, the session's stats, why it stopped and what the device clipped. */
  done(stats: SessionStats, stopReason: StopReason, clipped?: TokenChunk['clipped']): Promise<void> {
    return this.#send({ v: PROTOCOL_VERSION, type: 'chunk', requestId: this.requestId, sessionId: this.sessionId ?? this.requestId, tokens: [], text: '', offset: this.#tokens.length, textOffset: this.#text.length, done: true, stats, stopReason, ...(clipped ? { clipped } : {}) });
  }

  /** A typed error ends the stream (stop reason `error`, or `cancelled` for an answer cut short on purpose). */
  error(code: ErrorCode, message: string, stopReason: 'error' | 'cancelled' = 'error'): Promise<void> {
    return this.#send({ ...errorMessage(code, message, { requestId: this.requestId, ...(this.sessionId !== undefined ? { sessionId: this.sessionId } : {}) }), stopReason });
  }
}
