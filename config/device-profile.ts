/**
 * The device profile an emulated edge device runs with, its times scaled by `timeScale`.
 */
import { ConfigError } from './load.ts';
import type { DeviceProfile, WispConfig } from './schema.ts';

/** A profile as emulated: times in ms already multiplied by the config's timeScale. */
export interface EmulatedDeviceProfile extends DeviceProfile {
  name: string;
  timeScale: number;
}

/**
 * Looks up a device profile (default: `config.deviceProfile`) and scales its times.
 * Throws ConfigError for an unknown name.
 * @example const p = emulatedDeviceProfile(config, 'raspberry-pi-5'); await sleep(p.draftMsPerToken);
 */
export function emulatedDeviceProfile(config: WispConfig, name: string = config.deviceProfile): EmulatedDeviceProfile {
  const profile = Object.hasOwn(config.devices, name) ? config.devices[name] : undefined;
  if (!profile) {
    const known = Object.keys(config.devices).sort().join(', ');
    throw new ConfigError([{ key: 'deviceProfile', reason: `unknown device profile (known: ${known}), got ${JSON.stringify(name)}` }]);
  }
  const s = config.timeScale;
  return {
    ...profile,
    name,
    timeScale: s,
    draftMsPerToken: profile.draftMsPerToken * s,
    rttMs: profile.rttMs * s,
    jitterMs: profile.jitterMs * s,
  };
}
