/**
 * A private RabbitMQ virtual host per test process, so test runs that overlap on one broker
 * (developers, CI, helpers) never consume each other's messages from the shared queues.
 * Created synchronously on first use with rabbitmqctl and deleted when the process exits.
 * Set WISP_TEST_VHOST=/ (or WISP_AMQP_URL) to use an existing vhost instead.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';

let created: string | null = null;

function ctl(args: string[]): string {
  return execFileSync('rabbitmqctl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 60_000 });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Deletes vhosts left by test processes that died before their exit hook ran. */
function removeOrphans(): void {
  for (const name of ctl(['list_vhosts', '--quiet']).split('\n').map((l) => l.trim())) {
    const m = /^wisp-test-(\d+)-[0-9a-f]+$/.exec(name);
    if (m && !alive(Number(m[1]))) ctl(['delete_vhost', name]);
  }
}

/** The vhost this test process uses (created on first call). */
export function testVhost(): string {
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

/** The local broker URL in this process's private vhost. */
export function testAmqpUrl(): string {
  const vhost = testVhost();
  return `amqp://guest:guest@127.0.0.1:5672/${encodeURIComponent(vhost)}`;
}
