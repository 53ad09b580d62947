/**
 * The one error base of wisp. Every error the project throws on purpose is a `WispError` with a
 * stable snake_case `code` (callers branch on the code, never on the message) and a message that
 * names the offending input. Type guards instead of casts: `isWispError(e, 'bad_server_spec')`.
 */
export class WispError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Whether `e` is a WispError (with `code`, when given). */
export function isWispError(e: unknown, code?: string): e is WispError {
  return e instanceof WispError && (code === undefined || e.code === code);
}

/** The code of any error that carries one (WispError, or a Node/library error with a string `code`). */
export function errorCode(e: unknown): string | undefined {
  if (e instanceof WispError) return e.code;
  if (typeof e === 'object' && e !== null && 'code' in e && typeof (e as { code: unknown }).code === 'string') return (e as { code: string }).code;
  return undefined;
}

/** One line for people: `[code] message` (the code when the error has one). */
export function describeError(e: unknown): string {
  const code = errorCode(e);
  const message = e instanceof Error ? e.message : String(e);
  return `${code ? `[${code}] ` : ''}${message}`;
}
