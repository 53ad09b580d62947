/**
 * Runs any decoder in the Hugging Face Optimum ONNX layout with onnxruntime-node: batched
 * incremental forward passes over per-session KV caches of different lengths.
 *
 * One ORT run per `forward` call. Each batch row's key sequence is
 * `[left pad | past_i | pad | new_i]`: pasts right-aligned to the longest past, new tokens
 * right-aligned to the most new tokens, pads masked by attention_mask = 0, and
 * position_ids = cumsum(mask) − 1 at the real tokens. Afterwards each row's new positions are
 * copied from `present.*` into its own cache.
 */
import * as ort from 'onnxruntime-node';
import { CacheMisuseError, ModelGraphError, TokenOutOfVocabError } from './errors.ts';
import { KvCache, type KvLayout } from './kv-cache.ts';
import { assertFitsContext, checkDecoderGraph, readModelDir, type DecoderGraphLayout, type GraphValue } from './model-dir.ts';
import type { DecoderRunner, ForwardItem, KvCacheHandle, ModelInfo } from './types.ts';

export interface LoadDecoderOptions {
  /** ORT intra-op threads (default: onnxruntime's choice, one per physical core). */
  threads?: number;
  /**
   * Let idle intra-op threads spin between work items (default false). Spinning shaves a little
   * latency on a dedicated machine but burns cores that edge emulation, the broker and other
   * workers on the same host need, and is much slower when cores are oversubscribed.
   */
  spinning?: boolean;
}

/** Grows-only scratch Float32Array storage, handed out as exact-length views. */
class Scratch {
  private buf = new Float32Array(0);
  view(length: number): Float32Array {
    if (this.buf.length < length) this.buf = new Float32Array(Math.max(length, Math.ceil(this.buf.length * 1.5)));
    return this.buf.subarray(0, length);
  }
}

function graphValues(meta: readonly ort.InferenceSession.ValueMetadata[]): GraphValue[] {
  return meta.map((m) => (m.isTensor ? { name: m.name, shape: m.shape } : { name: m.name }));
}

/** A loaded decoder; create with `loadDecoder`. */
export class OnnxDecoderRunner implements DecoderRunner {
  private readonly layout: KvLayout;
  private readonly pastK: Scratch[];
  private readonly pastV: Scratch[];
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;

  constructor(
    readonly info: ModelInfo,
    private readonly session: ort.InferenceSession,
    private readonly graph: DecoderGraphLayout,
    readonly modelPath: string,
  ) {
    this.layout = { numLayers: info.numLayers, numKvHeads: info.numKvHeads, headDim: info.headDim };
    this.pastK = Array.from({ length: info.numLayers }, () => new Scratch());
    this.pastV = Array.from({ length: info.numLayers }, () => new Scratch());
  }

  /** True when the graph takes `use_cache_branch` (an Optimum merged decoder). */
  get isMerged(): boolean {
    return this.graph.hasUseCacheBranch;
  }

  newCache(): KvCacheHandle {
    if (this.disposed) throw new CacheMisuseError('runner was disposed');
    return new KvCache(this.layout, this);
  }

