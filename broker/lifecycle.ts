/**
 * The connection's lifecycle: one AMQP connection with amqplib's own recovery (reconnects with
 * backoff; forever once the first connection was made), its heartbeat and TLS, and the state the
 * other parts of the client check before they restart anything (`closed`, the current model).
 *
 * amqplib brings back only what its `setup` callback creates, so the client (connection.ts)
 * passes a setup that re-creates the publisher, the topology and every consumer on each fresh
 * connection; docs/guarantees.md (broker restart) is what that buys.
 */
import { readFileSync } from 'node:fs';
import { connect, type ChannelModel, type RecoveringChannelModel } from 'amqplib';
import { BrokerConnectError, BrokerRefusedError, redactUrl, refusalOf } from './errors.ts';
import type { BrokerReport } from './report.ts';

export interface LifecycleOptions {
  /** Shown by `rabbitmqctl list_connections client_properties` and the management UI. */
  connectionName?: string;
  /** First reconnect delay, ms (default 100). */
  initialDelayMs?: number;
  /** Longest reconnect delay, ms (default 2000; amqplib's own default reaches 30 s). */
  maxDelayMs?: number;
  /** Retries before the first connection fails `connectBroker` (default 5); afterwards it retries forever. */
  initialRetries?: number;
  /** AMQP heartbeat, s, added to the URL when it has none (default 10): detects a silent peer. */
  heartbeatS?: number;
  /** TLS (amqps:// URLs): a CA file to trust besides the system's. */
  tls?: { caPath?: string };
}

/** What the other parts of the client read about the connection. */
export interface ConnectionState {
  /** True once close() began (or the first connection failed): nothing restarts any more. */
  readonly closed: boolean;
  /** The channel model that is up and set up; null while connecting, reconnecting or closed. */
  readonly model: ChannelModel | null;
}

export interface LifecycleHooks {
  /**
   * (Re)creates everything on a fresh connection and calls `markUp(model)` once it is usable;
   * a rejection makes amqplib drop this connection and try again.
   */
  setup(model: ChannelModel): Promise<void>;
  /** The connection dropped; `model` is already null. */
  onDisconnect(): void;
}

export class BrokerLifecycle implements ConnectionState {
  readonly url: string;
  #options: LifecycleOptions;
  #report: BrokerReport;
  #conn: RecoveringChannelModel | null = null;
  #model: ChannelModel | null = null;
  #closed = false;
  /** The first connection was made: later refusals (a password changed meanwhile) are retried like any failure. */
  #everUp = false;

  constructor(url: string, options: LifecycleOptions, report: BrokerReport) {
    this.url = url;
    this.#options = options;
    this.#report = report;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get model(): ChannelModel | null {
    return this.#model;
  }

  /** Opens the connection and resolves once the first setup finished (BrokerConnectError otherwise). */
  async open(hooks: LifecycleHooks): Promise<void> {
    const o = this.#options;
    const socketOptions: Record<string, unknown> = {
      noDelay: true, // without it a request/reply round trip costs ~41 ms (Nagle)
      timeout: 5_000,
      clientProperties: { connection_name: o.connectionName ?? `wisp-${process.pid}` },
    };
    if (o.tls?.caPath) socketOptions.ca = [readFileSync(o.tls.caPath)];
    const conn = await connect(withHeartbeat(this.url, o.heartbeatS ?? 10), {
      ...socketOptions,
      recovery: {
        initialDelay: o.initialDelayMs ?? 100,
        maxDelay: o.maxDelayMs ?? 2_000,
        initialMaxRetries: o.initialRetries ?? 5,
        maxRetries: Infinity,
        waitForConnect: false,
        setup: (model: ChannelModel) => this.#setup(model, hooks),
      },
    });
    this.#conn = conn;
    conn.on('error', (err: Error) => this.#report.error(err)); // a socket error must never crash the process
    conn.on('handler-error', (err: Error, event: string) => this.#report.error(new Error(`listener of ${event} threw: ${err.message}`)));
    conn.on('disconnect', (err: Error) => {
      this.#model = null;
      hooks.onDisconnect();
      this.#report.logger.warn('disconnected', { reason: err.message });
      this.#report.emit('disconnect', err);
    });
    conn.on('reconnect-scheduled', (info: { attempt: number; delay: number }) =>
      this.#report.emit('reconnect-scheduled', { attempt: info.attempt, delayMs: info.delay }),
    );
    // A refusal (credentials, virtual host) ends the first connection at once: retrying cannot help.
    let refuse: (err: Error) => void = () => {};
    const refused = new Promise<never>((_, reject) => (refuse = reject));
    refused.catch(() => {});
    // A virtual host refused twice in a row is final (once may be a broker still starting its vhosts).
    let vhostRefusals = 0;
    conn.on('connect-failed', (err: Error) => {
      const refusal = this.#model === null && !this.#everUp ? refusalOf(this.url, err) : null;
      if (refusal?.kind === 'login' || (refusal?.kind === 'vhost' && ++vhostRefusals >= 2)) return refuse(refusal.error);
      this.#report.logger.warn('connect attempt failed', { reason: err.message });
    });
    try {
      await Promise.race([conn.waitForConnect(), refused]);
      this.#everUp = true;
    } catch (err) {
      this.#closed = true;
      if (err instanceof BrokerRefusedError) {
        await conn.close().catch(() => {});
        throw err;
      }
      throw new BrokerConnectError(this.url, err);
    }
  }

  async #setup(model: ChannelModel, hooks: LifecycleHooks): Promise<void> {
    // amqplib binds its own listener only after setup; until then an 'error' without one would crash.
    model.on('error', () => {});
    await hooks.setup(model);
    this.#report.logger.info('connected', { url: redactUrl(this.url) });
    this.#report.emit('connect');
  }

  /** The end of a setup: `model` is the one the other parts now use. */
  markUp(model: ChannelModel): void {
    this.#model = model;
  }

  /** The start of close(): from now on nothing restarts. */
  markClosed(): void {
    this.#closed = true;
  }

  /** Forgets the model and closes the connection (errors ignored: it may be gone already). */
  async shutDown(): Promise<void> {
    this.#model = null;
    await this.#conn?.close().catch(() => {});
  }
}

/** `url` with `heartbeat=<heartbeatS>` added when it names none (unparsable URLs pass unchanged). */
export function withHeartbeat(url: string, heartbeatS: number): string {
  try {
    const u = new URL(url);
    if (!u.searchParams.has('heartbeat')) u.searchParams.set('heartbeat', String(heartbeatS));
    return u.toString();
  } catch {
    return url;
  }
}
