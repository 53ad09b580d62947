/**
 * The CLI's own error: a flag's value failed validation. The message names the flag; `wisp`
 * prints it as `wisp: [invalid_options] --flag: reason` (cli/main.ts).
 */
import { WispError } from '../common/errors.ts';

export class OptionsError extends WispError {
  constructor(message: string) {
    super('invalid_options', message);
  }
}
