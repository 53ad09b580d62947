/**
 * docker-compose.yml and the Dockerfile cannot drift from the code: no Docker engine runs
 * here, so this parses the files and checks them against the config schema (every WISP_*
 * variable is a config variable and every value the file sets is valid), the CLI (every
 * command and flag exists), the model forge (every edge profile's draft is forged by the
 * preset) and the operational rules (health checks, start order, ports, a scalable verifier).
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { Command } from 'commander';
import { parse } from 'yaml';
import { registerEnqueue } from '../../cli/commands/enqueue.ts';
import { registerRoles } from '../../cli/commands/roles.ts';
import { DEVICE_PROFILES } from '../../config/defaults.ts';
import { ENV_VARS } from '../../config/env.ts';
import { loadConfig } from '../../config/load.ts';
import { resolveForgeOptions } from '../../inference/forge/forge.ts';
import { otlpProtocol } from '../../telemetry/tracing.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const read = (name: string) => readFileSync(join(ROOT, name), 'utf8');

/** Variables the compose file may interpolate besides the config's own (documented in docs/operations.md). */
const RMQ_PASSWORDS = { scheduler: 'WISP_RMQ_SCHEDULER_PASSWORD', verifier: 'WISP_RMQ_VERIFIER_PASSWORD', client: 'WISP_RMQ_CLIENT_PASSWORD', edge: 'WISP_RMQ_FLEET_PASSWORD' } as const;
const COMPOSE_KNOBS = new Set(['IMAGE', 'EDGE_DEVICES', 'EDGE_PROFILES', ...Object.values(RMQ_PASSWORDS)]);
/** Standard OpenTelemetry variables the roles read (through the SDK or telemetry/tracing-switch.ts). */
const OTEL_VARS = new Set(['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_PROTOCOL', 'OTEL_SERVICE_NAME', 'OTEL_TRACES_SAMPLER', 'OTEL_TRACES_SAMPLER_ARG']);
const ROLE_SERVICES = ['scheduler', 'verifier', 'edge'] as const;
const METRICS_PORT = '9464';

interface Service {
  image?: string;
  build?: unknown;
  command?: string[];
  environment?: Record<string, string | number | boolean>;
  ports?: string[];
  expose?: string[];
  volumes?: string[];
  healthcheck?: { test: string[] };
  depends_on?: Record<string, { condition: string }>;
  container_name?: string;
  profiles?: string[];
  deploy?: unknown;
}

interface ComposeFile {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

/** `${NAME}`, `${NAME:-default}`, `${NAME-default}` → the default (as compose would with NAME unset). */
function withDefaults(value: string): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g, (_m, _name: string, def?: string) => def ?? '');
}

function interpolated(text: string): string[] {
  return [...text.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]);
}

/** The container port of a `host:container` mapping (or a bare port). */
function containerPort(mapping: string): string {
  return mapping.split(':').pop()!.split('/')[0];
}

