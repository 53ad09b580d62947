/**
 * Prints the varlen estimator's built-in prior (policies/estimator.ts VARLEN_PRIOR): the fit of
 * its model to the engine model of an A100-80GB running the 34B-class model, on 4,000 random
 * passes (seed 11). Run: npx tsx scripts/fit-varlen-prior.ts
 */
import { loadEngine } from '../physics/engines.ts';
import { passCost } from '../physics/pass-cost.ts';
import { randomPassShapes } from '../physics/pass-samples.ts';
import { passMemberOf, varlenEstimatorFromPasses } from '../policies/estimator.ts';
import { seededUniform } from '../policies/seeded-rng.ts';

const engine = loadEngine('a100-80gb/34b');
const next = seededUniform(11);
const passes = Array.from({ length: 4_000 }, () => {
  const shapes = randomPassShapes(next);
  return { shapes, ms: passCost(engine, shapes.map(passMemberOf)).ms };
});
const fit = varlenEstimatorFromPasses(passes, { pass: { floorMs: Math.min(...passes.map((p) => p.ms)) } });
const round = (x: number): number => Number(x.toPrecision(5));
process.stdout.write(`const VARLEN_PRIOR = { theta: [${fit.pass.theta.map(round).join(', ')}], floorMs: ${round(fit.pass.floorMs)} };\n`);
process.stdout.write(`in-sample MAPE ${(fit.error.ewmaApe * 100).toFixed(2)} % over ${passes.length} passes\n`);
