/**
 * A latency model of the form `max(floorMs, θ·x)`, fit online.
 *
 * Why this form: on a GPU run eagerly (no CUDA graphs) a small batch costs a fixed
 * kernel-launch overhead (the floor) however little work it holds; only past that point does
 * the GPU's own work — linear in the padded shape's features — set the latency. The H200
 * profile shows exactly that: every small batch of Qwen3-32B takes ≈ 53 ms, large ones grow
 * linearly with B·L_max and B·n_max.
 *
 * Fitting: the linear part by recursive least squares on *relative* error (each observation
 * is divided by its latency, so a 50 ms batch counts as much as a 600 ms one: the scheduler
 * cares about percentage error), with a forgetting factor (old hardware behaviour fades), an
 * anti-windup cap on the covariance, and Huber weights (a stray slow batch — GC pause, clock
 * change — moves the fit only a little). The floor is tracked by an exponential average of
 * the observations that look launch-bound. Plain data throughout: the model is JSON.
 */

/** State of one floor + linear model. All arrays are plain numbers (JSON-serialisable). */
export interface FloorLinearModel {
  /** Fixed divisors of the features, so the scaled features are O(1) (conditioning). */
  scales: number[];
  /** Coefficients on the scaled features, ms. */
  theta: number[];
  /** RLS inverse information matrix on the scaled features (k × k, row-major). */
  P: number[][];
  /** Forgetting is paused while trace(P) exceeds this (stops covariance wind-up). */
  traceCapP: number;
  /** Launch-overhead floor, ms. */
  floorMs: number;
  /** RLS forgetting factor λ in (0, 1]. */
  forgetting: number;
  /** Step of the floor's exponential average. */
  floorRate: number;
  /** An observation within (1 + floorBand) × floor counts as launch-bound. */
  floorBand: number;
  /** Relative residual beyond which an observation's RLS weight shrinks (Huber). */
  huberRel: number;
  /** Lower envelope of recent latencies (halves its distance to a lower one, else creeps up 0.1 % per batch); null before any. */
  lowMs: number | null;
  /** Observations folded in (online). */
  observations: number;
  /** Number of RLS updates so far. */
  rlsUpdates: number;
  /** Number of floor updates so far. */
  floorUpdates: number;
}

/** Options for a fresh model. */
export interface FloorLinearInit {
  scales: number[];
  /** Prior coefficients on the scaled features, ms. */
  theta: number[];
  floorMs: number;
  /** Prior variance of each scaled coefficient (relative-error units); default 1e9 ≈ (1.6 s / 5 %)²: weak. */
  priorVariance?: number;
  forgetting?: number;
  floorRate?: number;
  floorBand?: number;
  huberRel?: number;
}

export const FLOOR_LINEAR_DEFAULTS = {
  priorVariance: 1e9,
  forgetting: 0.99,
  floorRate: 0.15,
  floorBand: 0.15,
  huberRel: 0.15,
} as const;

/** Observations before the lower envelope may raise the floor. */
const MIN_OBSERVATIONS_TO_RAISE = 20;

/** A fresh model with a diagonal prior around `theta`. */
export function createFloorLinear(init: FloorLinearInit): FloorLinearModel {
  const k = init.scales.length;
  if (init.theta.length !== k) throw new RangeError(`theta has ${init.theta.length} entries, scales ${k}`);
  const pv = init.priorVariance ?? FLOOR_LINEAR_DEFAULTS.priorVariance;
  const P = identity(k, pv);
  return {
    scales: [...init.scales],
    theta: [...init.theta],
    P,
    traceCapP: pv * k,
    floorMs: init.floorMs,
    forgetting: init.forgetting ?? FLOOR_LINEAR_DEFAULTS.forgetting,
    floorRate: init.floorRate ?? FLOOR_LINEAR_DEFAULTS.floorRate,
    floorBand: init.floorBand ?? FLOOR_LINEAR_DEFAULTS.floorBand,
    huberRel: init.huberRel ?? FLOOR_LINEAR_DEFAULTS.huberRel,
    lowMs: null,
    observations: 0,
    rlsUpdates: 0,
    floorUpdates: 0,
  };
}

/** The linear (compute) part θ·x in ms, for raw (unscaled) features x. */
export function linearMs(m: FloorLinearModel, x: readonly number[]): number {
  let s = 0;
  for (let j = 0; j < m.theta.length; j++) s += (m.theta[j] * x[j]) / m.scales[j];
  return s;
}

/** Predicted latency, ms: the larger of the floor and the compute part. */
export function predictFloorLinear(m: FloorLinearModel, x: readonly number[]): number {
  return Math.max(m.floorMs, linearMs(m, x));
}

/** Coefficients per raw feature unit (θ_j / scale_j), for reports and tests. */
export function rawCoefficients(m: FloorLinearModel): number[] {
  return m.theta.map((t, j) => t / m.scales[j]);
}

/**
 * Folds one observed latency into the model (pure).
 * - Clearly above the floor: the compute part learns from it (robust RLS); if the model thought
 *   the batch launch-bound, the floor also creeps up a little (it may be the floor that is low).
 * - Near or below the floor: the floor moves toward it; the compute part learns only if it
 *   over-predicts (it must lie at or below a launch-bound latency).
 * - A floor far below every recent latency (the lower envelope, once 20 batches are in) is
 *   raised toward it: otherwise a floor that starts too low never recovers, the intercept
 *   having absorbed the overhead.
 */
