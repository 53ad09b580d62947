/**
 * The layering rules, checked on every production source file (docs/design.md §2):
 * - machines/ and the pure layers (policies/, edge/, physics/ but its loader, protocol/,
 *   results/metrics.ts and schema.ts, common/) import no I/O — no broker, Redis, ONNX, file
 *   system, network, telemetry or role code — and read no clock, timer or unseeded randomness;
 * - the simulator imports nothing from actors/ or bench/;
 * - no production file imports test/;
 * - amqplib only in broker/, ioredis only in store/, onnxruntime-node only in inference/;
 * - the concrete broker client and Redis store are wired only by the composition roots.
 */
import { expect } from 'chai';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

const ROOT = normalize(join(dirname(new URL(import.meta.url).pathname), '..', '..'));

function productionFiles(dir = ROOT, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    if (['node_modules', 'test', 'dist', 'reports', 'data'].includes(name) || name.startsWith('.')) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) productionFiles(p, out);
    else if (p.endsWith('.ts')) out.push(relative(ROOT, p));
  }
  return out;
}

/** Import specifiers of a source text: static `from '…'`, side-effect `import '…'` and dynamic `import('…')`. */
export function importsOf(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)) out.push(m[1]);
  return out;
}

/** A specifier as a repository path (relative ones resolved), or the package name. */
function target(file: string, spec: string): string {
  return spec.startsWith('.') ? normalize(join(dirname(file), spec)) : spec;
}

const PURE = (f: string): boolean =>
  /^(machines|policies|edge|protocol|common)\//.test(f) || (f.startsWith('physics/') && f !== 'physics/engines.ts') || f === 'results/metrics.ts' || f === 'results/schema.ts';
const IO_PACKAGES = /^(node:|amqplib$|ioredis$|onnxruntime-node$|pino$|prom-client$|@opentelemetry\/)/;
const IO_FOLDERS = /^(broker|store|actors|telemetry|cli|bench|sim)\//;
const CLOCKS = /\b(setTimeout|setInterval|setImmediate|Date\.now|performance\.now|Math\.random)\s*\(/;
const COMPOSITION_ROOTS = new Set(['actors/launch.ts', 'actors/store.ts', 'bench/live.ts', 'bench/overhead.ts', 'cli/commands/enqueue.ts', 'broker/tap.ts']);

/** Every rule a file breaks, as readable lines. */
export function violations(file: string, text: string): string[] {
  const out: string[] = [];
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
  for (const spec of importsOf(text)) {
    const t = target(file, spec);
    if (PURE(file)) {
      if (IO_PACKAGES.test(t)) out.push(`${file}: a pure module imports ${spec}`);
      if (IO_FOLDERS.test(t)) out.push(`${file}: a pure module imports ${t}`);
      if (t.startsWith('inference/') && t !== 'inference/types.ts') out.push(`${file}: a pure module imports ${t}`);
      if (file.startsWith('machines/') && (t.startsWith('edge/') || t === 'physics/engines.ts')) out.push(`${file}: a machine imports ${t}`);
    }
    if (file.startsWith('sim/') && /^(actors|bench)\//.test(t)) out.push(`${file}: the simulator imports ${t}`);
    if (t.startsWith('test/')) out.push(`${file}: production code imports ${t}`);
    if (t === 'amqplib' && !file.startsWith('broker/')) out.push(`${file}: amqplib outside broker/`);
    if (t === 'ioredis' && !file.startsWith('store/')) out.push(`${file}: ioredis outside store/`);
    if (t === 'onnxruntime-node' && !file.startsWith('inference/')) out.push(`${file}: onnxruntime-node outside inference/`);
    if ((t === 'broker/connection.ts' && !file.startsWith('broker/')) || t === 'store/redis-store.ts') {
      if (!COMPOSITION_ROOTS.has(file) && !file.startsWith('store/')) out.push(`${file}: wires ${t} but is no composition root`);
    }
  }
  if (PURE(file) && CLOCKS.test(code)) out.push(`${file}: a pure module reads a clock, a timer or unseeded randomness`);
  return out;
}

describe('import rules (layering)', () => {
  it('hold for every production file', () => {
    const files = productionFiles();
    expect(files.length).to.be.greaterThan(100);
    const broken = files.flatMap((f) => violations(f, readFileSync(join(ROOT, f), 'utf8')));
    expect(broken).to.deep.equal([]);
  });

  it('catch each kind of violation (the checker itself)', () => {
    expect(violations('machines/x.ts', "import { connectBroker } from '../broker/connection.ts';")).to.not.deep.equal([]);
    expect(violations('policies/x.ts', "import { readFileSync } from 'node:fs';")).to.not.deep.equal([]);
    expect(violations('policies/x.ts', 'export const f = () => Date.now();')).to.not.deep.equal([]);
    expect(violations('policies/x.ts', '// Date.now() would be wrong here\nexport const f = 1;')).to.deep.equal([]);
    expect(violations('sim/x.ts', "import { EdgeDevice } from '../actors/edge/device.ts';")).to.not.deep.equal([]);
    expect(violations('bench/x.ts', "import { testVhost } from '../test/helpers/vhost.ts';")).to.not.deep.equal([]);
    expect(violations('actors/x.ts', "import amqp from 'amqplib';")).to.not.deep.equal([]);
    expect(violations('actors/edge/device.ts', "import { connectBroker } from '../../broker/connection.ts';")).to.not.deep.equal([]);
    expect(violations('actors/launch.ts', "import { connectBroker } from '../broker/connection.ts';")).to.deep.equal([]);
    expect(violations('sim/x.ts', "const m = await import('../actors/launch.ts');")).to.not.deep.equal([]);
  });
});
