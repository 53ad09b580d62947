/**
 * Structured JSON logs (pino) on stderr, one logger per role; `child({ sessionId })` adds
 * ids to every line. stdout stays free for command output (`--json` lines).
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

export function createLogger(role: string, level: LogLevel = 'info'): Logger {
  return pino({ name: role, level, base: { role, pid: process.pid } }, pino.destination({ fd: 2, sync: false }));
}
