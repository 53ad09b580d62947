#!/usr/bin/env node
// Entry point of the `wisp` command: runs the TypeScript CLI through tsx, so no build step is needed.
import { register } from 'tsx/esm/api';
register();
// Tracing (when the environment asks for it) must start before amqplib and ioredis load.
await import('../telemetry/register.ts');
await import('../cli/main.ts');
