import { toBinary } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { type TaskError, type Transition, TransitionSchema } from "@dsat/sdk";

/**
 * A hand-written encoder of dsat.v1.Transition as one entry of a repeated field (tag, length,
 * message), for the hot path of StatusService: every transition stored is encoded once,
 * and protobuf-es's generic writer costs several times more than these few fields need.
 * Its bytes are the same as `toBinary(TransitionSchema, t)`'s (fields in number order,
 * defaults left out), which `transition-encoding.test.ts` checks; a transition that
 * carries unknown fields (from a newer peer) goes through toBinary so that nothing is lost.
 *
 * `withTaskId` false leaves the task id out (a stored task state's history: the record's
 * task has it; see `decodeStoredState` in services/status/state-encoding.ts).
 */
export function encodeTransitionField(fieldNo: number, t: Transition, withTaskId = true): Buffer {
  const tag = (fieldNo << 3) | 2;
  if (t.$unknown?.length || t.time?.$unknown?.length || t.error?.$unknown?.length) {
    return lengthDelimited(fieldNo, toBinary(TransitionSchema, withTaskId ? t : { ...t, taskId: "" }));
  }
  const taskId = withTaskId ? Buffer.byteLength(t.taskId) : 0;
  const stage = Buffer.byteLength(t.stage);
  const member = Buffer.byteLength(t.memberId);
  const port = Buffer.byteLength(t.port);
  const detail = Buffer.byteLength(t.detail);
  const worker = Buffer.byteLength(t.workerId);
  const time = t.time ? timestampSize(t.time) : -1;
  const error = t.error ? errorSize(t.error) : -1;
  let size = 0;
  if (taskId) size += lenFieldSize(taskId);
  if (stage) size += lenFieldSize(stage);
  if (t.attempt) size += 1 + varintSize(t.attempt);
  if (t.from) size += 1 + varintSize(t.from);
  if (t.to) size += 1 + varintSize(t.to);
  if (time >= 0) size += lenFieldSize(time);
  if (member) size += lenFieldSize(member);
  if (error >= 0) size += lenFieldSize(error);
  if (t.output.length) size += lenFieldSize(t.output.length);
  if (port) size += lenFieldSize(port);
  if (t.seq) size += 1 + bigVarintSize(t.seq);
  if (detail) size += lenFieldSize(detail);
  if (worker) size += lenFieldSize(worker);

  const out = Buffer.allocUnsafe(varintSize(tag) + varintSize(size) + size);
  let p = writeVarint(out, 0, tag);
  p = writeVarint(out, p, size);
  if (taskId) p = writeString(out, p, 0x0a, t.taskId, taskId);
  if (stage) p = writeString(out, p, 0x12, t.stage, stage);
  if (t.attempt) p = writeVarintField(out, p, 0x18, t.attempt);
  if (t.from) p = writeVarintField(out, p, 0x20, t.from);
  if (t.to) p = writeVarintField(out, p, 0x28, t.to);
  if (t.time && time >= 0) p = writeTimestampField(out, p, 0x32, t.time, time);
  if (member) p = writeString(out, p, 0x3a, t.memberId, member);
  if (t.error && error >= 0) p = writeErrorField(out, p, 0x42, t.error, error);
  if (t.output.length) p = writeBytesField(out, p, 0x4a, t.output);
  if (port) p = writeString(out, p, 0x52, t.port, port);
  if (t.seq) {
    out[p++] = 0x58;
    p = writeBigVarint(out, p, t.seq);
  }
  if (detail) p = writeString(out, p, 0x62, t.detail, detail);
  if (worker) p = writeString(out, p, 0x6a, t.workerId, worker);
  if (p !== out.length) throw new Error(`transition encoding: wrote ${p} bytes of ${out.length}`);
  return out;
}

/** One length-delimited field: its tag, the length of `body`, then `body`. */
export function lengthDelimited(fieldNo: number, body: Uint8Array): Buffer {
  const tag = (fieldNo << 3) | 2;
  const out = Buffer.allocUnsafe(varintSize(tag) + varintSize(body.length) + body.length);
  let p = writeVarint(out, 0, tag);
  p = writeVarint(out, p, body.length);
  out.set(body, p);
  return out;
}

/** Timestamp and Duration have the same two fields: seconds (int64) and nanos (int32). */
type SecondsNanos = Pick<Timestamp, "seconds" | "nanos">;

export function timestampSize(ts: SecondsNanos): number {
  let n = 0;
  if (ts.seconds) n += 1 + bigVarintSize(asUint64(ts.seconds));
  if (ts.nanos) n += 1 + int32Size(ts.nanos);
  return n;
}

