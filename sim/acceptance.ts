/**
 * Acceptance models: what the target does with each drafted token, and what the draft model's
 * own statistics (the speculation controller's features) look like for it.
 *
 * - Parametric: a per-token latent logit z = μ + session offset + tokenSpread·N(0,1) −
 *   positionDecay·position; the target accepts with probability sigmoid(z) (greedy: the draft
 *   token equals the target's argmax). The draft's confidence is a noisy, overconfident view
 *   of the same latent — top-1 probability sigmoid(z + overconfidence + confidenceNoise·N) —
 *   and the other features follow from it, so the controller has real but imperfect signal.
 *   μ is solved so the mean acceptance equals `agreement`.
 * - Empirical ("fitted from the live pair"): resamples observed (features, accepted) pairs of
 *   drafted tokens, by position in the round.
 */
import { z } from 'zod';
import type { DraftTokenFeatures } from '../policies/types.ts';
import type { Rng } from './random.ts';
import { WispError } from '../common/errors.ts';

/**
 * One drafted token: the draft's statistics and whether the target accepts it (given the prefix
 * was). `features.position` is the position it was drawn for; the caller may overwrite it.
 */
export interface DraftedTokenDraw {
  features: DraftTokenFeatures;
  accepted: boolean;
}

export interface AcceptanceModel {
  readonly name: string;
  /** Mean per-token acceptance (given the earlier drafts were accepted). */
  readonly meanAcceptance: number;
  /** Difficulty offset of one session (one prompt), drawn when it starts. */
  sessionOffset(rng: Rng): number;
  /** One drafted token at `position` (0-based) of its round. */
  draw(rng: Rng, sessionOffset: number, position: number): DraftedTokenDraw;
}

export interface ParametricAcceptanceParams {
  /** Mean probability that a drafted token is accepted, in (0, 1). */
  agreement: number;
  /** Spread of the latent logit across tokens (default 1.5). */
  tokenSpread?: number;
  /** Spread of the per-session offset (default 0.5): some prompts are easier to draft. */
  sessionSpread?: number;
  /** Noise between the latent logit and the draft's confidence logit (default 0.8). */
  confidenceNoise?: number;
  /** Draft confidence logit bias (default 0.5: small drafts are overconfident). */
  overconfidence?: number;
  /** Latent logit drop per position in the round (default 0). */
  positionDecay?: number;
}

export class AcceptanceModelError extends WispError {
  constructor(message: string) {
    super('bad_acceptance_model', message);
  }
}

const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));
const logit = (p: number): number => Math.log(p / (1 - p));

/** E[sigmoid(μ + s·Z)], Z ~ N(0, 1), by quadrature on ±8 s.d. */
function meanSigmoid(mu: number, s: number): number {
  const steps = 400;
  const h = 16 / steps;
  let acc = 0;
  let wsum = 0;
  for (let i = 0; i <= steps; i++) {
    const zv = -8 + i * h;
    const w = Math.exp(-0.5 * zv * zv);
    acc += w * sigmoid(mu + s * zv);
    wsum += w;
  }
  return acc / wsum;
}

