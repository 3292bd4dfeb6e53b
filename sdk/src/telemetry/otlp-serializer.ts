import type { Attributes, AttributeValue, HrTime, Link, SpanContext, SpanStatus } from "@opentelemetry/api";
import type { ReadableSpan, TimedEvent } from "@opentelemetry/sdk-trace";
import { DsatEvent, DsatSpan } from "./dsat-tracer.ts";

// An OTLP ExportTraceServiceRequest encoder for the OpenTelemetry SDK's finished spans: the
// same bytes as @opentelemetry/otlp-transformer's ProtobufTraceSerializer (same fields, same
// order, same defaults; checked byte for byte in otlp-serializer.test.ts), in one pass instead
// of two, with strings and hex ids written by Buffer's native code and attribute keys encoded
// once per process. At 100% sampling the export was the largest part of what tracing costs a
// dsat process (see docs/benchmarks.md).
//
// Field numbers are those of opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto.

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;
/** KeyValue.value: field 2, length-delimited. */
const VALUE_TAG = (2 << 3) | WIRE_LEN;

const SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK = 0x100;
const SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK = 0x200;
const MIN_INT64 = -(2 ** 63);
const MAX_INT64 = 2 ** 63;
/** Strings up to this many UTF-16 units encode to at most 127 bytes: one byte of length. */
const SHORT_STRING = 42;
/** KeyValue messages of attribute keys seen so far, up to the value: tag, length, key. */
const KEY_CACHE_LIMIT = 1024;

/** Values of the hex digits by char code, -1 for the others. */
const HEX = new Int8Array(128).fill(-1);
for (let i = 0; i < 10; i++) HEX[48 + i] = i;
for (let i = 0; i < 6; i++) {
  HEX[65 + i] = 10 + i;
  HEX[97 + i] = 10 + i;
}

