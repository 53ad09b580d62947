/**
 * Device mixes as flags write them (`profile[:weight],…`): which device profiles a scenario's
 * devices are dealt from, and in what proportion. Light on imports: the CLI parses flags with it.
 */
import { WispError } from '../common/errors.ts';
import { DEVICE_PROFILES } from '../config/defaults.ts';

export class MixError extends WispError {
  constructor(message: string) {
    super('bad_scenario', message);
  }
}

/** A device class share: a profile name of config/defaults.ts and its relative weight. */
export interface MixPart {
  name: string;
  weight: number;
}

/** Parses `profile[:weight],…` (weights default to 1). @throws ScenarioError */
export function parseMix(text: string): MixPart[] {
  const parts = text.split(',').map((part) => {
    const [name, w, ...rest] = part.trim().split(':');
    const weight = w === undefined ? 1 : Number(w);
    if (!name || rest.length > 0 || !(weight > 0) || !Number.isFinite(weight)) throw new MixError(`device mix "${text}": each part is profile[:weight] with a weight > 0`);
    if (!DEVICE_PROFILES[name]) throw new MixError(`device mix "${text}": unknown device profile "${name}" (known: ${Object.keys(DEVICE_PROFILES).join(', ')})`);
    return { name, weight };
  });
  if (parts.length === 0) throw new MixError('a device mix needs at least one profile');
  return parts;
}

