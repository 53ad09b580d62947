/**
 * Typed errors of the policies. Each has a stable `code` so callers (CLI, actors) can branch
 * on it, and a message that names the offending input.
 */

/** A profile CSV row (or the whole file) does not have the expected form. */
export class ProfileCsvError extends Error {
  readonly code = 'PROFILE_CSV_INVALID' as const;
  /** 1-based line number in the source text, or null for a whole-file problem. */
  readonly line: number | null;
  constructor(message: string, line: number | null) {
    super(message);
    this.name = 'ProfileCsvError';
    this.line = line;
  }
}

/** The estimator was asked about (or shown) a batch it cannot interpret. */
export class EstimatorInputError extends Error {
  readonly code = 'ESTIMATOR_INPUT_INVALID' as const;
  constructor(message: string) {
    super(message);
    this.name = 'EstimatorInputError';
  }
}

/** A policy option or name is out of range. */
export class PolicyConfigError extends Error {
  readonly code = 'POLICY_CONFIG_INVALID' as const;
  constructor(message: string) {
    super(message);
    this.name = 'PolicyConfigError';
  }
}
