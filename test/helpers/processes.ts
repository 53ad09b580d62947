/**
 * Runs wisp roles as separate processes (`node bin/wisp.js <role> …`) for integration tests:
 * each with its own environment, ready once its /metrics endpoint answers, stopped with
 * SIGTERM (the roles flush their spans on the way out).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const WISP = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'wisp.js');

/** A port nobody listens on right now (the OS picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

export interface RoleProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly metricsUrl: string;
  /** Everything the process wrote to stderr so far (its log lines). */
  stderr(): string;
  /** Resolves when /metrics answers; rejects if the process exits first or after `timeoutMs`. */
  ready(timeoutMs: number): Promise<void>;
  /** SIGTERM, then waits for the exit (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<number | null>;
}

/**
 * Starts `node bin/wisp.js <args…>` with `env` (merged over this process's environment) and a
 * metrics endpoint on a free port.
 */
export async function startRoleProcess(name: string, args: string[], env: Record<string, string>): Promise<RoleProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, [WISP, ...args], {
    env: { ...process.env, ...env, WISP_METRICS_PORT: String(port), WISP_METRICS_HOST: '127.0.0.1' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString('utf8')));
  let exited: number | null | undefined;
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve((exited = code))));
  const metricsUrl = `http://127.0.0.1:${port}/metrics`;
  return {
    name,
    child,
    metricsUrl,
    stderr: () => err,
    async ready(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        if (exited !== undefined) throw new Error(`${name} exited with ${exited} before it was ready:\n${err.slice(-2000)}`);
        const ok = await fetch(metricsUrl).then((r) => r.ok, () => false);
        if (ok) return;
        await new Promise((r) => setTimeout(r, 200));
      }
      throw new Error(`${name} not ready after ${timeoutMs} ms:\n${err.slice(-2000)}`);
    },
    async stop(graceMs = 15_000) {
      if (exited !== undefined) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const code = await exit;
      clearTimeout(timer);
      return code;
    },
  };
}