export function writeTimestamp(out: Buffer, p: number, ts: SecondsNanos): number {
  if (ts.seconds) {
    out[p++] = 0x08;
    p = writeBigVarint(out, p, asUint64(ts.seconds));
  }
  if (ts.nanos) {
    out[p++] = 0x10;
    p = writeInt32(out, p, ts.nanos);
  }
  return p;
}

export function errorSize(e: TaskError): number {
  const code = Buffer.byteLength(e.code);
  const message = Buffer.byteLength(e.message);
  let n = 0;
  if (code) n += lenFieldSize(code);
  if (message) n += lenFieldSize(message);
  if (e.retryable) n += 2;
  return n;
}

export function writeError(out: Buffer, p: number, e: TaskError): number {
  const code = Buffer.byteLength(e.code);
  const message = Buffer.byteLength(e.message);
  if (code) p = writeString(out, p, 0x0a, e.code, code);
  if (message) p = writeString(out, p, 0x12, e.message, message);
  if (e.retryable) {
    out[p++] = 0x18;
    out[p++] = 1;
  }
  return p;
}

export function writeString(out: Buffer, p: number, tag: number, s: string, bytes: number): number {
  out[p++] = tag;
  p = writeVarint(out, p, bytes);
  return p + out.write(s, p, bytes, "utf8");
}

// Fields with a one-byte tag (field numbers below 16), as every encoder here writes them.

/** Bytes of a length-delimited field whose body is `len` bytes. */
export function lenFieldSize(len: number): number {
  return 1 + varintSize(len) + len;
}

/** A varint field (uint32, enum, a non-negative int32). */
export function writeVarintField(out: Buffer, p: number, tag: number, n: number): number {
  out[p++] = tag;
  return writeVarint(out, p, n);
}

/** A bytes field. */
export function writeBytesField(out: Buffer, p: number, tag: number, bytes: Uint8Array): number {
  p = writeVarintField(out, p, tag, bytes.length);
  out.set(bytes, p);
  return p + bytes.length;
}

/** A Timestamp or Duration field whose body, timestampSize(ts), is `size` bytes. */
export function writeTimestampField(out: Buffer, p: number, tag: number, ts: SecondsNanos, size: number): number {
  return writeTimestamp(out, writeVarintField(out, p, tag, size), ts);
}

/** A TaskError field whose body, errorSize(e), is `size` bytes. */
export function writeErrorField(out: Buffer, p: number, tag: number, e: TaskError, size: number): number {
  return writeError(out, writeVarintField(out, p, tag, size), e);
}

/** Size of an unsigned varint of a number below 2^32. */
export function varintSize(n: number): number {
  if (n < 0x80) return 1;
  if (n < 0x4000) return 2;
  if (n < 0x200000) return 3;
  if (n < 0x10000000) return 4;
  return 5;
}

export function writeVarint(out: Buffer, p: number, n: number): number {
  let v = n >>> 0;
  while (v >= 0x80) {
    out[p++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  out[p++] = v;
  return p;
}

/** int32 is written as a 64-bit varint: a negative one takes 10 bytes. */
export function int32Size(n: number): number {
  return n < 0 ? 10 : varintSize(n);
}

export function writeInt32(out: Buffer, p: number, n: number): number {
  return n < 0 ? writeBigVarint(out, p, BigInt.asUintN(64, BigInt(n))) : writeVarint(out, p, n);
}

/** An int64 as the uint64 its varint encodes: itself when not negative (no new BigInt on the hot path). */
function asUint64(v: bigint): bigint {
  return v >= 0n ? v : BigInt.asUintN(64, v);
}

export function bigVarintSize(n: bigint): number {
  // Comparisons with constants: no Number or BigInt is made (seconds since 1970 take 5 bytes).
  if (n < 0x80n) return 1;
  if (n < 0x4000n) return 2;
  if (n < 0x200000n) return 3;
  if (n < 0x10000000n) return 4;
  if (n < 0x800000000n) return 5;
  let size = 1;
  let v = n;
  while (v >= 0x80n) {
    v >>= 7n;
    size++;
  }
  return size;
}

export function writeBigVarint(out: Buffer, p: number, n: bigint): number {
  if (n < 0x100000000n) return writeVarint(out, p, Number(n));
  let v = n;
  while (v >= 0x80n) {
    out[p++] = Number(v & 0x7fn) | 0x80;
    v >>= 7n;
  }
  out[p++] = Number(v);
  return p;
}
