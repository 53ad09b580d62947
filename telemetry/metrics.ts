/**
 * Prometheus metrics (prom-client) of each role, named in vLLM's shape with a `wisp_` prefix
 * (`vllm:time_to_first_token_seconds` → `wisp_time_to_first_token_seconds`), so dashboards
 * built for vLLM carry over. Actors record domain events (a session ended, a round was
 * verified, a batch ran); the objects here turn them into series. One registry per process
 * (`processMetrics()`), served on `/metrics` by `openMetricsEndpoint` when
 * config.telemetry.metricsPort is set; `wisp up` serves every role's series on one port.
 *
 * Derived figures, in PromQL:
 *   goodput (tokens/s)        rate(wisp_goodput_tokens_total[1m])
 *   SLO attainment            rate(wisp_slo_attained_total[5m]) / rate(wisp_sessions_finished_total[5m])
 *   acceptance rate           rate(wisp_spec_decode_num_accepted_tokens_total[1m]) / rate(wisp_spec_decode_num_draft_tokens_total[1m])
 *   acceptance at position i  rate(wisp_spec_decode_accepted_by_position_total{position="i"}[1m]) / rate(wisp_spec_decode_verified_by_position_total{position="i"}[1m])
 */
import { createServer, type Server } from 'node:http';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { ERROR_CODES, LIMITS } from '../protocol/messages.ts';
import { WispError } from '../common/errors.ts';

const SECONDS_TTFT = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40];
const SECONDS_TPOT = [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5];
const SECONDS_E2E = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300];
const SECONDS_SHORT = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const SECONDS_SLACK = [-1, -0.5, -0.1, -0.05, -0.01, 0, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5];
const MEMBERS = [1, 2, 4, 8, 16, 32, 64, 128, 256];
const TOKENS = [1, 4, 16, 64, 256, 1024, 4096, 16384];
const RATIO = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5];

/** Edge devices: what the user of a session sees (TTFT, TPOT, SLO, goodput) and speculation. */
export class EdgeMetrics {
  readonly sessionsActive: Gauge;
  readonly sessionsFinished: Counter<'outcome'>;
  readonly sloAttained: Counter;
  readonly goodputTokens: Counter;
  readonly generationTokens: Counter;
  readonly ttft: Histogram;
  readonly tpot: Histogram;
  readonly e2e: Histogram;
  readonly numDrafts: Counter;
  readonly numDraftTokens: Counter;
  readonly numVerifiedTokens: Counter;
  readonly numAcceptedTokens: Counter;
  readonly acceptedByPosition: Counter<'position'>;
  readonly verifiedByPosition: Counter<'position'>;
  readonly wastedDraftSeconds: Counter;
  #drafted = 0;
  #accepted = 0;
  #finished = 0;
  #attained = 0;

