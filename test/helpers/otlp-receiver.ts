/**
 * An in-process OTLP/HTTP trace receiver for tests: listens on 127.0.0.1, accepts
 * `POST /v1/traces` as protobuf (the default protocol) or JSON, and keeps every span in a
 * flat, decoded form. The protobuf side is a small reader of the wire format for the fields
 * of ExportTraceServiceRequest we look at (opentelemetry-proto trace/v1, common/v1).
 */
import { createServer, type Server } from 'node:http';
import { gunzipSync } from 'node:zlib';

export interface ReceivedLink {
  traceId: string;
  spanId: string;
  attributes: Record<string, unknown>;
}

export interface ReceivedSpan {
  service: string;
  scope: string;
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  name: string;
  kind: number;
  startNs: bigint;
  endNs: bigint;
  attributes: Record<string, unknown>;
  links: ReceivedLink[];
  statusCode: number;
}

export interface OtlpReceiver {
  /** Base URL for OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces). */
  url: string;
  spans: ReceivedSpan[];
  /** Content types of the requests received. */
  contentTypes: Set<string>;
  /** Resolves when `predicate(spans)` holds (checked on every export), or rejects after `timeoutMs`. */
  waitFor(predicate: (spans: ReceivedSpan[]) => boolean, timeoutMs: number, what: string): Promise<void>;
  close(): Promise<void>;
}

// ---- protobuf wire format ----

type Field = { no: number; wt: number; bytes?: Buffer; varint?: bigint; fixed?: Buffer };

function readVarint(buf: Buffer, pos: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
  }
}

function fields(buf: Buffer): Field[] {
  const out: Field[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const [key, p1] = readVarint(buf, pos);
    pos = p1;
    const no = Number(key >> 3n);
    const wt = Number(key & 7n);
    if (wt === 0) {
      const [v, p2] = readVarint(buf, pos);
      out.push({ no, wt, varint: v });
      pos = p2;
    } else if (wt === 1) {
      out.push({ no, wt, fixed: buf.subarray(pos, pos + 8) });
      pos += 8;
    } else if (wt === 2) {
      const [len, p2] = readVarint(buf, pos);
      out.push({ no, wt, bytes: buf.subarray(p2, p2 + Number(len)) });
      pos = p2 + Number(len);
    } else if (wt === 5) {
      out.push({ no, wt, fixed: buf.subarray(pos, pos + 4) });
      pos += 4;
    } else {
      throw new Error(`unsupported wire type ${wt}`);
    }
  }
  return out;
}

const sub = (fs: Field[], no: number) => fs.filter((f) => f.no === no && f.bytes).map((f) => f.bytes!);
const str = (fs: Field[], no: number) => sub(fs, no)[0]?.toString('utf8') ?? '';
const hex = (fs: Field[], no: number) => sub(fs, no)[0]?.toString('hex') ?? '';

function anyValue(buf: Buffer): unknown {
  const f = fields(buf)[0];
  if (!f) return undefined;
  switch (f.no) {
    case 1:
      return f.bytes!.toString('utf8');
    case 2:
      return f.varint !== 0n;
    case 3:
      return Number(BigInt.asIntN(64, f.varint!));
    case 4:
      return f.fixed!.readDoubleLE(0);
    case 5:
      return sub(fields(f.bytes!), 1).map(anyValue);
    default:
      return f.bytes?.toString('hex');
  }
}

function keyValues(list: Buffer[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const kv of list) {
    const fs = fields(kv);
    const v = sub(fs, 2)[0];
    out[str(fs, 1)] = v ? anyValue(v) : undefined;
  }
  return out;
}