export function observeFloorLinear(m: FloorLinearModel, x: readonly number[], actualMs: number): FloorLinearModel {
  if (!(actualMs > 0) || !Number.isFinite(actualMs)) return m;
  const lin = linearMs(m, x);
  const band = m.floorMs * (1 + m.floorBand);
  let next = m;
  if (actualMs > band) {
    next = rlsStep(m, x, actualMs, huberWeight(m, lin, actualMs), m.forgetting);
    if (lin < m.floorMs) next = withFloor(next, m.floorMs + m.floorRate * Math.min(actualMs - m.floorMs, m.floorBand * m.floorMs));
  } else {
    next = withFloor(m, m.floorMs + m.floorRate * (actualMs - m.floorMs));
    if (lin > actualMs) next = rlsStep(next, x, actualMs, huberWeight(m, lin, actualMs), m.forgetting);
  }
  const lowMs = m.lowMs === null ? actualMs : actualMs < m.lowMs ? m.lowMs + 0.5 * (actualMs - m.lowMs) : m.lowMs * 1.001;
  const observations = m.observations + 1;
  // The envelope means something only after a few batches (the first may be a large one).
  const raiseTo = (1 - m.floorBand) * lowMs;
  if (observations >= MIN_OBSERVATIONS_TO_RAISE && next.floorMs < raiseTo) next = withFloor(next, next.floorMs + m.floorRate * (raiseTo - next.floorMs));
  return { ...next, lowMs, observations };
}

/**
 * Batch fit from many observations: alternates (a) splitting them into launch-bound and
 * compute-bound by the current floor and compute prediction and (b) re-fitting the floor
 * (median of the launch-bound ones) and the compute part (RLS with λ = 1 from the model's
 * prior, Huber weights from the previous pass). Returns a model ready for online updates.
 */
export function fitFloorLinear(prior: FloorLinearModel, xs: readonly (readonly number[])[], ys: readonly number[], iterations = 6): FloorLinearModel {
  if (xs.length !== ys.length) throw new RangeError(`fitFloorLinear: ${xs.length} feature rows but ${ys.length} latencies`);
  if (ys.length === 0) return prior;
  const sorted = [...ys].sort((a, b) => a - b);
  let floorMs = median(sorted.slice(0, Math.max(1, Math.floor(0.3 * sorted.length))));
  let model: FloorLinearModel = { ...prior, floorMs };
  for (let it = 0; it < iterations; it++) {
    const prev = model;
    const active: number[] = [];
    const floorBound: number[] = [];
    for (let i = 0; i < ys.length; i++) {
      const isActive = ys[i] > floorMs * (1 + prior.floorBand) || (it > 0 && linearMs(prev, xs[i]) > floorMs);
      if (isActive) active.push(i);
      else floorBound.push(ys[i]);
    }
    if (floorBound.length > 0) floorMs = median(floorBound.sort((a, b) => a - b));
    let fit: FloorLinearModel = { ...prior, floorMs };
    for (const i of active) {
      const w = it === 0 ? 1 : huberWeight(prev, linearMs(prev, xs[i]), ys[i]);
      fit = rlsStep(fit, xs[i], ys[i], w, 1);
    }
    model = { ...fit, rlsUpdates: active.length, floorUpdates: floorBound.length, lowMs: sorted[0], observations: ys.length };
  }
  return model;
}

function huberWeight(m: FloorLinearModel, predictedMs: number, actualMs: number): number {
  const r = Math.abs(actualMs - predictedMs) / actualMs;
  return r <= m.huberRel ? 1 : m.huberRel / r;
}

function withFloor(m: FloorLinearModel, floorMs: number): FloorLinearModel {
  return { ...m, floorMs: Math.max(0, floorMs), floorUpdates: m.floorUpdates + 1 };
}

/** One weighted RLS step on relative error: regress 1 on u = (x / scale) / y. */
function rlsStep(m: FloorLinearModel, x: readonly number[], y: number, weight: number, lambdaIn: number): FloorLinearModel {
  const k = m.theta.length;
  const u = new Array<number>(k);
  for (let j = 0; j < k; j++) u[j] = x[j] / m.scales[j] / y;
  const Pu = new Array<number>(k).fill(0);
  for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) Pu[i] += m.P[i][j] * u[j];
  let uPu = 0;
  let pred = 0;
  let trace = 0;
  for (let j = 0; j < k; j++) {
    uPu += u[j] * Pu[j];
    pred += m.theta[j] * u[j];
    trace += m.P[j][j];
  }
  const lambda = trace > m.traceCapP ? 1 : lambdaIn;
  const denom = lambda / Math.max(weight, 1e-9) + uPu;
  const gain = Pu.map((v) => v / denom);
  const residual = 1 - pred;
  const theta = m.theta.map((t, j) => t + gain[j] * residual);
  const P: number[][] = [];
  for (let i = 0; i < k; i++) {
    const row = new Array<number>(k);
    for (let j = 0; j < k; j++) row[j] = (m.P[i][j] - gain[i] * Pu[j]) / lambda;
    P.push(row);
  }
  // Keep P symmetric against round-off.
  for (let i = 0; i < k; i++) {
    for (let j = i + 1; j < k; j++) {
      const s = (P[i][j] + P[j][i]) / 2;
      P[i][j] = s;
      P[j][i] = s;
    }
  }
  return { ...m, theta, P, rlsUpdates: m.rlsUpdates + 1 };
}

function identity(k: number, v: number): number[][] {
  return Array.from({ length: k }, (_, i) => Array.from({ length: k }, (_, j) => (i === j ? v : 0)));
}

function median(sorted: readonly number[]): number {
  const n = sorted.length;
  return n % 2 === 1 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}
