// Worker-thread entry of the regime map (sim/map-runner.ts). A worker thread does not inherit
// the TypeScript loader the main thread registered, so this plain-JS file registers it before
// loading the worker's code.
import { register } from 'tsx/esm/api';

register();
await import('./map-worker.ts');
