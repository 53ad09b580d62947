/**
 * Publishing that outlasts a broker restart: resent until the broker confirms it, backing off
 * from 100 ms to 2 s, for at most `giveUpMs`. Gives up at once where resending cannot help — the
 * queue is gone (`gone`), may not be reached, the body is too large, or the client closed. A
 * copy that did arrive before its confirm was lost is delivered twice: receivers drop copies
 * (chunks by offset, prompts by the client's offsets, rounds by number).
 */
import { errorCode } from '../common/errors.ts';
import type { BrokerTransport } from './transport.ts';

export type RetriedPublish = 'sent' | 'failed' | 'gone';

export async function publishUntilConfirmed(broker: Pick<BrokerTransport, 'publish'>, queue: string, message: unknown, onGiveUp: (err: Error, outcome: 'failed' | 'gone') => void, giveUpMs = 60_000): Promise<RetriedPublish> {
  const deadline = Date.now() + giveUpMs;
  for (let delayMs = 100; ; delayMs = Math.min(delayMs * 2, 2_000)) {
    try {
      await broker.publish(queue, message);
      return 'sent';
    } catch (err) {
      const code = errorCode(err);
      const final = code === 'unroutable' || code === 'forbidden_route' || code === 'too_large' || code === 'broker_closed';
      if (final || Date.now() + delayMs > deadline) {
        const outcome = code === 'unroutable' ? 'gone' : 'failed';
        onGiveUp(err as Error, outcome);
        return outcome;
      }
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }
}
