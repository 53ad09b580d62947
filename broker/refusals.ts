/**
 * Refusal routing: a refused message goes to the dead-letter queue with its reason and source
 * queue in headers (REASON_HEADER, QUEUE_HEADER in topology.ts), and its sender, when known,
 * gets a typed ErrorMessage. A device that sent through the uplink hears about its own
 * refusals only (the device its routing key names, never a queue the body claims); the rule
 * is the "Hostile input" row of docs/guarantees.md.
 */
import type { ConsumeMessage } from 'amqplib';
import { ERROR_CODES, type ErrorCode, type ErrorMessage } from '../protocol/messages.ts';
import { errorMessage } from '../protocol/builders.ts';
import type { ConfirmedPublisher } from './publish.ts';
import type { BrokerReport } from './report.ts';
import { DLX_EXCHANGE, QUEUE_HEADER, REASON_HEADER, deviceQueue, queueSpec, uplinkSender } from './topology.ts';
import { WispError } from '../common/errors.ts';
import { LogBudget } from './log-budget.ts';

export interface DeadLetterEvent {
  queue: string;
  reason: string;
  messageId?: string;
}

/**
 * Thrown by a handler to answer the sender with a specific wire error code (otherwise `internal`).
 * The message is dead-lettered with reason `<code>: <message>`.
 */
export class HandlerError extends WispError {
  declare readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(code, message);
  }
}

/** The wire code a throwing handler answers with: a HandlerError's (when valid), else `internal`. */
export function handlerErrorCode(err: unknown): ErrorCode {
  return err instanceof HandlerError && (ERROR_CODES as readonly string[]).includes(err.code) ? err.code : 'internal';
}

/** The properties of a dead letter that are kept from the refused message. */
interface DeadLetterProps {
  headers?: Record<string, unknown>;
  correlationId?: string;
  replyTo?: string;
  messageId?: string;
}

/** Longest reason kept in a dead letter's header and an ErrorMessage, characters. */
const REASON_MAX_CHARS = 1_000;

/** Log lines for dead letters: at most this many per queue every 10 s (each is counted in wisp_refused_messages_total regardless). */
const DEAD_LETTER_LOG_LINES = 10;
const DEAD_LETTER_LOG_WINDOW_MS = 10_000;

export class Refusals {
  readonly deadLetterQueue: string;
  #publisher: ConfirmedPublisher;
  #report: BrokerReport;
  readonly #logBudget = new LogBudget(DEAD_LETTER_LOG_LINES, DEAD_LETTER_LOG_WINDOW_MS);

  constructor(publisher: ConfirmedPublisher, deadLetterQueue: string, report: BrokerReport) {
    this.#publisher = publisher;
    this.deadLetterQueue = deadLetterQueue;
    this.#report = report;
  }

  /** Dead-letters the JSON of a validated `message` the role refused; answering the sender stays the caller's job. */
  async deadLetter(fromQueue: string, message: unknown, reason: string): Promise<void> {
    await this.#deadLetterBody(fromQueue, Buffer.from(JSON.stringify(message)), reason, {});
  }

  /** Dead-letters a delivery's original body with the reason, then tells the sender (best effort). */
  async refuse(queue: string, msg: ConsumeMessage, reason: string, code: ErrorCode, raw: unknown): Promise<void> {
    const p = msg.properties;
    const deadLettered = this.#deadLetterBody(queue, msg.content, reason, {
      headers: (p.headers ?? {}) as Record<string, unknown>,
      correlationId: p.correlationId,
      replyTo: p.replyTo,
      messageId: p.messageId,
    });

    // A device authenticated by its uplink routing key hears about its own refusals only.
    const sender = uplinkSender(msg.fields.exchange, msg.fields.routingKey);
    const target = sender !== null ? deviceQueue(sender) : replyTarget(raw, msg.properties.replyTo);
    if (!target || target === queue || (isObject(raw) && raw.type === 'error')) return void (await deadLettered);
    const error = errorMessage(code, oneLine(reason), idsOf(raw));
    // The typed error goes out alongside the dead letter (not after it): half the latency per refusal.
    const replied = this.#publisher.publish(target, error, { correlationId: msg.properties.correlationId, mandatory: false }).catch((err: Error) =>
      this.#report.logger.warn('error reply not sent', { to: target, reason: err.message }),
    );
    try {
      await deadLettered;
    } finally {
      await replied;
    }
  }

  async #deadLetterBody(queue: string, body: Buffer, reason: string, props: DeadLetterProps): Promise<string> {
    const line = oneLine(reason);
    const headers = { ...(props.headers ?? {}), [REASON_HEADER]: line, [QUEUE_HEADER]: queue };
    await this.#publisher.publishRaw(
      DLX_EXCHANGE,
      this.deadLetterQueue,
      body,
      { persistent: true, mandatory: false, headers, correlationId: props.correlationId, replyTo: props.replyTo },
      `${DLX_EXCHANGE}/${this.deadLetterQueue}`,
    );
    const budget = this.#logBudget.take(queueSpec(queue).kind);
    if (budget.log) this.#report.logger.warn('message dead-lettered', { queue, reason: line, ...(budget.suppressed > 0 ? { notLoggedBefore: budget.suppressed } : {}) });
    this.#report.emit('dead-letter', { queue, reason: line, messageId: props.messageId } satisfies DeadLetterEvent);
    return line;
  }
}

function oneLine(reason: string): string {
  return reason.replace(/\s+/g, ' ').slice(0, REASON_MAX_CHARS);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const SAFE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const SAFE_QUEUE = /^[A-Za-z0-9._:\-/+=]{1,255}$/;

/** Where a refused message's sender listens: body.replyTo, else the AMQP replyTo, else its device queue. */
function replyTarget(raw: unknown, propsReplyTo: string | undefined): string | null {
  if (isObject(raw) && typeof raw.replyTo === 'string' && SAFE_QUEUE.test(raw.replyTo)) return raw.replyTo;
  if (propsReplyTo && SAFE_QUEUE.test(propsReplyTo)) return propsReplyTo;
  if (isObject(raw) && typeof raw.deviceId === 'string' && SAFE_ID.test(raw.deviceId)) return deviceQueue(raw.deviceId);
  return null;
}

/** The ids of a refused message that the ErrorMessage schema accepts (invalid ones are left out). */
function idsOf(raw: unknown): Pick<ErrorMessage, 'sessionId' | 'requestId' | 'round'> {
  if (!isObject(raw)) return {};
  const out: Pick<ErrorMessage, 'sessionId' | 'requestId' | 'round'> = {};
  if (typeof raw.sessionId === 'string' && SAFE_ID.test(raw.sessionId)) out.sessionId = raw.sessionId;
  if (typeof raw.requestId === 'string' && SAFE_ID.test(raw.requestId)) out.requestId = raw.requestId;
  if (typeof raw.round === 'number' && Number.isSafeInteger(raw.round) && raw.round >= 0) out.round = raw.round;
  return out;
}