function decodeProtobuf(body: Buffer): ReceivedSpan[] {
  const spans: ReceivedSpan[] = [];
  for (const rs of sub(fields(body), 1)) {
    const rsf = fields(rs);
    const resource = sub(rsf, 1)[0];
    const resAttrs = resource ? keyValues(sub(fields(resource), 1)) : {};
    for (const ss of sub(rsf, 2)) {
      const ssf = fields(ss);
      const scopeBuf = sub(ssf, 1)[0];
      const scope = scopeBuf ? str(fields(scopeBuf), 1) : '';
      for (const sp of sub(ssf, 2)) {
        const f = fields(sp);
        const fixed = (no: number) => f.find((x) => x.no === no)?.fixed?.readBigUInt64LE(0) ?? 0n;
        const statusBuf = sub(f, 15)[0];
        spans.push({
          service: String(resAttrs['service.name'] ?? ''),
          scope,
          traceId: hex(f, 1),
          spanId: hex(f, 2),
          parentSpanId: hex(f, 4),
          name: str(f, 5),
          kind: Number(f.find((x) => x.no === 6)?.varint ?? 0n),
          startNs: fixed(7),
          endNs: fixed(8),
          attributes: keyValues(sub(f, 9)),
          links: sub(f, 13).map((l) => {
            const lf = fields(l);
            return { traceId: hex(lf, 1), spanId: hex(lf, 2), attributes: keyValues(sub(lf, 4)) };
          }),
          statusCode: statusBuf ? Number(fields(statusBuf).find((x) => x.no === 3)?.varint ?? 0n) : 0,
        });
      }
    }
  }
  return spans;
}

// ---- OTLP/JSON ----

interface JsonKv {
  key: string;
  value: Record<string, unknown>;
}

function jsonValue(v: Record<string, unknown> | undefined): unknown {
  if (!v) return undefined;
  if ('stringValue' in v) return v.stringValue;
  if ('boolValue' in v) return v.boolValue;
  if ('intValue' in v) return Number(v.intValue);
  if ('doubleValue' in v) return Number(v.doubleValue);
  if ('arrayValue' in v) return ((v.arrayValue as { values?: Record<string, unknown>[] }).values ?? []).map(jsonValue);
  return undefined;
}

function jsonAttrs(list: JsonKv[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const kv of list ?? []) out[kv.key] = jsonValue(kv.value);
  return out;
}

/** OTLP/JSON ids are hex per the spec; accept base64 too (some encoders used it). */
function jsonId(id: unknown, bytes: number): string {
  if (typeof id !== 'string' || id === '') return '';
  if (new RegExp(`^[0-9a-f]{${bytes * 2}}$`, 'i').test(id)) return id.toLowerCase();
  return Buffer.from(id, 'base64').toString('hex');
}

function decodeJson(body: Buffer): ReceivedSpan[] {
  const req = JSON.parse(body.toString('utf8')) as { resourceSpans?: Array<Record<string, any>> };
  const spans: ReceivedSpan[] = [];
  for (const rs of req.resourceSpans ?? []) {
    const resAttrs = jsonAttrs(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const sp of ss.spans ?? []) {
        spans.push({
          service: String(resAttrs['service.name'] ?? ''),
          scope: ss.scope?.name ?? '',
          traceId: jsonId(sp.traceId, 16),
          spanId: jsonId(sp.spanId, 8),
          parentSpanId: jsonId(sp.parentSpanId, 8),
          name: sp.name,
          kind: Number(sp.kind ?? 0),
          startNs: BigInt(sp.startTimeUnixNano ?? 0),
          endNs: BigInt(sp.endTimeUnixNano ?? 0),
          attributes: jsonAttrs(sp.attributes),
          links: (sp.links ?? []).map((l: Record<string, any>) => ({ traceId: jsonId(l.traceId, 16), spanId: jsonId(l.spanId, 8), attributes: jsonAttrs(l.attributes) })),
          statusCode: Number(sp.status?.code ?? 0),
        });
      }
    }
  }
  return spans;
}

/** Starts a receiver on an ephemeral port. */
export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const contentTypes = new Set<string>();
  const waiters = new Set<() => void>();
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end();
        return;
      }
      let body = Buffer.concat(chunks);
      const type = (req.headers['content-type'] ?? '').split(';')[0].trim();
      contentTypes.add(type);
      try {
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        spans.push(...(type === 'application/json' ? decodeJson(body) : decodeProtobuf(body)));
      } catch (err) {
        res.writeHead(400, { 'content-type': 'text/plain' }).end(String(err));
        return;
      }
      res.writeHead(200, { 'content-type': type || 'application/x-protobuf' }).end(type === 'application/json' ? '{}' : Buffer.alloc(0));
      for (const w of [...waiters]) w();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    contentTypes,
    waitFor(predicate, timeoutMs, what) {
      if (predicate(spans)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (!predicate(spans)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${spans.length} spans received: ${[...new Set(spans.map((s) => `${s.service}/${s.name}`))].join(', ')})`));
        }, timeoutMs);
        waiters.add(check);
      });
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