/** The latent mean μ with E[sigmoid(μ + s·Z)] = target (bisection). */
export function solveLatentMean(target: number, s: number): number {
  let lo = -30;
  let hi = 30;
  for (let i = 0; i < 80; i++) {
    const mid = (lo + hi) / 2;
    if (meanSigmoid(mid, s) < target) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** Draft statistics implied by a top-1 probability (rest split between a runner-up and a 30-token tail). */
function featuresFromTop1(top1: number, rng: Rng, position: number): DraftTokenFeatures {
  const t1 = Math.min(0.999999, Math.max(1e-6, top1));
  const rest = 1 - t1;
  const t2 = Math.min(t1, rest * (0.3 + 0.5 * rng.uniform()));
  const tail = Math.max(1e-9, rest - t2);
  const each = tail / 30;
  const entropy = -t1 * Math.log(t1) - (t2 > 0 ? t2 * Math.log(t2) : 0) - tail * Math.log(each);
  return { top1Prob: t1, margin: t1 - t2, entropy, logitSpread: Math.log(t1 / each), position };
}

/** The parametric model (see file comment). @throws AcceptanceModelError on out-of-range params */
export function parametricAcceptance(params: ParametricAcceptanceParams, name = 'parametric'): AcceptanceModel {
  const p = {
    tokenSpread: 1.5,
    sessionSpread: 0.5,
    confidenceNoise: 0.8,
    overconfidence: 0.5,
    positionDecay: 0,
    ...params,
  };
  if (!(p.agreement > 0 && p.agreement < 1)) throw new AcceptanceModelError(`agreement must be in (0, 1), got ${p.agreement}`);
  for (const k of ['tokenSpread', 'sessionSpread', 'confidenceNoise', 'positionDecay'] as const) {
    if (!(p[k] >= 0) || !Number.isFinite(p[k])) throw new AcceptanceModelError(`${k} must be a finite number ≥ 0, got ${p[k]}`);
  }
  const mu = solveLatentMean(p.agreement, Math.hypot(p.tokenSpread, p.sessionSpread));
  return {
    name,
    meanAcceptance: p.agreement,
    sessionOffset: (rng) => p.sessionSpread * rng.normal(),
    draw: (rng, offset, position) => {
      const zLatent = mu + offset + p.tokenSpread * rng.normal() - p.positionDecay * position;
      const accepted = rng.uniform() < sigmoid(zLatent);
      const top1 = sigmoid(zLatent + p.overconfidence + p.confidenceNoise * rng.normal());
      return { features: featuresFromTop1(top1, rng, position), accepted };
    },
  };
}

/** One observed drafted token of a live draft/target pair. */
export const AcceptanceSampleSchema = z.object({
  position: z.number().int().min(0),
  top1Prob: z.number().min(0).max(1),
  entropy: z.number().min(0),
  margin: z.number().min(0).max(1),
  logitSpread: z.number().finite(),
  accepted: z.boolean(),
  /** Device profile that drafted it (live runs record it; each class has its own draft model). */
  deviceClass: z.string().optional(),
});
export type AcceptanceSample = z.infer<typeof AcceptanceSampleSchema>;

/**
 * Parses observed drafted tokens, one JSON object per line (AcceptanceSampleSchema).
 * @throws AcceptanceModelError naming the first bad line
 */
export function parseAcceptanceSamples(text: string, source = 'samples'): AcceptanceSample[] {
  const out: AcceptanceSample[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === '') return;
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch (e) {
      throw new AcceptanceModelError(`${source}:${i + 1}: invalid JSON (${(e as Error).message})`);
    }
    const r = AcceptanceSampleSchema.safeParse(raw);
    if (!r.success) throw new AcceptanceModelError(`${source}:${i + 1}: ${r.error.issues.map((x) => `${x.path.join('.')}: ${x.message}`).join('; ')}`);
    out.push(r.data);
  });
  if (out.length === 0) throw new AcceptanceModelError(`${source}: no samples`);
  return out;
}

/**
 * The empirical model: draws an observed token at the same position (the last observed
 * position for later ones). Session offsets are 0: the samples already mix prompts.
 * @throws AcceptanceModelError for no samples
 */
export function empiricalAcceptance(samples: readonly AcceptanceSample[], name = 'empirical'): AcceptanceModel {
  if (samples.length === 0) throw new AcceptanceModelError('empirical acceptance needs at least one sample');
  const byPosition: AcceptanceSample[][] = [];
  for (const s of samples) (byPosition[s.position] ??= []).push(s);
  // Positions never observed borrow the nearest earlier observed one.
  const buckets: AcceptanceSample[][] = [];
  let last: AcceptanceSample[] = samples.slice();
  for (let i = 0; i < byPosition.length; i++) {
    if (byPosition[i]?.length) last = byPosition[i];
    buckets.push(last);
  }
  const mean = samples.filter((s) => s.accepted).length / samples.length;
  return {
    name,
    meanAcceptance: mean,
    sessionOffset: () => 0,
    draw: (rng, _offset, position) => {
      const b = buckets[Math.min(position, buckets.length - 1)];
      const s = b[Math.floor(rng.uniform() * b.length)];
      return { features: { top1Prob: s.top1Prob, entropy: s.entropy, margin: s.margin, logitSpread: s.logitSpread, position }, accepted: s.accepted };
    },
  };
}

/** Parametric params matched to observed tokens: agreement = mean acceptance, overconfidence from mean top-1. */
export function fitParametricAcceptance(samples: readonly AcceptanceSample[]): ParametricAcceptanceParams {
  if (samples.length === 0) throw new AcceptanceModelError('cannot fit acceptance to no samples');
  const clamp = (x: number) => Math.min(0.999, Math.max(0.001, x));
  const agreement = clamp(samples.filter((s) => s.accepted).length / samples.length);
  const meanTop1 = clamp(samples.reduce((a, s) => a + s.top1Prob, 0) / samples.length);
  return { agreement, overconfidence: logit(meanTop1) - logit(agreement) };
}
