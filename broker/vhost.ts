/**
 * A private RabbitMQ virtual host per process, so runs that overlap on one local broker (tests,
 * benchmarks such as bench/overhead.ts, developers, CI) never consume each other's messages from
 * the shared queues. Created synchronously on first use with rabbitmqctl and deleted when the
 * process exits. Set WISP_TEST_VHOST=/ (or, in the callers, WISP_AMQP_URL) to use an existing
 * vhost instead. test/helpers/vhost.ts re-exports it under the names the tests use.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';

/** How long one rabbitmqctl call may take, ms. */
const RABBITMQCTL_TIMEOUT_MS = 60_000;

let created: string | null = null;

function ctl(args: string[]): string {
  return execFileSync('rabbitmqctl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: RABBITMQCTL_TIMEOUT_MS });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Deletes vhosts left by processes that died before their exit hook ran. */
function removeOrphans(): void {
  for (const name of ctl(['list_vhosts', '--quiet']).split('\n').map((l) => l.trim())) {
    const m = /^wisp-test-(\d+)-[0-9a-f]+$/.exec(name);
    if (m && !alive(Number(m[1]))) ctl(['delete_vhost', name]);
  }
}

/** The vhost this process uses (created on first call; '/' where rabbitmqctl is missing). */
export function privateVhost(): string {
  if (process.env.WISP_TEST_VHOST) return process.env.WISP_TEST_VHOST;
  if (created) return created;
  const name = `wisp-test-${process.pid}-${randomUUID().slice(0, 6)}`;
  try {
    removeOrphans();
    ctl(['add_vhost', name]);
    ctl(['set_permissions', '-p', name, 'guest', '.*', '.*', '.*']);
  } catch {
    return '/'; // no rabbitmqctl here: share the default vhost
  }
  created = name;
  process.once('exit', () => {
    try {
      ctl(['delete_vhost', name]);
    } catch {
      // The broker may be down at exit (a fault test); the vhost is then left behind, empty.
    }
  });
  return name;
}

/**
 * The local broker URL in this process's private vhost. No credential in code (as in
 * config/defaults.ts): without user info amqplib logs in as RabbitMQ's local-only guest, the
 * user given the vhost's permissions above.
 */
export function privateAmqpUrl(): string {
  const vhost = privateVhost();
  return `amqp://127.0.0.1:5672/${encodeURIComponent(vhost)}`;
}
