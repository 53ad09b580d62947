/**
 * The trace of one edge session: a root span for the session and a span per round (0 = the
 * open), each ended by its first result (duplicates find it gone); rounds never answered end as
 * such. No-ops when tracing is off (telemetry/spans.ts).
 */
import type { SessionStats, VerifyResult } from '../../protocol/messages.ts';
import { ATTR, startRoundSpan, startSessionSpan, type SpanHandle } from '../../telemetry/spans.ts';

export class SessionTrace {
  readonly #session: SpanHandle;
  readonly #rounds = new Map<number, SpanHandle>();

  constructor(attrs: Parameters<typeof startSessionSpan>[0]) {
    this.#session = startSessionSpan(attrs);
  }

  /** The span of round `round` (opened on first use). */
  round(round: number): SpanHandle {
    let span = this.#rounds.get(round);
    if (!span) {
      span = startRoundSpan(this.#session, round);
      this.#rounds.set(round, span);
    }
    return span;
  }

  /** A result arrived: its round's span ends with what the worker reported. */
  answered(r: Pick<VerifyResult, 'round' | 'accepted' | 'verified' | 'queueMs' | 'verifyMs' | 'batchSize' | 'workerId'>): void {
    const span = this.#rounds.get(r.round);
    if (!span) return;
    this.#rounds.delete(r.round);
    span.end({ [ATTR.accepted]: r.accepted, [ATTR.verified]: r.verified, [ATTR.queueMs]: r.queueMs, [ATTR.verifyMs]: r.verifyMs, [ATTR.batchSize]: r.batchSize, [ATTR.workerId]: r.workerId });
  }

  /** The session ended: open rounds end unanswered, the session span with its outcome. */
  end(generatedTokens: number, stats: SessionStats, error: { code: string; message: string } | null): void {
    for (const span of this.#rounds.values()) span.end({ [ATTR.outcome]: 'unanswered' });
    this.#rounds.clear();
    if (error) this.#session.fail(error.message, error.code);
    this.#session.end({
      [ATTR.generatedTokens]: generatedTokens,
      [ATTR.ttftMs]: stats.ttftMs,
      [ATTR.tpotMs]: stats.tpotMs,
      [ATTR.sloAttained]: stats.sloAttained,
      [ATTR.rounds]: stats.rounds,
      [ATTR.drafted]: stats.drafted,
      [ATTR.accepted]: stats.accepted,
    });
  }
}
