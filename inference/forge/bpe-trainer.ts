/**
 * A small byte-level BPE trainer (GPT-2 style): splits text with the GPT-2 pre-tokenizer
 * regex, maps bytes to printable characters, then merges the most frequent adjacent pair
 * until the vocabulary is full. Deterministic: ties break on the pair's text.
 */

/** GPT-2's pre-tokenizer pattern, the one the ByteLevel pre-tokenizer uses (`use_regex: true`). */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's reversible byte → printable character map (256 entries). */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const out = new Array<string>(256);
  for (let i = 0; i < bs.length; i++) out[bs[i]] = String.fromCodePoint(cs[i]);
  return out;
}

/** Result of training: the vocabulary in id order and the merges in rank order. */
export interface BpeModel {
  /** Token strings (byte-level alphabet), index = id. Bytes first (0..255), then merges. */
  tokens: string[];
  /** Merges as `[left, right]` in the order learned (rank). */
  merges: Array<[string, string]>;
}

/** One training text and how much its pre-tokens count (corpus text weighs more than word lists). */
export interface BpeSource {
  text: string;
  weight: number;
}

/**
 * Learns up to `maxTokens` tokens (256 byte tokens + merges) from `sources`.
 * Stops early when no pair occurs at least `minPairCount` times (weighted).
 * Pair counts are updated incrementally (only words that contain the merged pair are touched).
 */
export function trainByteLevelBpe(sources: BpeSource[], maxTokens: number, minPairCount = 1): BpeModel {
  const byteChars = bytesToUnicode();
  const encoder = new TextEncoder();
  // Unique pre-tokens with their weighted counts, in first-seen order (deterministic).
  const wordCounts = new Map<string, number>();
  for (const { text, weight } of sources) {
    for (const m of text.matchAll(GPT2_SPLIT)) {
      const piece = Array.from(encoder.encode(m[0]), (b) => byteChars[b]).join('');
      wordCounts.set(piece, (wordCounts.get(piece) ?? 0) + weight);
    }
  }
  const tokens = byteChars.slice();
  const idOf = new Map<string, number>(tokens.map((t, i) => [t, i]));
  const words: number[][] = [];
  const counts: number[] = [];
  for (const [w, c] of wordCounts) {
    words.push(Array.from(w, (ch) => idOf.get(ch)!));
    counts.push(c);
  }
  const KEY = 1 << 16;
  const pairCounts = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (w: number, sign: 1 | -1): void => {
    const ids = words[w];
    for (let i = 0; i + 1 < ids.length; i++) {
      const key = ids[i] * KEY + ids[i + 1];
      const c = (pairCounts.get(key) ?? 0) + sign * counts[w];
      if (c > 0) pairCounts.set(key, c);
      else pairCounts.delete(key);
      if (sign > 0) {
        let set = pairWords.get(key);
        if (!set) pairWords.set(key, (set = new Set()));
        set.add(w);
      }
    }
  };
  for (let w = 0; w < words.length; w++) addPairs(w, 1);

  const merges: Array<[string, string]> = [];
  while (tokens.length < maxTokens) {
    let bestKey = -1;
    let bestCount = 0;
    let bestText = '';
    for (const [key, c] of pairCounts) {
      if (c < bestCount || c <= 0) continue;
      if (c > bestCount) {
        bestKey = key;
        bestCount = c;
        bestText = '';
        continue;
      }
      // Tie: the pair whose text sorts first wins (texts built only on ties).
      if (bestText === '') bestText = tokens[Math.floor(bestKey / KEY)] + '\u0000' + tokens[bestKey % KEY];
      const pairText = tokens[Math.floor(key / KEY)] + '\u0000' + tokens[key % KEY];
      if (pairText < bestText) {
        bestKey = key;
        bestText = pairText;
      }
    }
    if (bestKey < 0 || bestCount < minPairCount) break;
    const left = Math.floor(bestKey / KEY);
    const right = bestKey % KEY;
    const merged = tokens[left] + tokens[right];
    merges.push([tokens[left], tokens[right]]);
    let newId = idOf.get(merged);
    if (newId === undefined) {
      newId = tokens.length;
      idOf.set(merged, newId);
      tokens.push(merged);
    }
    const affected = Array.from(pairWords.get(bestKey) ?? []).sort((a, b) => a - b);
    for (const w of affected) {
      addPairs(w, -1);
      const ids = words[w];
      const out: number[] = [];
      for (let i = 0; i < ids.length; i++) {
        if (i + 1 < ids.length && ids[i] === left && ids[i + 1] === right) {
          out.push(newId);
          i++;
        } else out.push(ids[i]);
      }
      words[w] = out;
      addPairs(w, 1);
    }
    pairCounts.delete(bestKey);
    pairWords.delete(bestKey);
  }
  return { tokens, merges };
}