/** A growing buffer with protobuf writes; nested messages get their length when they end. */
class Writer {
  buf: Buffer;
  pos = 0;

  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  byte(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  tag(field: number, wire: number): void {
    const t = (field << 3) | wire;
    if (t < 0x80) {
      this.ensure(1);
      this.buf[this.pos++] = t;
    } else this.varint(t);
  }

  /** A non-negative integer below 2^53 as a varint. */
  varint(n: number): void {
    this.ensure(10);
    const buf = this.buf;
    let pos = this.pos;
    while (n > 0x7f) {
      buf[pos++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    buf[pos++] = n;
    this.pos = pos;
  }

  /** A signed 64-bit integer as a varint (two's complement: ten bytes when negative). */
  int64(n: number): void {
    if (n >= 0 && n <= Number.MAX_SAFE_INTEGER) {
      this.varint(n);
      return;
    }
    let v = BigInt.asUintN(64, BigInt(n));
    this.ensure(10);
    while (v > 0x7fn) {
      this.buf[this.pos++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.pos++] = Number(v);
  }

  fixed32(n: number): void {
    this.ensure(4);
    this.buf.writeUInt32LE(n >>> 0, this.pos);
    this.pos += 4;
  }

  double(n: number): void {
    this.ensure(8);
    this.buf.writeDoubleLE(n, this.pos);
    this.pos += 8;
  }

  /** HrTime [seconds, nanoseconds] as fixed64 nanoseconds, exact past 2^53. */
  hrTime(t: HrTime): void {
    this.time(t[0], t[1]);
  }

  /** Milliseconds since the epoch (a DsatSpan's times) as fixed64 nanoseconds: the nanoseconds of msToHrTime(ms). */
  ms(ms: number): void {
    const seconds = Math.floor(ms / 1000);
    const nanos = Math.round((ms - seconds * 1000) * 1e6);
    if (nanos >= 1e9) this.time(seconds + 1, nanos - 1e9);
    else this.time(seconds, Math.max(0, nanos));
  }

  /** seconds * 1e9 + nanos as fixed64, exact past 2^53. */
  time(seconds: number, nanos: number): void {
    // seconds * 1e9 + nanos, split in 32-bit halves without losing precision.
    const lowSeconds = seconds % 0x10000;
    const highSeconds = Math.floor(seconds / 0x10000);
    const fromLow = lowSeconds * 1e9; // < 2^46
    const fromHigh = highSeconds * 1e9; // times 2^16
    const low = (fromLow % 0x100000000) + (fromHigh % 0x10000) * 0x10000 + nanos;
    const high = Math.floor(fromLow / 0x100000000) + Math.floor(fromHigh / 0x10000) + Math.floor(low / 0x100000000);
    this.ensure(8);
    this.buf.writeUInt32LE(low >>> 0, this.pos);
    this.buf.writeUInt32LE(high >>> 0, this.pos + 4);
    this.pos += 8;
  }

  /** A string with its length. */
  string(s: string): void {
    const len = s.length;
    if (len <= SHORT_STRING) {
      this.ensure(1 + SHORT_STRING * 3);
      const buf = this.buf;
      const start = this.pos + 1;
      // ASCII in JavaScript: for short strings, cheaper than a call into Buffer's native code.
      let i = 0;
      for (; i < len; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[start + i] = c;
      }
      const n = i === len ? len : i + buf.write(s.slice(i), start + i, "utf8");
      buf[this.pos] = n;
      this.pos = start + n;
      return;
    }
    const n = Buffer.byteLength(s, "utf8");
    this.varint(n);
    this.ensure(n);
    this.pos += this.buf.write(s, this.pos, n, "utf8");
  }

  /** Hex digits as bytes with their length (trace and span ids); a pair that is not hex gives 0, as in hexToBinary. */
  hex(s: string): void {
    const n = s.length >>> 1;
    this.ensure(1 + n);
    const buf = this.buf;
    let pos = this.pos;
    buf[pos++] = n;
    for (let i = 0; i < n; i++) {
      const hi = HEX[s.charCodeAt(2 * i)] ?? -1;
      const lo = HEX[s.charCodeAt(2 * i + 1)] ?? -1;
      buf[pos++] = hi < 0 || lo < 0 ? 0 : (hi << 4) | lo;
    }
    this.pos = pos;
  }

  raw(bytes: Uint8Array): void {
    const n = bytes.length;
    this.ensure(n);
    if (n > 64) this.buf.set(bytes, this.pos);
    else for (let i = 0; i < n; i++) this.buf[this.pos + i] = bytes[i] as number;
    this.pos += n;
  }

  /** Starts a length-delimited message: one byte is kept for its length. */
  begin(): number {
    this.ensure(1);
    return this.pos++;
  }

  /** Ends the message begun at `start`, moving its bytes up when its length needs more than one byte. */
  end(start: number): void {
    const len = this.pos - start - 1;
    if (len < 0x80) {
      this.buf[start] = len;
      return;
    }
    let size = 1;
    for (let v = len; v > 0x7f; v = Math.floor(v / 0x80)) size++;
    this.ensure(size - 1);
    this.buf.copyWithin(start + size, start + 1, this.pos);
    this.pos += size - 1;
    let at = start;
    let v = len;
    while (v > 0x7f) {
      this.buf[at++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[at] = v;
  }

  finish(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }
}

const keyCache = new Map<string, Buffer>();

/** KeyValue field 1 (the key) of an attribute, encoded once. */
function keyBytes(key: string): Buffer {
  let b = keyCache.get(key);
  if (b) return b;
  const k = Buffer.from(key, "utf8");
  const w = new Writer(k.length + 8);
  w.tag(1, WIRE_LEN);
  w.varint(k.length);
  w.raw(k);
  b = Buffer.from(w.finish());
  if (keyCache.size < KEY_CACHE_LIMIT) keyCache.set(key, b);
  return b;
}

function writeAttributes(w: Writer, attributes: Attributes, field: number): void {
  const tag = (field << 3) | WIRE_LEN; // every field number used here is below 16: one byte
  const keys = Object.keys(attributes);
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i] as string;
    const k = keyBytes(key);
    w.ensure(k.length + 4);
    w.buf[w.pos++] = tag;
    const kv = w.pos++;
    w.raw(k);
    w.buf[w.pos++] = VALUE_TAG;
    const value = w.pos++;
    writeAnyValue(w, attributes[key]);
    w.end(value);
    w.end(kv);
  }
}

function writeAnyValue(w: Writer, value: AttributeValue | undefined | unknown): void {
  switch (typeof value) {
    case "string":
      w.tag(1, WIRE_LEN);
      w.string(value);
      return;
    case "boolean":
      w.tag(2, WIRE_VARINT);
      w.varint(value ? 1 : 0);
      return;
    case "number":
      if (Number.isInteger(value) && value >= MIN_INT64 && value < MAX_INT64) {
        w.tag(3, WIRE_VARINT);
        w.int64(value);
      } else {
        w.tag(4, WIRE_FIXED64);
        w.double(value);
      }
      return;
  }
  if (value instanceof Uint8Array) {
    w.tag(7, WIRE_LEN);
    w.varint(value.length);
    w.raw(value);
  } else if (Array.isArray(value)) {
    w.tag(5, WIRE_LEN);
    const array = w.begin();
    for (const item of value) {
      w.tag(1, WIRE_LEN);
      const any = w.begin();
      writeAnyValue(w, item);
      w.end(any);
    }
    w.end(array);
  } else if (typeof value === "object" && value !== null) {
    w.tag(6, WIRE_LEN);
    const list = w.begin();
    writeAttributes(w, value as Attributes, 1);
    w.end(list);
  }
}

function spanFlags(traceFlags: number, isRemote: boolean | undefined): number {
  return (traceFlags & 0xff) | SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | (isRemote ? SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK : 0);
}

function writeEvent(w: Writer, event: TimedEvent): void {
  const start = w.begin();
  w.tag(1, WIRE_FIXED64);
  if (event instanceof DsatEvent) w.ms(event.timeMs);
  else w.hrTime(event.time);
  w.tag(2, WIRE_LEN);
  w.string(event.name);
  if (event.attributes) writeAttributes(w, event.attributes, 3);
  w.tag(4, WIRE_VARINT);
  w.varint(event.droppedAttributesCount || 0);
  w.end(start);
}

/** Fields 1-3 of a Span and of a Link alike: trace id, span id, trace state. */
function writeContext(w: Writer, ctx: SpanContext): void {
  w.tag(1, WIRE_LEN);
  w.hex(ctx.traceId);
  w.tag(2, WIRE_LEN);
  w.hex(ctx.spanId);
  const state = ctx.traceState?.serialize();
  if (state) {
    w.tag(3, WIRE_LEN);
    w.string(state);
  }
}

function writeLink(w: Writer, link: Link & { droppedAttributesCount?: number }): void {
  const start = w.begin();
  const ctx: SpanContext = link.context;
  writeContext(w, ctx);
  if (link.attributes) writeAttributes(w, link.attributes, 4);
  w.tag(5, WIRE_VARINT);
  w.varint(link.droppedAttributesCount || 0);
  w.tag(6, WIRE_FIXED32);
  w.fixed32(spanFlags(ctx.traceFlags, ctx.isRemote));
  w.end(start);
}

function writeStatus(w: Writer, status: SpanStatus): void {
  const start = w.begin();
  if (status.message) {
    w.tag(2, WIRE_LEN);
    w.string(status.message);
  }
  w.tag(3, WIRE_VARINT);
  w.varint(status.code);
  w.end(start);
}

function writeSpan(w: Writer, span: ReadableSpan): void {
  const start = w.begin();
  const ctx = span.spanContext();
  writeContext(w, ctx);
  const parent = span.parentSpanContext;
  if (parent?.spanId) {
    w.tag(4, WIRE_LEN);
    w.hex(parent.spanId);
  }
  w.tag(5, WIRE_LEN);
  w.string(span.name);
  const kind = span.kind == null ? 0 : span.kind + 1;
  if (kind !== 0) {
    w.tag(6, WIRE_VARINT);
    w.varint(kind);
  }
  w.tag(7, WIRE_FIXED64);
  if (span instanceof DsatSpan) {
    w.ms(span.startMs);
    w.tag(8, WIRE_FIXED64);
    w.ms(span.endMs);
  } else {
    w.hrTime(span.startTime);
    w.tag(8, WIRE_FIXED64);
    w.hrTime(span.endTime);
  }
  if (span.attributes) writeAttributes(w, span.attributes, 9);
  w.tag(10, WIRE_VARINT);
  w.varint(span.droppedAttributesCount);
  for (const event of span.events) {
    w.tag(11, WIRE_LEN);
    writeEvent(w, event);
  }
  w.tag(12, WIRE_VARINT);
  w.varint(span.droppedEventsCount);
  for (const link of span.links) {
    w.tag(13, WIRE_LEN);
    writeLink(w, link);
  }
  w.tag(14, WIRE_VARINT);
  w.varint(span.droppedLinksCount);
  w.tag(15, WIRE_LEN);
  writeStatus(w, span.status);
  w.tag(16, WIRE_FIXED32);
  w.fixed32(spanFlags(ctx.traceFlags, parent?.isRemote));
  w.end(start);
}

type Resource = ReadableSpan["resource"];
type Scope = ReadableSpan["instrumentationScope"];

/** Bytes of an ExportTraceServiceRequest with these spans, grouped by resource then scope (by identity). */
export function serializeSpans(spans: readonly ReadableSpan[]): Uint8Array {
  const resources = new Map<Resource, Map<Scope, ReadableSpan[]>>();
  for (const span of spans) {
    let scopes = resources.get(span.resource);
    if (!scopes) {
      scopes = new Map();
      resources.set(span.resource, scopes);
    }
    let list = scopes.get(span.instrumentationScope);
    if (!list) {
      list = [];
      scopes.set(span.instrumentationScope, list);
    }
    list.push(span);
  }
  const w = new Writer(256 + spans.length * 512);
  for (const [resource, scopes] of resources) {
    w.tag(1, WIRE_LEN);
    const resourceSpans = w.begin();
    w.tag(1, WIRE_LEN);
    const res = w.begin();
    if (resource.attributes) writeAttributes(w, resource.attributes, 1);
    w.tag(2, WIRE_VARINT);
    w.varint(0);
    w.end(res);
    for (const [scope, list] of scopes) {
      w.tag(2, WIRE_LEN);
      const scopeSpans = w.begin();
      w.tag(1, WIRE_LEN);
      const sc = w.begin();
      w.tag(1, WIRE_LEN);
      w.string(scope.name);
      if (scope.version) {
        w.tag(2, WIRE_LEN);
        w.string(scope.version);
      }
      const scopeExtra = scope as Scope & { attributes?: Attributes; droppedAttributesCount?: number };
      if (scopeExtra.attributes) writeAttributes(w, scopeExtra.attributes, 3);
      if (scopeExtra.droppedAttributesCount) {
        w.tag(4, WIRE_VARINT);
        w.varint(scopeExtra.droppedAttributesCount);
      }
      w.end(sc);
      for (const span of list) {
        w.tag(2, WIRE_LEN);
        writeSpan(w, span);
      }
      if (scope.schemaUrl) {
        w.tag(3, WIRE_LEN);
        w.string(scope.schemaUrl);
      }
      w.end(scopeSpans);
    }
    if (resource.schemaUrl) {
      w.tag(3, WIRE_LEN);
      w.string(resource.schemaUrl);
    }
    w.end(resourceSpans);
  }
  return w.finish();
}
