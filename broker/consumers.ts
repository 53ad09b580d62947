/**
 * The consumer registry: every consume() call is kept as a record, so each consumer comes back
 * (one channel of its own, with its own prefetch) after a reconnect and after a channel-level
 * error, until it is cancelled. It also counts deliveries whose handling is still running, so
 * close() can wait for them. What a delivery does is the caller's `handle` (delivery.ts).
 */
import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import { BrokerClosedError } from './errors.ts';
import type { ConnectionState } from './lifecycle.ts';
import type { BrokerReport } from './report.ts';
import { declaredChannel, queueSpec } from './topology.ts';
import type { ConsumerHandle } from './transport.ts';

/** Handles one delivery on the channel it came on; acks or nacks it itself and never rejects. */
export type DeliveryHandler = (channel: Channel, msg: ConsumeMessage) => Promise<void>;

/** Wait before a consumer whose channel closed under a live connection is started again, ms. */
const CHANNEL_RESTART_DELAY_MS = 500;

interface ConsumerRecord {
  queue: string;
  prefetch: number;
  deliver: (channel: Channel, msg: ConsumeMessage) => void;
  cancelled: boolean;
  /** Open channels consuming for this record (normally one; two briefly around a reconnect). */
  channels: Set<Channel>;
  startedOn: ChannelModel | null;
}

export class ConsumerRegistry {
  #state: ConnectionState;
  #report: BrokerReport;
  #records = new Set<ConsumerRecord>();
  #inFlight = new Set<Promise<void>>();

  constructor(state: ConnectionState, report: BrokerReport) {
    this.#state = state;
    this.#report = report;
  }

  /**
   * Registers a consumer of `queue` (declared first, with its topology arguments) and starts it
   * when a connection is up; otherwise the next setup starts it.
   */
  async add(queue: string, prefetch: number, handle: DeliveryHandler): Promise<ConsumerHandle> {
    if (this.#state.closed) throw new BrokerClosedError(`consume ${queue}`);
    const record: ConsumerRecord = {
      queue,
      prefetch,
      cancelled: false,
      channels: new Set(),
      startedOn: null,
      deliver: (ch, msg) => {
        const done = handle(ch, msg);
        this.#inFlight.add(done);
        void done.finally(() => this.#inFlight.delete(done));
      },
    };
    this.#records.add(record);
    const model = this.#state.model;
    if (model) {
      try {
        await this.#start(record, model);
      } catch (err) {
        // Lost connection meanwhile: setup restarts it. Any other failure is the caller's to see.
        if (this.#state.model && record.startedOn !== this.#state.model) {
          this.#records.delete(record);
          throw err;
        }
      }
    }
    return {
      queue,
      cancel: async () => {
        record.cancelled = true;
        this.#records.delete(record);
        const channels = [...record.channels];
        record.channels.clear();
        await Promise.all(channels.map((ch) => ch.close().catch(() => {})));
      },
    };
  }

  /** Starts every consumer on a fresh `model` (part of setup), including ones added meanwhile. */
  async startAll(model: ChannelModel): Promise<void> {
    // Loop until every consumer is on this model: add() calls made meanwhile join the set.
    for (;;) {
      const pending = [...this.#records].filter((r) => !r.cancelled && r.startedOn !== model);
      if (pending.length === 0) break;
      for (const record of pending) {
        try {
          await this.#start(record, model);
        } catch (err) {
          // One bad queue must not keep the whole client offline (setup failure = reconnect loop).
          record.startedOn = model;
          this.#report.error(new Error(`consumer on ${record.queue} did not restart: ${(err as Error).message}`));
        }
      }
    }
  }

  /** Marks every consumer cancelled (close): none restarts, their channels go with the connection. */
  stopAll(): void {
    for (const r of this.#records) r.cancelled = true;
  }

  /** Waits for deliveries still being handled, at most `graceMs`. */
  async drain(graceMs: number): Promise<void> {
    if (this.#inFlight.size === 0) return;
    await Promise.race([Promise.allSettled([...this.#inFlight]), new Promise((r) => setTimeout(r, graceMs).unref())]);
  }

  async #start(record: ConsumerRecord, model: ChannelModel): Promise<void> {
    const ch = await declaredChannel(model, queueSpec(record.queue));
    ch.on('error', (err: Error) => this.#report.error(new Error(`consumer channel of ${record.queue}: ${err.message}`)));
    ch.on('close', () => {
      record.channels.delete(ch);
      // Closed by a channel-level error while the connection lives: one restart attempt, else wait for reconnect.
      if (record.cancelled || this.#state.closed || this.#state.model !== model || record.channels.size > 0) return;
      setTimeout(() => {
        if (record.cancelled || this.#state.closed || this.#state.model !== model || record.channels.size > 0) return;
        this.#start(record, model).catch((err: Error) => this.#report.error(new Error(`consumer on ${record.queue} stopped: ${err.message}`)));
      }, CHANNEL_RESTART_DELAY_MS).unref();
    });
    try {
      await ch.prefetch(record.prefetch);
      await ch.consume(
        record.queue,
        (msg) => {
          // null: the server cancelled the consumer (queue deleted); it comes back at the next reconnect.
          if (msg === null) this.#report.emit('consumer-cancelled', { queue: record.queue });
          else record.deliver(ch, msg);
        },
        { noAck: false },
      );
      if (record.cancelled) {
        await ch.close().catch(() => {});
        return;
      }
      record.channels.add(ch);
      record.startedOn = model;
    } catch (err) {
      ch.close().catch(() => {});
      throw err;
    }
  }
}