describe('docker-compose.yml and Dockerfile', () => {
  const text = read('docker-compose.yml');
  const compose = parse(text, { merge: true }) as ComposeFile;
  const s = compose.services;
  const wispServices = Object.entries(s).filter(([, svc]) => svc.build !== undefined);
  const envNames = new Set(ENV_VARS.map((v) => v.name));

  it('has the services: RabbitMQ, Redis, Jaeger, scheduler, verifier, edge fleet and a one-shot client', () => {
    expect(s).to.include.keys('rabbitmq', 'redis', 'jaeger', 'scheduler', 'verifier', 'edge', 'client');
    expect(wispServices.map(([n]) => n)).to.include.members([...ROLE_SERVICES, 'client']);
    // Every role runs the one image.
    const images = new Set(wispServices.map(([, svc]) => svc.image));
    expect(images.size).to.equal(1);
    // The client runs only when asked for: `docker compose run --rm client enqueue --wait "…"`.
    expect(s.client.profiles).to.deep.equal(['client']);
    expect(s.client.command?.[0]).to.equal('enqueue');
  });

  it('health checks: RabbitMQ answers rabbitmq-diagnostics -q ping, Redis redis-cli ping, each role its /metrics', () => {
    expect(s.rabbitmq.healthcheck?.test).to.deep.equal(['CMD', 'rabbitmq-diagnostics', '-q', 'ping']);
    expect(s.redis.healthcheck?.test.slice(1)).to.deep.equal(['redis-cli', 'ping']);
    expect(s.jaeger.healthcheck, 'the Jaeger image has no shell to run a check').to.equal(undefined);
    for (const name of ROLE_SERVICES) {
      const test = s[name].healthcheck?.test.join(' ') ?? '';
      expect(test, name).to.contain(`:${METRICS_PORT}/metrics`);
    }
  });

  it('roles start after the services they need are healthy (Jaeger: started), without cycles', () => {
    for (const [name, svc] of wispServices) {
      const deps = svc.depends_on ?? {};
      expect(deps.rabbitmq?.condition, `${name} → rabbitmq`).to.equal('service_healthy');
      for (const [dep, { condition }] of Object.entries(deps)) {
        expect(s, `${name} depends on unknown ${dep}`).to.have.property(dep);
        expect(['service_healthy', 'service_started', 'service_completed_successfully']).to.include(condition);
        if (condition === 'service_healthy') expect(s[dep].healthcheck, `${name} waits for ${dep} to be healthy, which has no health check`).to.not.equal(undefined);
      }
    }
    for (const name of ROLE_SERVICES) {
      expect(s[name].depends_on?.redis?.condition, `${name} → redis`).to.equal('service_healthy');
      expect(s[name].depends_on?.jaeger?.condition, `${name} → jaeger`).to.equal('service_started');
    }
    // The edge fleet waits for a verifier: the verifier forges the models into the shared volume.
    expect(s.edge.depends_on?.verifier?.condition).to.equal('service_healthy');
    const visiting = new Set<string>();
    const done = new Set<string>();
    const visit = (n: string) => {
      if (done.has(n)) return;
      expect(visiting.has(n), `dependency cycle through ${n}`).to.equal(false);
      visiting.add(n);
      for (const d of Object.keys(s[n].depends_on ?? {})) visit(d);
      visiting.delete(n);
      done.add(n);
    };
    for (const n of Object.keys(s)) visit(n);
  });

  it('ports: AMQP 5672 and the management UI 15672, Redis 6379, Jaeger OTLP 4317/4318 and UI 16686', () => {
    expect(s.rabbitmq.ports?.map(containerPort)).to.include.members(['5672', '15672']);
    expect(s.redis.ports?.map(containerPort)).to.include('6379');
    expect(s.jaeger.ports?.map(containerPort)).to.include.members(['4317', '4318', '16686']);
    expect(s.rabbitmq.image).to.match(/management/);
    // Single-instance roles publish their metrics port on distinct host ports.
    const hostPorts = Object.values(s).flatMap((svc) => (svc.ports ?? []).filter((p) => p.includes(':')).map((p) => p.split(':')[0]));
    expect(new Set(hostPorts).size, 'two services publish the same host port').to.equal(hostPorts.length);
    for (const name of ['scheduler', 'edge'] as const) expect(s[name].ports?.map(containerPort), name).to.include(METRICS_PORT);
  });

  it('the verifier scales (--scale verifier=N): no container_name, no host port, metrics exposed inside the network', () => {
    const v = s.verifier;
    expect(v.container_name).to.equal(undefined);
    expect(v.ports ?? []).to.deep.equal([]);
    expect(v.expose).to.include(METRICS_PORT);
    expect(v.environment?.WISP_WORKER_ID, 'a fixed worker id would give every replica the same queue').to.equal(undefined);
  });

  it('every variable the roles get is a config variable (or a standard OTEL_ one), and every value is valid', () => {
    for (const [name, svc] of wispServices) {
      const env = svc.environment ?? {};
      for (const key of Object.keys(env)) {
        if (key.startsWith('OTEL_')) expect(OTEL_VARS, `${name}: ${key}`).to.include(key);
        else expect(envNames, `${name}: ${key} is not in config ENV_VARS`).to.include(key);
      }
      // Load the config exactly as the role would (with compose's defaults filled in).
      const resolved = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, withDefaults(String(v))]));
      const config = loadConfig({ env: resolved });
      expect(config.telemetry.metricsPort, name).to.equal(Number(METRICS_PORT));
      expect(config.telemetry.metricsHost, name).to.equal('0.0.0.0');
      expect(otlpProtocol(resolved), name).to.equal('http/protobuf');
      expect(resolved.OTEL_EXPORTER_OTLP_ENDPOINT, name).to.equal('http://jaeger:4318');
      expect(new URL(config.amqpUrl).hostname).to.equal('rabbitmq');
      expect(new URL(config.redisUrl).hostname).to.equal('redis');
    }
    for (const name of new Set(interpolated(text))) {
      expect(envNames.has(name) || COMPOSE_KNOBS.has(name), `\${${name}} is neither a config variable nor a documented compose knob`).to.equal(true);
    }
  });

  it('commands and flags exist in the CLI; edge profiles exist and their drafts are forged by the preset', () => {
    const program = new Command('wisp');
    registerRoles(program);
    registerEnqueue(program);
    for (const [name, svc] of wispServices) {
      const argv = (svc.command ?? []).map(withDefaults);
      const cmd = program.commands.find((c) => c.name() === argv[0]);
      expect(cmd, `${name}: unknown command ${argv[0]}`).to.not.equal(undefined);
      const flags = new Set(cmd!.options.flatMap((o) => [o.long, o.short].filter(Boolean) as string[]).concat('--help'));
      for (const a of argv.slice(1).filter((x) => x.startsWith('-'))) expect(flags, `${name}: ${argv[0]} has no flag ${a}`).to.include(a);
    }
    const edgeArgs = s.edge.command!.map(withDefaults);
    const profiles = edgeArgs[edgeArgs.indexOf('--profile') + 1].split(',');
    expect(Number(edgeArgs[edgeArgs.indexOf('--devices') + 1])).to.be.greaterThan(0);
    const preset = withDefaults(String(s.edge.environment?.WISP_MODEL_PRESET)) as 'tiny' | 'small';
    const forged = resolveForgeOptions({ preset }).drafts.map((d) => `draft-${d}`);
    for (const p of profiles) {
      expect(DEVICE_PROFILES, `unknown device profile ${p}`).to.have.property(p);
      expect(forged, `profile ${p} runs ${DEVICE_PROFILES[p].draftModel}, which preset ${preset} does not forge`).to.include(DEVICE_PROFILES[p].draftModel);
    }
  });

  it('models are forged into a named volume at the image\'s default models folder', () => {
    for (const name of ['verifier', 'edge'] as const) expect(s[name].volumes, name).to.include('models:/app/.wisp');
    expect(compose.volumes).to.have.property('models');
    const dockerfile = read('Dockerfile');
    expect(dockerfile).to.match(/^WORKDIR \/app$/m);
    expect(dockerfile).to.match(/mkdir -p \/app\/\.wisp\/models && chown -R node:node \/app\/\.wisp/);
  });

  it('the Dockerfile: multi-stage on Node 20 slim, production dependencies only, ONNXRUNTIME_NODE_INSTALL=skip, non-root', () => {
    const lines = read('Dockerfile').split('\n').map((l) => l.trim());
    const froms = lines.filter((l) => l.startsWith('FROM '));
    expect(froms.length).to.be.at.least(2);
    expect(read('Dockerfile')).to.match(/ARG NODE_IMAGE=node:20-[a-z]+-slim/);
    expect(lines.some((l) => /npm ci .*--omit=dev/.test(l))).to.equal(true);
    expect(lines.filter((l) => /ONNXRUNTIME_NODE_INSTALL=skip/.test(l)).length).to.be.at.least(2); // install stage and runtime
    const user = lines.filter((l) => l.startsWith('USER ')).pop();
    expect(user).to.not.equal(undefined);
    expect(user).to.not.match(/root|\b0\b/);
    expect(lines).to.include('ENTRYPOINT ["node", "bin/wisp.js"]');
    const ignored = read('.dockerignore').split('\n').map((l) => l.trim());
    expect(ignored).to.include.members(['node_modules', '.wisp', '.git', 'test']);
    // tsx runs the sources in the image, so it must be a production dependency.
    expect(JSON.parse(read('package.json')).dependencies).to.have.property('tsx');
  });

  it('each role connects as its own least-privilege RabbitMQ user, made by a one-shot service before any role starts', () => {
    const defs = JSON.parse(read('ops/rabbitmq/definitions.json')) as { users: { name: string }[] };
    const script = read('ops/rabbitmq/apply-permissions.sh');
    const setup = s['rabbitmq-users'];
    expect(setup, 'a rabbitmq-users service').to.not.equal(undefined);
    // It runs the shipped script with the broker's own image (rabbitmqctl), against the broker's node.
    expect(setup.image).to.equal(s.rabbitmq.image);
    const entry = (setup as Service & { entrypoint?: string[] }).entrypoint ?? [];
    const mount = (setup.volumes ?? []).find((v) => v.startsWith('./ops/rabbitmq:'));
    expect(mount, 'ops/rabbitmq mounted').to.not.equal(undefined);
    expect(entry.join(' ')).to.equal(`bash ${mount!.split(':')[1]}/apply-permissions.sh`);
    expect(setup.environment?.RABBITMQ_NODENAME).to.equal(`rabbit@${(s.rabbitmq as Service & { hostname?: string }).hostname}`);
    expect(setup.depends_on?.rabbitmq?.condition).to.equal('service_healthy');
    // The Erlang cookie: the broker's data volume, at the home rabbitmqctl reads it from.
    const data = s.rabbitmq.volumes!.find((v) => v.endsWith(':/var/lib/rabbitmq'))!.split(':')[0];
    expect(setup.volumes).to.include(`${data}:${setup.environment?.HOME}:ro`);
    // The broker reads the definitions file itself: the script writes it into a volume both mount at one path.
    const shared = String(setup.environment?.WISP_RMQ_SHARED_DIR);
    expect(script).to.contain('${WISP_RMQ_SHARED_DIR:-/tmp}');
    const sharedVolume = setup.volumes!.find((v) => v.split(':')[1] === shared)!.split(':')[0];
    expect(s.rabbitmq.volumes).to.include(`${sharedVolume}:${shared}:ro`);
    expect(compose.volumes).to.have.property(sharedVolume);
    // Each role: its own user (one the definitions create), the password variable the script sets it from.
    const users = new Set(defs.users.map((u) => u.name));
    const edgeArgs = s.edge.command!.map(withDefaults);
    const fleet = edgeArgs[edgeArgs.indexOf('--fleet-id') + 1];
    const expected: Record<keyof typeof RMQ_PASSWORDS, string> = { scheduler: 'wisp-scheduler', verifier: 'wisp-verifier', client: 'wisp-client', edge: fleet };
    for (const [role, user] of Object.entries(expected) as [keyof typeof RMQ_PASSWORDS, string][]) {
      const raw = String(s[role].environment?.WISP_AMQP_URL);
      const url = new URL(withDefaults(raw));
      expect(url.username, role).to.equal(user);
      expect(users, `${role}: user ${user} is not in definitions.json`).to.include(user);
      expect(interpolated(raw), role).to.deep.equal([RMQ_PASSWORDS[role]]);
      expect(script, `the script reads ${RMQ_PASSWORDS[role]}`).to.contain(`$${RMQ_PASSWORDS[role]}`);
      // The same default on both sides, so `docker compose up` works with nothing set.
      expect(withDefaults(String(setup.environment?.[RMQ_PASSWORDS[role]])), role).to.equal(decodeURIComponent(url.password));
      expect(s[role].depends_on?.['rabbitmq-users']?.condition, role).to.equal('service_completed_successfully');
    }
    // Nobody but the management UI uses the administrator.
    expect(text).to.not.match(/amqp:\/\/wisp:/);
  });

  it('the optional Prometheus scrapes every role on the metrics port', () => {
    expect(s.prometheus.profiles).to.deep.equal(['monitoring']);
    const prom = parse(read('deploy/prometheus.yml')) as { scrape_configs: Array<{ dns_sd_configs: Array<{ names: string[]; port: number }> }> };
    const sd = prom.scrape_configs.flatMap((c) => c.dns_sd_configs);
    expect(sd.flatMap((d) => d.names)).to.include.members([...ROLE_SERVICES]);
    for (const d of sd) expect(String(d.port)).to.equal(METRICS_PORT);
  });
});
