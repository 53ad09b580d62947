/**
 * Pearson's chi-square test, shared by the sampling tests (unit and on the forged models).
 */

/**
 * The statistic of observed counts against probabilities over N draws, and its degrees of
 * freedom. Cells expected fewer than 5 times are pooled into one; a count where the expected
 * mass is (numerically) zero makes the statistic infinite.
 */
export function chiSquare(counts: ArrayLike<number>, probs: ArrayLike<number>, N: number): { stat: number; df: number } {
  let stat = 0;
  let cells = 0;
  let pooledObs = 0;
  let pooledExp = 0;
  for (let i = 0; i < probs.length; i++) {
    const e = probs[i] * N;
    if (e < 5) {
      pooledObs += counts[i];
      pooledExp += e;
      continue;
    }
    stat += (counts[i] - e) ** 2 / e;
    cells++;
  }
  if (pooledExp >= 1e-9) {
    stat += (pooledObs - pooledExp) ** 2 / pooledExp;
    cells++;
  } else if (pooledObs > 0) {
    stat = Infinity;
  }
  return { stat, df: cells - 1 };
}

/** Critical value at α = 0.001: exact for df ≤ 10, Wilson–Hilferty beyond (within ~1%). */
export function chiSquareCritical001(df: number): number {
  const table = [0, 10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588];
  if (df <= 10) return table[df];
  const a = 2 / (9 * df);
  return df * (1 - a + 3.090232 * Math.sqrt(a)) ** 3;
}
