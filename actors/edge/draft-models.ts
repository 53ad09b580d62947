/**
 * Where an edge device's draft model lives and whether it may draft for the target: a device
 * profile's `draftModel` is a folder under the model root (`draft-1`) or a path of its own
 * (`/models/Qwen3-0.6B-onnx`), and a draft must tokenize exactly like the target, or its tokens
 * mean something else to the verifier. A pair that differs is refused at start.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { TokenizerMismatchError } from '../../inference/errors.ts';

/** The draft's folder: `draftModel` resolved against the model root (an absolute path stays as is). */
export function resolveDraftDir(modelRoot: string, draftModel: string): string {
  return resolve(modelRoot, draftModel);
}

/** A wire-safe name for a draft (SessionOpen.draftModel: `[A-Za-z0-9._:-]`, ≤ 128): its folder's name. */
export function draftModelName(draftModel: string): string {
  const name = basename(draftModel.replace(/[/\\]+$/, '')).replace(/[^A-Za-z0-9._:-]/g, '_').slice(0, 128);
  return name || 'draft';
}

interface TokenizerShape {
  type: string;
  vocab: Map<string, number>;
  merges: string[];
  added: Map<number, string>;
}

async function readShape(dir: string): Promise<TokenizerShape | null> {
  let text: string;
  try {
    text = await readFile(join(dir, 'tokenizer.json'), 'utf8');
  } catch {
    return null; // no tokenizer.json beside the draft: the vocabulary-size check is all there is
  }
  let json: { model?: { type?: string; vocab?: Record<string, number>; merges?: Array<string | [string, string]> }; added_tokens?: Array<{ id: number; content: string }> };
  try {
    json = JSON.parse(text);
  } catch {
    return null; // unreadable here; loading the tokenizer reports it properly
  }
  const vocab = new Map(Object.entries(json.model?.vocab ?? {}));
  const merges = (json.model?.merges ?? []).map((m) => (Array.isArray(m) ? m.join(' ') : m));
  const added = new Map((json.added_tokens ?? []).map((t) => [t.id, t.content] as const));
  return { type: json.model?.type ?? '', vocab, merges, added };
}

/** A short, stable digest of a tokenizer's vocabulary, merges and added tokens (for logs). */
function digest(t: TokenizerShape): string {
  const h = createHash('sha256');
  h.update(t.type);
  for (const [tok, id] of [...t.vocab].sort((a, b) => a[1] - b[1])) h.update(`${id}\u0000${tok}\u0000`);
  for (const m of t.merges) h.update(`${m}\u0001`);
  for (const [id, tok] of [...t.added].sort((a, b) => a[0] - b[0])) h.update(`${id}\u0002${tok}`);
  return h.digest('hex').slice(0, 12);
}

function firstDifference(a: TokenizerShape, b: TokenizerShape): string {
  if (a.type !== b.type) return `model types ${a.type} vs ${b.type}`;
  if (a.vocab.size !== b.vocab.size) return `vocabularies of ${a.vocab.size} vs ${b.vocab.size} entries`;
  const byIdB = new Map([...b.vocab].map(([tok, id]) => [id, tok]));
  for (const [tok, id] of [...a.vocab].sort((x, y) => x[1] - y[1])) {
    if (b.vocab.get(tok) !== id) return `id ${id} is ${JSON.stringify(tok)} vs ${JSON.stringify(byIdB.get(id) ?? null)}`;
  }
  if (a.merges.length !== b.merges.length) return `${a.merges.length} vs ${b.merges.length} merges`;
  for (let i = 0; i < a.merges.length; i++) if (a.merges[i] !== b.merges[i]) return `merge ${i} is ${JSON.stringify(a.merges[i])} vs ${JSON.stringify(b.merges[i])}`;
  for (const [id, tok] of a.added) if (b.added.get(id) !== tok) return `added token ${id} is ${JSON.stringify(tok)} vs ${JSON.stringify(b.added.get(id) ?? null)}`;
  if (a.added.size !== b.added.size) return `${a.added.size} vs ${b.added.size} added tokens`;
  return '';
}

/**
 * Refuses a draft whose tokenizer.json differs from the target's (vocabulary, merges or added
 * tokens): speculative decoding needs both models to mean the same thing by every id. Returns
 * the tokenizer digest when both files exist, null when the draft ships none.
 * @throws TokenizerMismatchError naming both folders and the first difference.
 */
export async function checkDraftTokenizer(targetDir: string, draftDir: string): Promise<string | null> {
  const [target, draft] = await Promise.all([readShape(targetDir), readShape(draftDir)]);
  if (!target || !draft) return null;
  const diff = firstDifference(target, draft);
  if (diff) {
    throw new TokenizerMismatchError(
      `draft ${draftDir} and target ${targetDir} have different tokenizers (${diff}); a draft must use the target's tokenizer.json`,
    );
  }
  return digest(target);
}
