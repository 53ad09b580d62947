/**
 * The Prometheus endpoint after a short run: `wisp up`'s roles (in this process, sharing one
 * endpoint as they do there) serve every named series, and the values agree with what the
 * client saw (sessions, tokens, drafted/accepted) and with each other (goodput ≤ output,
 * accepted ≤ verified ≤ drafted per position, queue empty afterwards).
 */
import { expect } from 'chai';
import { freePort } from '../helpers/processes.ts';
import { startTestSystem, type TestSystem } from '../helpers/system.ts';

const PROMPTS = ['the quick brown fox', 'once upon a time', 'in the beginning there was', 'hello', 'a river runs through the', 'she said that the'];

/** Parses exposition text into `series → value` (series = name plus its label set, as printed). */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

function sum(m: Map<string, number>, prefix: string): number {
  let total = 0;
  for (const [k, v] of m) if (k === prefix || k.startsWith(`${prefix}{`)) total += v;
  return total;
}

describe('metrics endpoint (integration)', function () {
  this.timeout(120_000);
  let sys: TestSystem;
  let url: string;

  before(async () => {
    const port = await freePort();
    sys = await startTestSystem({ devices: 3, workers: 2 }, { telemetry: { metricsPort: port, metricsHost: '127.0.0.1' } });
    url = `http://127.0.0.1:${port}/metrics`;
  });
  after(async () => {
    await sys?.stop();
  });

  const scrape = async () => {
    const res = await fetch(url);
    expect(res.status).to.equal(200);
    return parse(await res.text());
  };

  it('exposes the named series with sane values after a short run', async () => {
    const before = await scrape(); // the process's registry may hold earlier tests' counts: compare deltas
    const prompts = PROMPTS.slice(0, 6);
    const results = await Promise.all(prompts.map((prompt) => sys.client.submit({ prompt, maxNewTokens: 16 })));
    for (const r of results) expect(r.error).to.equal(null);
    const after = await scrape();
    const delta = (name: string) => sum(after, name) - sum(before, name);

    const tokens = results.reduce((a, r) => a + r.tokens.length, 0);
    const drafted = results.reduce((a, r) => a + r.stats!.drafted, 0);
    const accepted = results.reduce((a, r) => a + r.stats!.accepted, 0);
    const attained = results.filter((r) => r.stats!.sloAttained).length;

    // Sessions, SLO attainment and goodput.
    expect(delta('wisp_sessions_finished_total')).to.equal(prompts.length);
    expect(after.get('wisp_sessions_active')).to.equal(0);
    expect(delta('wisp_slo_attained_total')).to.equal(attained);
    expect(delta('wisp_generation_tokens_total')).to.equal(tokens);
    expect(delta('wisp_goodput_tokens_total')).to.be.at.most(tokens);
    const ratio = after.get('wisp_slo_attainment_ratio')!;
    expect(ratio).to.be.within(0, 1);
    expect(delta('wisp_time_to_first_token_seconds_count')).to.equal(prompts.length);
    expect(delta('wisp_time_to_first_token_seconds_sum')).to.be.greaterThan(0);
    expect(delta('wisp_time_per_output_token_seconds_count')).to.equal(results.filter((r) => r.tokens.length > 1).length);
    expect(delta('wisp_e2e_request_latency_seconds_count')).to.equal(prompts.length);

    // Speculative decoding: the counters match the sessions' own stats.
    expect(delta('wisp_spec_decode_num_draft_tokens_total')).to.equal(drafted);
    expect(delta('wisp_spec_decode_num_accepted_tokens_total')).to.equal(accepted);
    expect(delta('wisp_spec_decode_num_drafts_total')).to.equal(results.reduce((a, r) => a + r.stats!.rounds, 0));
    expect(after.get('wisp_spec_decode_acceptance_rate')).to.be.within(0, 1);
    expect(delta('wisp_spec_decode_accepted_by_position_total')).to.equal(accepted);
    for (let i = 0; i < 8; i++) {
      const acc = delta(`wisp_spec_decode_accepted_by_position_total{position="${i}"}`);
      const ver = delta(`wisp_spec_decode_verified_by_position_total{position="${i}"}`);
      expect(acc, `position ${i}`).to.be.at.most(ver);
      if (i > 0) expect(ver, `position ${i}`).to.be.at.most(delta(`wisp_spec_decode_verified_by_position_total{position="${i - 1}"}`));
    }
    expect(delta('wisp_spec_decode_verified_by_position_total{position="0"}')).to.be.greaterThan(0);

    // Scheduler: nothing left waiting; every request waited and had a slack.
    expect(after.get('wisp_queue_depth')).to.equal(0);
    expect(after.get('wisp_workers')).to.equal(2);
    const requests = prompts.length + delta('wisp_spec_decode_num_drafts_total');
    expect(delta('wisp_queue_wait_seconds_count')).to.be.at.least(requests);
    expect(delta('wisp_dispatch_slack_seconds_count')).to.be.at.least(requests);
    expect(delta('wisp_batches_dispatched_total')).to.be.greaterThan(0);

    // Verifier: batch sizes and latencies per worker, estimator error, KV cache per worker.
    const members = delta('wisp_batch_size_sum');
    expect(members).to.be.at.least(requests);
    expect(delta('wisp_batch_size_count')).to.equal(delta('wisp_batches_total{worker="worker-0",outcome="ok"}') + delta('wisp_batches_total{worker="worker-1",outcome="ok"}'));
    expect(delta('wisp_batch_latency_seconds_sum')).to.be.greaterThan(0);
    expect(delta('wisp_estimator_ape_count')).to.be.greaterThan(0);
    expect(delta('wisp_estimator_ape_sum') / delta('wisp_estimator_ape_count')).to.be.lessThan(100);
    for (const w of ['worker-0', 'worker-1']) {
      expect(after.get(`wisp_kv_cache_bytes{worker="${w}"}`), w).to.be.at.least(0);
      expect(after.get(`wisp_kv_cache_sessions{worker="${w}"}`), w).to.be.at.least(0);
    }
    expect(delta('wisp_prefill_tokens_total')).to.be.greaterThan(0);
    expect(delta('wisp_verified_tokens_total')).to.be.at.least(drafted > 0 ? 1 : 0);
    // Node's own figures are there too.
    expect(after.get('process_cpu_user_seconds_total')).to.be.greaterThan(0);
  });
});
