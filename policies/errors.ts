/**
 * Typed errors of the policies (common/errors.ts WispError): a stable snake_case `code` so
 * callers (CLI, actors) can branch on it, and a message that names the offending input.
 */
import { WispError } from '../common/errors.ts';

/** A profile CSV row (or the whole file) does not have the expected form. */
export class ProfileCsvError extends WispError {
  /** 1-based line number in the source text, or null for a whole-file problem. */
  readonly line: number | null;
  constructor(message: string, line: number | null) {
    super('profile_csv_invalid', message);
    this.line = line;
  }
}

/** The estimator was asked about (or shown) a batch it cannot interpret. */
export class EstimatorInputError extends WispError {
  constructor(message: string) {
    super('estimator_input_invalid', message);
  }
}

/** A policy option or name is out of range. */
export class PolicyConfigError extends WispError {
  constructor(message: string) {
    super('policy_config_invalid', message);
  }
}
