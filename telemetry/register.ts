/**
 * Starts tracing first thing in a process, when the environment asks for it (WISP_TRACING, or
 * OTEL_EXPORTER_OTLP_ENDPOINT; see tracing-switch.ts): before amqplib and ioredis load, so
 * their instrumentations can patch them. bin/wisp.js imports it before the CLI; any other
 * entry point: `node --import tsx --import ./telemetry/register.ts app.ts`. Otherwise it loads
 * nothing and costs nothing.
 */
import { processServiceName, tracingRequested } from './tracing-switch.ts';
import { describeError } from '../common/errors.ts';

if (tracingRequested(process.env)) {
  const { startTracing } = await import('./tracing.ts');
  try {
    startTracing({ serviceName: processServiceName(process.argv, process.env), instrument: true });
  } catch (err) {
    process.stderr.write(`wisp: ${describeError(err)}\n`);
    process.exit(1);
  }
}
