/**
 * `wisp enqueue`: publishes prompts through the broker (the client role). With `--wait` it
 * waits for every answer; with `--json` it prints one JSON line per finished request.
 */
import type { Command } from 'commander';
import type { ClientResult } from '../../actors/client.ts';
import { between, NON_NEG_INT, parseNumber, POSITIVE } from '../flags.ts';
import { configFromFlags } from './roles.ts';

interface EnqueueFlags {
  config?: string;
  maxTokens: string;
  temperature: string;
  topP: string;
  seed: string;
  wait?: boolean;
  json?: boolean;
  timeoutMs: string;
  device?: string;
  model?: string;
  ttftMs?: string;
  tpotMs?: string;
}

/** One line of `wisp enqueue --wait --json`. */
export function resultLine(r: ClientResult): Record<string, unknown> {
  const s = r.stats;
  return {
    requestId: r.requestId,
    tokens: r.tokens,
    text: r.text,
    ttftMs: s?.ttftMs ?? null,
    tpotMs: s?.tpotMs ?? null,
    sloAttained: s?.sloAttained ?? false,
    ...(s
      ? {
          rounds: s.rounds,
          drafted: s.drafted,
          accepted: s.accepted,
          acceptanceRate: s.drafted > 0 ? s.accepted / s.drafted : null,
          wastedDraftTokens: s.wastedDraftTokens,
          wastedDraftMs: s.wastedDraftMs,
          queueMs: s.queueMs,
          verifyMs: s.verifyMs,
          acceptedByPosition: s.acceptedByPosition,
          draftedByPosition: s.draftedByPosition,
        }
      : {}),
    stopReason: r.stopReason,
    ...(r.clipped ? { clipped: r.clipped } : {}),
    ...(r.error ? { error: r.error } : {}),
  };
}

export function registerEnqueue(program: Command): void {
  program
    .command('enqueue')
    .description('publish prompts through the broker (and wait for the answers)')
    .argument('<prompt...>', 'one or more prompts')
    .option('--config <file>', 'config file (YAML or JSON); also WISP_CONFIG')
    .option('--max-tokens <n>', 'new tokens per prompt', '32')
    .option('--temperature <t>', '0 = greedy', '0')
    .option('--top-p <p>', 'nucleus sampling mass', '1')
    .option('--seed <s>', 'sampling seed', '0')
    .option('--ttft-ms <ms>', 'TTFT SLO (default: config slo.ttftMs)')
    .option('--tpot-ms <ms>', 'TPOT SLO (default: config slo.tpotMs)')
    .option('--device <id>', 'send to one device\'s own queue')
    .option('--model <name>', 'target model wanted')
    .option('--wait', 'wait for the answers')
    .option('--json', 'one JSON line per finished request (with --wait)')
    .option('--timeout-ms <ms>', 'give up waiting after this long', '120000')
    .action(async (prompts: string[], flags: EnqueueFlags) => {
      const config = await configFromFlags(flags);
      const maxNewTokens = parseNumber('max-tokens', flags.maxTokens, between(1, 8192, true));
      const sampling = {
        temperature: parseNumber('temperature', flags.temperature, between(0, 10)),
        topP: parseNumber('top-p', flags.topP, { check: (n) => n > 0 && n <= 1, expect: 'a number in (0, 1]' }),
        seed: parseNumber('seed', flags.seed, NON_NEG_INT),
      };
      const slo = {
        ttftMs: flags.ttftMs ? parseNumber('ttft-ms', flags.ttftMs, POSITIVE) : config.slo.ttftMs,
        tpotMs: flags.tpotMs ? parseNumber('tpot-ms', flags.tpotMs, POSITIVE) : config.slo.tpotMs,
      };
      const timeoutMs = parseNumber('timeout-ms', flags.timeoutMs, POSITIVE);
      const { connectBroker } = await import('../../broker/connection.ts');
      const { WispClient } = await import('../../actors/client.ts');
      // uplink: a client credential may publish prompts only through the uplink exchange (ops/rabbitmq).
      const broker = await connectBroker(config.amqpUrl, { connectionName: 'client', uplink: true });
      const client = new WispClient(broker);
      await client.start();
      let failed = 0;
      let interrupted = false;
      // Ctrl-C gives the answers up: the reply queue goes, so the devices cancel those sessions
      // (their caches and records freed) instead of generating for nobody.
      const onSigint = () => {
        if (interrupted) return;
        interrupted = true;
        process.stderr.write('\nwisp enqueue: SIGINT: giving up the answers still coming (their sessions are cancelled)\n');
        void client.abandon();
      };
      try {
        const sent = await Promise.all(
          prompts.map((prompt) =>
            client.send({ prompt, maxNewTokens, sampling, slo, ...(flags.device ? { deviceId: flags.device } : {}), ...(flags.model ? { model: flags.model } : {}) }, timeoutMs),
          ),
        );
        if (!flags.wait) {
          process.stdout.write(`enqueued ${sent.map((s) => s.requestId).join(' ')}\n`);
          return;
        }
        process.once('SIGINT', onSigint);
        for (const pending of sent) {
          const r = await pending.result;
          if (r.error) failed++;
          if (flags.json) process.stdout.write(`${JSON.stringify(resultLine(r))}\n`);
          else if (r.error) process.stderr.write(`${r.requestId}: error [${r.error.code}] ${r.error.message}\n`);
          else {
            const s = r.stats!;
            process.stdout.write(`${r.text}\n`);
            process.stderr.write(
              `  ${r.tokens.length} tokens · stop: ${r.stopReason}${r.clipped ? ` (maxNewTokens clipped to ${r.clipped.maxNewTokens}: the model's context)` : ''} · TTFT ${s.ttftMs.toFixed(0)} ms · TPOT ${s.tpotMs.toFixed(1)} ms · SLO ${s.sloAttained ? 'met' : 'missed'} · accepted ${s.accepted}/${s.drafted} drafts\n`,
            );
          }
        }
      } finally {
        process.off('SIGINT', onSigint);
        await client.close();
        await broker.close();
      }
      if (interrupted) process.exitCode = 130;
      else if (failed > 0) process.exitCode = 1;
    });
}
