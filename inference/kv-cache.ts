/**
 * One session's key/value cache for the ONNX runner: per layer, keys and values stored as
 * [kvHeads, capacity, headDim] so a head's positions are one contiguous run (copied into and
 * out of batched tensors with `set`/`subarray`, never element by element).
 */
import { CacheMisuseError } from './errors.ts';
import type { KvCacheHandle } from './types.ts';

/** Shape of every cache of one model. */
export interface KvLayout {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
}

const INITIAL_CAPACITY = 64;

/** A growable per-session cache; created by `DecoderRunner.newCache()`. */
export class KvCache implements KvCacheHandle {
  private keys: Float32Array[];
  private values: Float32Array[];
  private capacity = 0;
  private len = 0;
  private disposed = false;

  /** @param owner the runner that made this cache (a cache only works with its own runner). */
  constructor(readonly layout: KvLayout, readonly owner: object) {
    this.keys = [];
    this.values = [];
  }

  get length(): number {
    return this.len;
  }

  /** Bytes of the positions held (keys + values, all layers, float32). */
  get bytes(): number {
    const { numLayers, numKvHeads, headDim } = this.layout;
    return this.len * numLayers * 2 * numKvHeads * headDim * 4;
  }

  /** Bytes allocated (capacity ≥ length). */
  get allocatedBytes(): number {
    const { numLayers, numKvHeads, headDim } = this.layout;
    return this.capacity * numLayers * 2 * numKvHeads * headDim * 4;
  }

  rollback(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.len) {
      throw new CacheMisuseError(`cannot roll back to ${length}: the cache holds ${this.len} positions`);
    }
    this.len = length;
  }

  /** Frees the tensors; the handle is unusable afterwards. */
  release(): void {
    this.keys = [];
    this.values = [];
    this.capacity = 0;
    this.len = 0;
    this.disposed = true;
  }

  get isReleased(): boolean {
    return this.disposed;
  }

  /** Grows storage (doubling) so `needed` positions fit, keeping the current positions. */
  reserve(needed: number): void {
    if (this.disposed) throw new CacheMisuseError('cache was released');
    if (needed <= this.capacity) return;
    let cap = Math.max(INITIAL_CAPACITY, this.capacity);
    while (cap < needed) cap *= 2;
    const { numLayers, numKvHeads, headDim } = this.layout;
    const grow = (old: Float32Array | undefined): Float32Array => {
      const next = new Float32Array(numKvHeads * cap * headDim);
      if (old) {
        for (let h = 0; h < numKvHeads; h++) {
          next.set(old.subarray(h * this.capacity * headDim, (h * this.capacity + this.len) * headDim), h * cap * headDim);
        }
      }
      return next;
    };
    for (let l = 0; l < numLayers; l++) {
      this.keys[l] = grow(this.keys[l]);
      this.values[l] = grow(this.values[l]);
    }
    this.capacity = cap;
  }

  /**
   * Copies this cache's positions of `layer` into batched past tensors [B, Hkv, pastLen, Dh]
   * at batch row `row`, right-aligned (positions pastLen − length … pastLen − 1).
   */
  writePast(layer: number, dstK: Float32Array, dstV: Float32Array, row: number, pastLen: number): void {
    const { numKvHeads, headDim } = this.layout;
    const n = this.len * headDim;
    if (n === 0) return;
    const k = this.keys[layer];
    const v = this.values[layer];
    const stride = this.capacity * headDim;
    for (let h = 0; h < numKvHeads; h++) {
      const dst = ((row * numKvHeads + h) * pastLen + (pastLen - this.len)) * headDim;
      dstK.set(k.subarray(h * stride, h * stride + n), dst);
      dstV.set(v.subarray(h * stride, h * stride + n), dst);
    }
  }

  /**
   * Copies `count` positions of `layer` from present tensors [B, Hkv, totalLen, Dh] (row `row`,
   * key index `from`) to positions length … length + count − 1. Call `commit(count)` after all layers.
   */
  readPresent(layer: number, srcK: Float32Array, srcV: Float32Array, row: number, totalLen: number, from: number, count: number): void {
    const { numKvHeads, headDim } = this.layout;
    const n = count * headDim;
    const k = this.keys[layer];
    const v = this.values[layer];
    const stride = this.capacity * headDim;
    for (let h = 0; h < numKvHeads; h++) {
      const src = ((row * numKvHeads + h) * totalLen + from) * headDim;
      const dst = h * stride + this.len * headDim;
      k.set(srcK.subarray(src, src + n), dst);
      v.set(srcV.subarray(src, src + n), dst);
    }
  }

  /** Makes `count` positions written by `readPresent` part of the cache. */
  commit(count: number): void {
    this.len += count;
  }
}
