/**
 * The model forge's public surface: forge a deterministic target/draft pair, or get the
 * built-in pair of a preset (forged on first use).
 */
export { ensureModelPair, forgeModelsAtomic, defaultModelsDir, BUILT_IN_DRAFTS, type ModelPairLocation } from './ensure.ts';
export {
  forgeModels,
  resolveForgeOptions,
  FORGE_VERSION,
  type ForgeOptions,
  type ForgeManifest,
  type ForgeRecord,
  type ResolvedForgeOptions,
} from './forge.ts';
export { PRESET_DIMS, betaForAgreement, type ForgePreset } from './presets.ts';
export { EOS_TOKEN } from './tokenizer-json.ts';
