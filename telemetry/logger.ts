/**
 * Structured JSON logs (pino) on stderr, one logger per role; `child({ sessionId })` adds
 * ids to every line, and while a span is active its `trace_id`/`span_id` are added too (the
 * OpenTelemetry log-correlation field names), so a log line leads to its trace in Jaeger.
 * On a terminal the lines are formatted for people instead (formatLogLine); stdout stays free
 * for command output (`--json` lines).
 */
import { pino, type DestinationStream, type Logger } from 'pino';
import { activeTraceIds } from './spans.ts';

export type { Logger };

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

export interface LoggerOptions {
  /** Human-readable lines (config telemetry.prettyLogs); default: when stderr is a terminal. */
  pretty?: boolean;
  /** Where lines go; default stderr. */
  destination?: DestinationStream;
}

/** Pretty unless told: when stderr is a terminal. */
export function prettyByDefault(isTty = process.stderr.isTTY === true): boolean {
  return isTty;
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const LEVEL_COLORS: Record<number, string> = { 20: '\x1b[90m', 30: '\x1b[36m', 40: '\x1b[33m', 50: '\x1b[31m', 60: '\x1b[35m' };
/** Fields shown in the line's head, not repeated as key=value. */
const HEAD_FIELDS = new Set(['level', 'time', 'msg', 'name', 'role', 'pid', 'hostname']);

function renderValue(v: unknown): string {
  if (typeof v === 'string') return /^[\w.:/@+-]*$/.test(v) && v !== '' ? v : JSON.stringify(v);
  return JSON.stringify(v);
}

/**
 * One pino JSON line as a line for people:
 * `22:31:05.123 INFO  scheduler: batch dispatched batchId=b1 size=3 trace_id=4bf9…`.
 */
export function formatLogLine(json: string, color = false): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith('\n') ? json : `${json}\n`;
  }
  const level = typeof rec.level === 'number' ? rec.level : 30;
  const time = typeof rec.time === 'number' ? new Date(rec.time).toISOString().slice(11, 23) : '';
  const name = (LEVEL_NAMES[level] ?? String(level)).padEnd(5);
  const lvl = color ? `${LEVEL_COLORS[level] ?? ''}${name}\x1b[0m` : name;
  const who = typeof rec.role === 'string' ? rec.role : typeof rec.name === 'string' ? rec.name : '';
  const rest: string[] = [];
  for (const [k, v] of Object.entries(rec)) {
    if (HEAD_FIELDS.has(k) || v === undefined) continue;
    if (k === 'err' && v && typeof v === 'object' && 'message' in v) rest.push(`err=${renderValue((v as { message: unknown }).message)}`);
    else rest.push(`${k}=${renderValue(v)}`);
  }
  const msg = typeof rec.msg === 'string' ? rec.msg : '';
  return `${time} ${lvl} ${who ? `${who}: ` : ''}${msg}${rest.length ? ` ${color ? '\x1b[2m' : ''}${rest.join(' ')}${color ? '\x1b[0m' : ''}` : ''}\n`;
}

/** A pino destination that writes each line formatted for people (synchronously, to stderr). */
export function prettyDestination(write: (s: string) => void = (s) => process.stderr.write(s), color = process.stderr.hasColors?.() === true): DestinationStream {
  return { write: (line: string) => write(formatLogLine(line.trimEnd(), color)) };
}

/** The logger of a role: JSON lines on stderr (or pretty ones on a terminal), trace ids mixed in. */
export function createLogger(role: string, level: LogLevel = 'info', opts: LoggerOptions = {}): Logger {
  const destination = opts.destination ?? ((opts.pretty ?? prettyByDefault()) ? prettyDestination() : pino.destination({ fd: 2, sync: false }));
  return pino(
    {
      name: role,
      level,
      base: { role, pid: process.pid },
      // Only while a span is active: otherwise nothing is added (and with tracing off, one branch).
      mixin() {
        const ids = activeTraceIds();
        return ids ? { trace_id: ids.traceId, span_id: ids.spanId } : {};
      },
    },
    destination,
  );
}
