import { WispError } from '../common/errors.ts';
/**
 * Typed errors of the broker layer. Each has a stable `code`; messages name the queue and
 * the problem so a log line is enough to act on.
 */
export type BrokerErrorCode =
  | 'broker_unreachable'
  | 'broker_refused'
  | 'broker_closed'
  | 'broker_unavailable'
  | 'unroutable'
  | 'forbidden_route'
  | 'too_large'
  | 'publish_failed'
  | 'consume_failed';

export class BrokerError extends WispError {
  declare readonly code: BrokerErrorCode;
  constructor(code: BrokerErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** The first connection could not be made (after the initial retries). */
export class BrokerConnectError extends BrokerError {
  constructor(url: string, cause: unknown) {
    super('broker_unreachable', `broker: cannot connect to ${redactUrl(url)}: ${(cause as Error)?.message ?? String(cause)}`, { cause });
  }
}

/**
 * The broker answered and refused us: wrong credentials, or a virtual host that does not exist
 * or this user may not use. Retrying cannot help, so the first refusal is final.
 */
export class BrokerRefusedError extends BrokerError {
  constructor(message: string, cause: unknown) {
    super('broker_refused', message, { cause });
  }
}

/**
 * The refusal a failed connection attempt stands for, or null when it may be worth retrying.
 * amqplib reports a refused login as a handshake ended with 403 ACCESS-REFUSED, and a refused
 * virtual host only as a ConnectionClose where ConnectionOpenOk was due.
 */
export function refusalOf(url: string, err: unknown): { kind: 'login' | 'vhost'; error: BrokerRefusedError } | null {
  const message = (err as Error)?.message ?? String(err);
  let user = 'guest';
  let vhost = '/';
  try {
    const u = new URL(url);
    user = decodeURIComponent(u.username) || 'guest';
    vhost = u.pathname.length > 1 ? decodeURIComponent(u.pathname.slice(1)) : '/';
  } catch {
    // an unparsable URL fails elsewhere with its own message
  }
  if (/ACCESS[-_]REFUSED|\b403\b/.test(message)) {
    return { kind: 'login', error: new BrokerRefusedError(`broker: ${redactUrl(url)} refused the login of user "${user}" (wrong user name or password)`, err) };
  }
  if (/Expected ConnectionOpenOk; got <ConnectionClose/.test(message)) {
    return { kind: 'vhost', error: new BrokerRefusedError(`broker: ${redactUrl(url)} refused virtual host "${vhost}": it does not exist, or user "${user}" may not use it`, err) };
  }
  return null;
}

/** The client was closed; nothing more can be published or consumed. */
export class BrokerClosedError extends BrokerError {
  constructor(what: string) {
    super('broker_closed', `broker: ${what}: client is closed`);
  }
}

/** No connection came back within the publish timeout. */
export class BrokerUnavailableError extends BrokerError {
  constructor(queue: string, waitedMs: number) {
    super('broker_unavailable', `broker: publish to ${queue}: no connection within ${waitedMs} ms`);
  }
}

/** A mandatory publish found no queue (e.g. a device or client queue that is gone). */
export class UnroutableError extends BrokerError {
  readonly queue: string;
  constructor(queue: string) {
    super('unroutable', `broker: publish to ${queue}: no such queue (message returned unroutable)`);
    this.queue = queue;
  }
}

/** An uplink client (device, client role) was asked to publish to a queue it may not reach. */
export class ForbiddenRouteError extends BrokerError {
  readonly queue: string;
  constructor(queue: string) {
    super('forbidden_route', `broker: publish to ${queue}: not reachable through the uplink exchange (devices and clients send only to the scheduler, prompt and client queues)`);
    this.queue = queue;
  }
}

export class MessageTooLargeError extends BrokerError {
  constructor(queue: string, bytes: number, limitBytes: number) {
    super('too_large', `broker: publish to ${queue}: body is ${bytes} bytes, limit ${limitBytes}`);
  }
}

/** The broker nacked the message or the channel closed before its confirm arrived. */
export class PublishError extends BrokerError {
  constructor(queue: string, cause: unknown) {
    super('publish_failed', `broker: publish to ${queue} not confirmed: ${(cause as Error)?.message ?? String(cause)}`, { cause });
  }
}

/** `amqp://user:secret@host` → `amqp://user:***@host`, so URLs can go into messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
  }
}