  constructor(registry: Registry) {
    const registers = [registry];
    this.sessionsActive = new Gauge({ name: 'wisp_sessions_active', help: 'Sessions being served by edge devices', registers });
    this.sessionsFinished = new Counter({ name: 'wisp_sessions_finished_total', help: 'Sessions finished, by outcome (ok | error)', labelNames: ['outcome'], registers });
    this.sloAttained = new Counter({ name: 'wisp_slo_attained_total', help: 'Sessions that met their TTFT and TPOT SLO', registers });
    this.goodputTokens = new Counter({ name: 'wisp_goodput_tokens_total', help: 'Output tokens of sessions that met their SLO (goodput = rate of this)', registers });
    this.generationTokens = new Counter({ name: 'wisp_generation_tokens_total', help: 'Output tokens of all finished sessions', registers });
    this.ttft = new Histogram({ name: 'wisp_time_to_first_token_seconds', help: 'Time to first token, from the prompt reaching the device', buckets: SECONDS_TTFT, registers });
    this.tpot = new Histogram({ name: 'wisp_time_per_output_token_seconds', help: 'Mean time per output token after the first, per session', buckets: SECONDS_TPOT, registers });
    this.e2e = new Histogram({ name: 'wisp_e2e_request_latency_seconds', help: 'Session latency, prompt to last token', buckets: SECONDS_E2E, registers });
    this.numDrafts = new Counter({ name: 'wisp_spec_decode_num_drafts_total', help: 'Verified speculation rounds', registers });
    this.numDraftTokens = new Counter({ name: 'wisp_spec_decode_num_draft_tokens_total', help: 'Draft tokens sent for verification', registers });
    this.numVerifiedTokens = new Counter({ name: 'wisp_spec_decode_num_verified_tokens_total', help: 'Draft tokens the target verified (fewer than sent when the scheduler truncates)', registers });
    this.numAcceptedTokens = new Counter({ name: 'wisp_spec_decode_num_accepted_tokens_total', help: 'Draft tokens the target accepted', registers });
    this.acceptedByPosition = new Counter({ name: 'wisp_spec_decode_accepted_by_position_total', help: 'Accepted draft tokens by position in the round (0 = first)', labelNames: ['position'], registers });
    this.verifiedByPosition = new Counter({ name: 'wisp_spec_decode_verified_by_position_total', help: 'Verified draft tokens by position in the round (0 = first)', labelNames: ['position'], registers });
    this.wastedDraftSeconds = new Counter({ name: 'wisp_draft_wasted_seconds_total', help: 'Device time spent drafting tokens that were rejected or dropped', registers });
    const self = this;
    new Gauge({
      name: 'wisp_spec_decode_acceptance_rate',
      help: 'Accepted / drafted tokens since the process started',
      registers,
      collect() {
        this.set(self.#drafted > 0 ? self.#accepted / self.#drafted : 0);
      },
    });
    new Gauge({
      name: 'wisp_slo_attainment_ratio',
      help: 'Sessions that met their SLO / finished sessions, since the process started',
      registers,
      collect() {
        this.set(self.#finished > 0 ? self.#attained / self.#finished : 0);
      },
    });
  }

  sessionStarted(): void {
    this.sessionsActive.inc();
  }

  /** A session ended (ok or not); times in ms as the session stats carry them. */
  sessionEnded(s: { ok: boolean; ttftMs: number; tpotMs: number; e2eMs: number; tokens: number; sloAttained: boolean; wastedDraftMs: number }): void {
    this.sessionsActive.dec();
    this.sessionsFinished.inc({ outcome: s.ok ? 'ok' : 'error' });
    this.#finished++;
    if (s.wastedDraftMs > 0) this.wastedDraftSeconds.inc(s.wastedDraftMs / 1_000);
    if (!s.ok) return;
    this.generationTokens.inc(s.tokens);
    if (s.tokens > 0) this.ttft.observe(s.ttftMs / 1_000);
    if (s.tokens > 1) this.tpot.observe(s.tpotMs / 1_000);
    this.e2e.observe(s.e2eMs / 1_000);
    if (s.sloAttained) {
      this.#attained++;
      this.sloAttained.inc();
      this.goodputTokens.inc(s.tokens);
    }
  }

  /** One verified round: `drafted` sent, the first `verified` checked, the first `accepted` kept. */
  roundVerified(r: { drafted: number; verified: number; accepted: number }): void {
    const verified = Math.min(r.verified, r.drafted, LIMITS.draftTokens);
    const accepted = Math.min(r.accepted, verified);
    this.numDrafts.inc();
    this.numDraftTokens.inc(r.drafted);
    this.numVerifiedTokens.inc(verified);
    this.numAcceptedTokens.inc(accepted);
    this.#drafted += r.drafted;
    this.#accepted += accepted;
    for (let i = 0; i < verified; i++) {
      const position = String(i);
      this.verifiedByPosition.inc({ position });
      if (i < accepted) this.acceptedByPosition.inc({ position });
    }
  }
}

/** The scheduler: its queue, what it dispatched, how much slack requests had. */
export class SchedulerMetrics {
  readonly batchesDispatched: Counter;
  readonly queueWait: Histogram;
  readonly slack: Histogram;
  readonly refused: Counter<'code'>;
  #queueDepth: () => number = () => 0;
  #workers: () => number = () => 0;

  constructor(registry: Registry) {
    const registers = [registry];
    const self = this;
    new Gauge({
      name: 'wisp_queue_depth',
      help: 'Requests (prefills and verifications) waiting in the scheduler',
      registers,
      collect() {
        this.set(self.#queueDepth());
      },
    });
    new Gauge({
      name: 'wisp_workers',
      help: 'Verifier workers the scheduler knows',
      registers,
      collect() {
        this.set(self.#workers());
      },
    });
    this.batchesDispatched = new Counter({ name: 'wisp_batches_dispatched_total', help: 'Batches sent to workers', registers });
    this.queueWait = new Histogram({ name: 'wisp_queue_wait_seconds', help: 'Time a request waited in the scheduler before its batch was dispatched', buckets: SECONDS_SHORT, registers });
    this.slack = new Histogram({ name: 'wisp_dispatch_slack_seconds', help: 'Deadline minus dispatch time per request (negative: already late)', buckets: SECONDS_SLACK, registers });
    this.refused = new Counter({ name: 'wisp_requests_refused_total', help: 'Requests the scheduler refused, by error code', labelNames: ['code'], registers });
  }

  /** Where the gauges read from (the scheduler machine's snapshot). */
  observe(sources: { queueDepth: () => number; workers: () => number }): void {
    this.#queueDepth = sources.queueDepth;
    this.#workers = sources.workers;
  }

  /** A batch went out: per member, how long it waited and its slack (ms). */
  dispatched(members: ReadonlyArray<{ waitedMs: number; slackMs: number | null }>): void {
    this.batchesDispatched.inc();
    for (const m of members) {
      this.queueWait.observe(Math.max(0, m.waitedMs) / 1_000);
      if (m.slackMs !== null && Number.isFinite(m.slackMs)) this.slack.observe(m.slackMs / 1_000);
    }
  }

  refusedRequest(code: string): void {
    this.refused.inc({ code });
  }
}

/** Verifier workers (labelled by worker: `wisp up` runs several in one process). */
export class VerifierMetrics {
  readonly batchSize: Histogram<'worker'>;
  readonly batchTokens: Histogram<'worker'>;
  readonly batchLatency: Histogram<'worker'>;
  readonly estimatorApe: Histogram<'worker'>;
  readonly batches: Counter<'worker' | 'outcome'>;
  readonly verifiedTokens: Counter<'worker'>;
  readonly prefillTokens: Counter<'worker'>;
  #sources = new Map<string, () => { kvBytes: number; sessions: number }>();

  constructor(registry: Registry) {
    const registers = [registry];
    const self = this;
    this.batchSize = new Histogram({ name: 'wisp_batch_size', help: 'Members per executed batch', labelNames: ['worker'], buckets: MEMBERS, registers });
    this.batchTokens = new Histogram({ name: 'wisp_batch_tokens', help: 'Tokens fed per executed batch', labelNames: ['worker'], buckets: TOKENS, registers });
    this.batchLatency = new Histogram({ name: 'wisp_batch_latency_seconds', help: 'Model time of one batch (what the estimator predicts)', labelNames: ['worker'], buckets: SECONDS_SHORT, registers });
    this.estimatorApe = new Histogram({
      name: 'wisp_estimator_ape',
      help: 'Absolute percentage error of the estimator per batch: |predicted - actual| / actual',
      labelNames: ['worker'],
      buckets: RATIO,
      registers,
    });
    this.batches = new Counter({ name: 'wisp_batches_total', help: 'Batches executed, by outcome (ok | failed)', labelNames: ['worker', 'outcome'], registers });
    this.verifiedTokens = new Counter({ name: 'wisp_verified_tokens_total', help: 'Tokens fed in verifications (last committed + drafts)', labelNames: ['worker'], registers });
    this.prefillTokens = new Counter({ name: 'wisp_prefill_tokens_total', help: 'Prompt tokens prefilled', labelNames: ['worker'], registers });
    new Gauge({
      name: 'wisp_kv_cache_bytes',
      help: 'Bytes of KV cache a worker holds',
      labelNames: ['worker'],
      registers,
      collect() {
        this.reset();
        for (const [worker, read] of self.#sources) this.set({ worker }, read().kvBytes);
      },
    });
    new Gauge({
      name: 'wisp_kv_cache_sessions',
      help: 'Sessions whose KV cache a worker holds',
      labelNames: ['worker'],
      registers,
      collect() {
        this.reset();
        for (const [worker, read] of self.#sources) this.set({ worker }, read().sessions);
      },
    });
  }

  /** Reads a worker's cache figures at every scrape; returns the removal. */
  track(workerId: string, read: () => { kvBytes: number; sessions: number }): () => void {
    this.#sources.set(workerId, read);
    return () => {
      if (this.#sources.get(workerId) === read) this.#sources.delete(workerId);
    };
  }

  /** A batch ran: `modelMs` is what it cost, `predictedMs` what the scheduler's estimator said (0 = none). */
  batchExecuted(b: { workerId: string; size: number; tokens: number; modelMs: number; predictedMs: number; prefillTokens: number; verifyTokens: number }): void {
    const worker = b.workerId;
    this.batches.inc({ worker, outcome: 'ok' });
    if (b.size === 0) return;
    this.batchSize.observe({ worker }, b.size);
    this.batchTokens.observe({ worker }, b.tokens);
    this.batchLatency.observe({ worker }, b.modelMs / 1_000);
    if (b.predictedMs > 0 && b.modelMs > 0) this.estimatorApe.observe({ worker }, Math.abs(b.predictedMs - b.modelMs) / b.modelMs);
    if (b.prefillTokens) this.prefillTokens.inc({ worker }, b.prefillTokens);
    if (b.verifyTokens) this.verifiedTokens.inc({ worker }, b.verifyTokens);
  }

  batchFailed(workerId: string): void {
    this.batches.inc({ worker: workerId, outcome: 'failed' });
  }
}

/**
 * Messages a role's broker client refused (dead-lettered with a reason): by the kind of queue
 * they arrived on (scheduler, worker, device, devicePrompts, prompts, client, other — never the
 * queue's own name, one per device) and the reason's code.
 */
export class RefusalMetrics {
  readonly refused: Counter<'queue' | 'reason'>;
  readonly ignored: Counter<'role' | 'reason'>;
  constructor(registry: Registry) {
    this.refused = new Counter({ name: 'wisp_refused_messages_total', help: 'Messages refused and dead-lettered, by queue kind and reason code', labelNames: ['queue', 'reason'], registers: [registry] });
    this.ignored = new Counter({
      name: 'wisp_ignored_messages_total',
      help: 'Well-formed messages a role let go unanswered on purpose (stale rounds and lengths, requests of ended sessions, a close from another device, replies for sessions not served here), by role and reason',
      labelNames: ['role', 'reason'],
      registers: [registry],
    });
  }
  /** One message a role ignored on purpose (a duplicate or a late one: answering it would change nothing, or mislead). */
  ignoredMessage(role: 'scheduler' | 'verifier' | 'edge', reason: string): void {
    this.ignored.inc({ role, reason });
  }
  /** One refusal: `reason` is the dead letter's reason line (`<code>: <message>`). */
  refusedMessage(queueKind: string, reason: string): void {
    const code = /^([a-z_]+):/.exec(reason)?.[1];
    this.refused.inc({ queue: queueKind, reason: code && (ERROR_CODES as readonly string[]).includes(code) ? code : 'other' });
  }
}

/** The metrics of one process: one registry, each role's metrics created on first use. */
export class WispMetrics {
  readonly registry = new Registry();
  #refusals: RefusalMetrics | null = null;
  #edge: EdgeMetrics | null = null;
  #scheduler: SchedulerMetrics | null = null;
  #verifier: VerifierMetrics | null = null;

  constructor(opts: { processMetrics?: boolean } = {}) {
    // Node's own figures (CPU, heap, event-loop lag) under their standard names.
    if (opts.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  edge(): EdgeMetrics {
    return (this.#edge ??= new EdgeMetrics(this.registry));
  }
  refusals(): RefusalMetrics {
    return (this.#refusals ??= new RefusalMetrics(this.registry));
  }
  scheduler(): SchedulerMetrics {
    return (this.#scheduler ??= new SchedulerMetrics(this.registry));
  }
  verifier(): VerifierMetrics {
    return (this.#verifier ??= new VerifierMetrics(this.registry));
  }

  /** The exposition text (what `/metrics` serves). */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

let processWide: WispMetrics | null = null;

/** This process's metrics (created on first use). */
export function processMetrics(): WispMetrics {
  return (processWide ??= new WispMetrics());
}

export interface MetricsEndpoint {
  /** The port it listens on (the configured one, or the one picked for port 0 in tests). */
  readonly port: number;
  readonly url: string;
  /** Releases this user; the server closes when the last one releases. */
  close(): Promise<void>;
}

/** The endpoint could not listen. */
export class MetricsEndpointError extends WispError {
  constructor(host: string, port: number, cause: Error) {
    super('metrics_endpoint', `cannot serve metrics on ${host}:${port}: ${(cause as NodeJS.ErrnoException).code ?? cause.message}`);
  }
}

interface Shared {
  server: Server;
  port: number;
  users: number;
  metrics: WispMetrics;
}
const endpoints = new Map<string, Shared>();

/**
 * Serves `metrics` on `http://host:port/metrics` (Prometheus text format); several roles of
 * one process asking for the same host:port share one server. `port` 0 picks a free port
 * (tests); a role that wants no endpoint simply does not call this.
 * @throws MetricsEndpointError when the port is taken.
 */
export async function openMetricsEndpoint(metrics: WispMetrics, host: string, port: number): Promise<MetricsEndpoint> {
  const key = `${host}:${port}`;
  let shared = port === 0 ? undefined : endpoints.get(key);
  if (!shared) {
    const server = createServer((req, res) => {
      const path = (req.url ?? '').split('?')[0];
      if (req.method !== 'GET' || (path !== '/metrics' && path !== '/')) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
        return;
      }
      metrics.registry.metrics().then(
        (body) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new MetricsEndpointError(host, port, err)));
      server.listen(port, host, () => resolve());
    });
    server.unref(); // scraping never keeps a process alive
    const actual = (server.address() as { port: number }).port;
    shared = { server, port: actual, users: 0, metrics };
    if (port !== 0) endpoints.set(key, shared);
  }
  const s = shared;
  s.users++;
  let closed = false;
  return {
    port: s.port,
    url: `http://${host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host}:${s.port}/metrics`,
    async close() {
      if (closed) return;
      closed = true;
      if (--s.users > 0) return;
      if (endpoints.get(key) === s) endpoints.delete(key);
      await new Promise<void>((resolve) => s.server.close(() => resolve()));
    },
  };
}
