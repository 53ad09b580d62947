/**
 * What happens to one delivery: its body is size-checked and validated, the role's handler runs
 * inside the message's trace context, a refused body or a throwing handler is refused
 * (refusals.ts), and the delivery is acked once all that is done. If even the dead letter
 * cannot be published, the delivery is nacked so the queue's own DLX arguments keep it.
 */
import type { Channel, ConsumeMessage } from 'amqplib';
import type { z } from 'zod';
import { parseMessage, type ErrorCode } from '../protocol/messages.ts';
import type { DeliveryHandler } from './consumers.ts';
import { handlerErrorCode, type Refusals } from './refusals.ts';
import type { BrokerReport } from './report.ts';
import { withTraceContext } from './trace-context.ts';
import type { DeliveryMeta, MessageHandler } from './transport.ts';

/** The handler of deliveries from `queue`, for ConsumerRegistry.add (consumers.ts). */
export function deliveryHandler<T>(queue: string, schema: z.ZodType<T>, handler: MessageHandler<T>, refusals: Refusals, report: BrokerReport): DeliveryHandler {
  return (ch, msg) => handleDelivery(queue, schema, handler, refusals, report, ch, msg);
}

async function handleDelivery<T>(
  queue: string,
  schema: z.ZodType<T>,
  handler: MessageHandler<T>,
  refusals: Refusals,
  report: BrokerReport,
  ch: Channel,
  msg: ConsumeMessage,
): Promise<void> {
  const parsed = parseMessage(schema, msg.content);
  let refusal: { reason: string; code: ErrorCode; raw: unknown } | null = null;
  if (!parsed.ok) {
    refusal = { reason: parsed.reason, code: parsed.reason.startsWith('too_large') ? 'too_large' : 'malformed', raw: parsed.raw };
  } else {
    const props = msg.properties;
    const meta: DeliveryMeta = {
      queue,
      exchange: msg.fields.exchange,
      routingKey: msg.fields.routingKey,
      headers: (props.headers ?? {}) as Record<string, unknown>,
      correlationId: props.correlationId,
      replyTo: props.replyTo,
      messageId: props.messageId,
      redelivered: msg.fields.redelivered,
    };
    try {
      await withTraceContext(meta.headers, () => handler(parsed.value, meta));
    } catch (err) {
      const code = handlerErrorCode(err);
      refusal = { reason: `${code}: ${(err as Error)?.message ?? String(err)}`, code, raw: safeJson(msg.content) };
    }
  }
  if (refusal) {
    try {
      await refusals.refuse(queue, msg, refusal.reason, refusal.code, refusal.raw);
    } catch (err) {
      // Could not dead-letter with a reason: let the queue's DLX arguments take it instead of losing it.
      report.error(new Error(`dead-letter from ${queue} failed (${(err as Error).message}); nacking`));
      try {
        ch.nack(msg, false, false);
      } catch {
        // Channel gone: the broker redelivers the message after the reconnect.
      }
      return;
    }
  }
  try {
    ch.ack(msg);
  } catch {
    // Channel gone mid-handler: the broker redelivers it (redelivered=true); the protocol tolerates duplicates.
  }
}

function safeJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}
