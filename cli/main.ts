/**
 * The `wisp` command. Each sub-command lives in cli/commands/<name>.ts and registers itself
 * here; a command module does its heavy imports lazily so `wisp --help` stays fast.
 */
import { Command } from 'commander';

const program = new Command('wisp')
  .description('wisp: distributed speculative LLM serving (edge drafting, SLO-aware batched verification)')
  .showHelpAfterError()
  // Options belong to the command they follow, so a sub-command may reuse its parent's option names (wisp sim map).
  .enablePositionalOptions();

// Registrations (one line per command module).
import { registerGenerate } from './commands/generate.ts';
registerGenerate(program);
import { registerModels } from './commands/models.ts';
registerModels(program);
import { registerEstimator } from './commands/estimator.ts';
registerEstimator(program);
import { registerRoles } from './commands/roles.ts';
registerRoles(program);
import { registerEnqueue } from './commands/enqueue.ts';
registerEnqueue(program);
import { registerBench } from './commands/bench.ts';
registerBench(program);
import { registerSim } from './commands/sim.ts';
registerSim(program);
import { registerServerCost } from './commands/server-cost.ts';
import { describeError } from '../common/errors.ts';
registerServerCost(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`wisp: ${describeError(err)}\n`);
  process.exit(1);
});
