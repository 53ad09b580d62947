/** The config module's public surface (see load.ts for the loading order). */
export { loadConfig, readConfigFile, ConfigError, type ConfigIssue, type LoadConfigInput, type DeepPartial } from './load.ts';
export { WispConfigSchema, DeviceProfileSchema, POLICIES, LOG_LEVELS, MODEL_PRESETS, type WispConfig, type DeviceProfile, type PolicyName, type TlsConfig } from './schema.ts';
export { DEFAULT_CONFIG, DEVICE_PROFILES } from './defaults.ts';
export { ENV_VARS, CONFIG_FILE_ENV, envTableMarkdown, type EnvVar } from './env.ts';
export { emulatedDeviceProfile, type EmulatedDeviceProfile } from './device-profile.ts';