  forward(items: ForwardItem[]): Promise<Float32Array[]> {
    // Runs are serialised: the past scratch buffers are shared between calls.
    const run = this.queue.then(() => this.forwardNow(items));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private checkItems(items: ForwardItem[]): KvCache[] {
    if (this.disposed) throw new CacheMisuseError('runner was disposed');
    const seen = new Set<KvCacheHandle>();
    return items.map((item) => {
      const cache = item.cache;
      if (!(cache instanceof KvCache) || cache.owner !== this) throw new CacheMisuseError(`a cache of another runner was passed to ${this.info.name}`);
      if (cache.isReleased) throw new CacheMisuseError('cache was released');
      if (seen.has(cache)) throw new CacheMisuseError('the same cache appears twice in one batch');
      seen.add(cache);
      for (const t of item.tokens) {
        if (!Number.isInteger(t) || t < 0 || t >= this.info.vocabSize) throw new TokenOutOfVocabError(t, this.info.vocabSize);
      }
      assertFitsContext(this.info, cache.length + item.tokens.length);
      return cache;
    });
  }

  private async forwardNow(all: ForwardItem[]): Promise<Float32Array[]> {
    const allCaches = this.checkItems(all);
    // Items without new tokens stay out of the batch (no padding rows, no cache copies).
    const active = all.map((item, i) => (item.tokens.length > 0 ? i : -1)).filter((i) => i >= 0);
    const results: Float32Array[] = all.map(() => new Float32Array(0));
    if (active.length === 0) return results;
    const items = active.map((i) => all[i]);
    const caches = active.map((i) => allCaches[i]);
    const B = items.length;
    const V = this.info.vocabSize;
    let S = 0;
    let P = 0;
    for (let b = 0; b < B; b++) {
      S = Math.max(S, items[b].tokens.length);
      P = Math.max(P, caches[b].length);
    }
    const T = P + S;
    const { numLayers, numKvHeads: Hkv, headDim: Dh } = this.layout;

    const inputIds = new BigInt64Array(B * S);
    const positionIds = new BigInt64Array(B * S);
    const mask = new BigInt64Array(B * T);
    for (let b = 0; b < B; b++) {
      const tokens = items[b].tokens;
      const n = tokens.length;
      const past = caches[b].length;
      mask.fill(1n, b * T + P - past, b * T + P);
      mask.fill(1n, b * T + T - n, b * T + T);
      for (let j = 0; j < n; j++) {
        const at = b * S + S - n + j;
        inputIds[at] = BigInt(tokens[j]);
        positionIds[at] = BigInt(past + j);
      }
      caches[b].reserve(past + n);
    }
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', inputIds, [B, S]),
      attention_mask: new ort.Tensor('int64', mask, [B, T]),
    };
    if (this.graph.hasPositionIds) feeds.position_ids = new ort.Tensor('int64', positionIds, [B, S]);
    if (this.graph.hasUseCacheBranch) feeds.use_cache_branch = new ort.Tensor('bool', Uint8Array.of(P > 0 ? 1 : 0), [1]);
    const pastSize = B * Hkv * P * Dh;
    for (let l = 0; l < numLayers; l++) {
      const k = this.pastK[l].view(pastSize);
      const v = this.pastV[l].view(pastSize);
      for (let b = 0; b < B; b++) {
        const past = caches[b].length;
        if (past < P) {
          // Left pads are masked, but must be finite: zero them (the scratch holds old data).
          for (let h = 0; h < Hkv; h++) {
            const start = (b * Hkv + h) * P * Dh;
            k.fill(0, start, start + (P - past) * Dh);
            v.fill(0, start, start + (P - past) * Dh);
          }
        }
        caches[b].writePast(l, k, v, b, P);
      }
      feeds[`past_key_values.${l}.key`] = new ort.Tensor('float32', k, [B, Hkv, P, Dh]);
      feeds[`past_key_values.${l}.value`] = new ort.Tensor('float32', v, [B, Hkv, P, Dh]);
    }

    const out = await this.session.run(feeds);

    const logits = out.logits.data as Float32Array;
    const dims = out.logits.dims;
    if (dims.length !== 3 || dims[0] !== B || dims[1] !== S || dims[2] !== V) {
      throw new ModelGraphError(this.modelPath, `output "logits" has shape [${dims.join(',')}], expected [${B},${S},${V}]`);
    }
    for (let l = 0; l < numLayers; l++) {
      const pk = out[`present.${l}.key`];
      const pv = out[`present.${l}.value`];
      if (pk.dims[2] !== T) throw new ModelGraphError(this.modelPath, `output "present.${l}.key" has ${pk.dims[2]} positions, expected ${T}`);
      const kData = pk.data as Float32Array;
      const vData = pv.data as Float32Array;
      for (let b = 0; b < B; b++) {
        const n = items[b].tokens.length;
        caches[b].readPresent(l, kData, vData, b, T, T - n, n);
      }
    }
    for (let b = 0; b < B; b++) {
      const n = items[b].tokens.length;
      caches[b].commit(n);
      results[active[b]] = logits.slice((b * S + S - n) * V, (b * S + S) * V);
    }
    return results;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.queue;
    await this.session.release();
  }
}

/**
 * Loads the decoder in `dir` (model.onnx + config.json, Optimum layout). Dimensions come from
 * config.json, refined by the graph's past_key_values shapes (grouped-query attention).
 * @throws ModelDirNotFoundError, ModelFileMissingError, ModelConfigError, ModelGraphError
 */
export async function loadDecoder(dir: string, opts: LoadDecoderOptions = {}): Promise<OnnxDecoderRunner> {
  const md = await readModelDir(dir);
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    interOpNumThreads: 1,
    ...(opts.threads !== undefined ? { intraOpNumThreads: opts.threads } : {}),
    extra: { session: { intra_op: { allow_spinning: opts.spinning ? '1' : '0' } } },
  };
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(md.modelPath, sessionOptions);
  } catch (err) {
    throw new ModelGraphError(md.modelPath, `onnxruntime cannot load it (${(err as Error).message.split('\n')[0]})`);
  }
  try {
    const graph = checkDecoderGraph(md.modelPath, graphValues(session.inputMetadata), graphValues(session.outputMetadata), md.info.numLayers);
    const info: ModelInfo = { ...md.info };
    // The graph's declared past shapes win over config.json (some configs omit num_key_value_heads).
    if (graph.pastKvHeads !== null) info.numKvHeads = graph.pastKvHeads;
    if (graph.pastHeadDim !== null) info.headDim = graph.pastHeadDim;
    if (info.numHeads % info.numKvHeads !== 0) {
      throw new ModelGraphError(md.modelPath, `past_key_values declare ${info.numKvHeads} kv heads, which does not divide ${info.numHeads} attention heads`);
    }
    return new OnnxDecoderRunner(info, session, graph, md.modelPath);
  } catch (err) {
    await session.release();
    throw err;
  }
}
