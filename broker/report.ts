/**
 * How the parts of the broker client (lifecycle.ts, publish.ts, consumers.ts, refusals.ts)
 * report what happens to them: log lines, errors nobody awaits, and the client's events. The
 * client (connection.ts) makes one BrokerReport and hands it to each part, so none of them
 * needs the client itself.
 */

/** Where the client reports what happens to it; default: one line on stderr per warning. */
export interface BrokerLogger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

export const defaultLogger: BrokerLogger = {
  info: () => {},
  warn: (message, fields) => process.stderr.write(`broker: ${message}${fields ? ` ${JSON.stringify(fields)}` : ''}\n`),
};

export interface BrokerReport {
  readonly logger: BrokerLogger;
  /** An error no caller awaits: the client's `error` event when someone listens, else a warning. */
  error(err: Error): void;
  /** One of the client's events (`connect`, `disconnect`, `dead-letter`, ...). */
  emit(event: string, ...args: unknown[]): void;
}
