import { fromBinary } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { type TaskError, type Transition, TransitionSchema } from "@dsat/sdk";

// A hand-written reader of protobuf's wire format for the messages dsat decodes most: a
// Transition (in a Report to StatusService, in a worker's ProcessResponse to its router) and
// what it holds. protobuf-es's generic reader allocates for every field (a [number, wire
// type] pair per tag, a create() per message); this one makes the same plain objects as
// fromBinary, with every field (`transition-decoding.test.ts` and `report-decoding.test.ts`
// check them with equals()). Anything it does not know (an unknown field from a newer peer,
// a field of an unexpected wire type) throws FALLBACK, and the caller hands the whole
// message to fromBinary, so that nothing is lost.

/** Thrown inside a decoder to hand the message to fromBinary (so does any error). */
export const FALLBACK = Symbol("fallback");
export const EMPTY = new Uint8Array(0);

/** Decodes a Transition: by hand, or with fromBinary when it carries what the hand decoder does not know. */
export function decodeTransition(bytes: Uint8Array): Transition {
  try {
    const r = new Reader(bytes);
    return readTransition(r, r.buf.length);
  } catch {
    return fromBinary(TransitionSchema, bytes);
  }
}

export class Reader {
  readonly buf: Buffer;
  pos = 0;
  /** The wire type of the field whose tag {@link field} read last. */
  wire = 0;

  constructor(bytes: Uint8Array) {
    // grpc-js hands a Buffer; a Uint8Array (tests) is viewed as one, without a copy.
    this.buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** A varint of up to 32 bits (tags, lengths, uint32, enums); longer ones (negative enums) fall back. */
  uint32(): number {
    const buf = this.buf;
    let result = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (this.pos >= buf.length) throw new Error("premature end of a varint");
      const b = buf[this.pos++] as number;
      result += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) {
        if (result > 0xffffffff) throw FALLBACK;
        return result;
      }
    }
    throw FALLBACK;
  }

  /** A varint of up to 64 bits, unsigned. */
  uint64(): bigint {
    const buf = this.buf;
    // Up to 49 bits (7 bytes) exactly in a number; seconds since 1970 and sequence numbers fit.
    let n = 0;
    for (let shift = 0; shift < 49; shift += 7) {
      if (this.pos >= buf.length) throw new Error("premature end of a varint");
      const b = buf[this.pos++] as number;
      n += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return BigInt(n);
    }
    let result = BigInt(n);
    for (let shift = 49n; shift < 70n; shift += 7n) {
      if (this.pos >= buf.length) throw new Error("premature end of a varint");
      const b = buf[this.pos++] as number;
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asUintN(64, result);
    }
    throw new Error("a varint longer than 10 bytes");
  }

  /** The end of a length-delimited field that starts here. */
  end(): number {
    const len = this.uint32();
    const end = this.pos + len;
    if (end > this.buf.length) throw new Error("a length-delimited field past the end");
    return end;
  }

  bytes(): Uint8Array {
    const end = this.end();
    const b = this.buf.subarray(this.pos, end);
    this.pos = end;
    return b;
  }

  string(): string {
    const end = this.end();
    const buf = this.buf;
    const start = this.pos;
    this.pos = end;
    if (end - start <= 4) {
      // Tiny ASCII strings (stage names, ports) without a call into native code.
      let s = "";
      for (let p = start; p < end; p++) {
        const c = buf[p] as number;
        if (c >= 0x80) return buf.toString("utf8", start, end);
        s += String.fromCharCode(c);
      }
      return s;
    }
    return buf.toString("utf8", start, end);
  }
}

/** Reads a field's tag: returns its number, keeps its wire type in `r.wire`. */
export function field(r: Reader): number {
  const tag = r.uint32();
  r.wire = tag & 7;
  return tag >>> 3;
}

/** The current field's value: a known field of another wire type falls back. */
export const str = (r: Reader) => (r.wire === 2 ? r.string() : fallback());
export const bytes = (r: Reader) => (r.wire === 2 ? r.bytes() : fallback());
export const u32 = (r: Reader) => (r.wire === 0 ? r.uint32() : fallback());
export const u64 = (r: Reader) => (r.wire === 0 ? r.uint64() : fallback());
/** The end of the current field's message. */
export const sub = (r: Reader) => (r.wire === 2 ? r.end() : fallback());

export function fallback(): never {
  throw FALLBACK;
}

export function readTransition(r: Reader, end: number): Transition {
  const t: Transition = {
    $typeName: "dsat.v1.Transition",
    taskId: "",
    stage: "",
    attempt: 0,
    from: 0,
    to: 0,
    memberId: "",
    output: EMPTY,
    port: "",
    seq: 0n,
    detail: "",
    workerId: "",
  };
  while (r.pos < end) {
    switch (field(r)) {
      case 1:
        t.taskId = str(r);
        break;
      case 2:
        t.stage = str(r);
        break;
      case 3:
        t.attempt = u32(r);
        break;
      case 4:
        t.from = u32(r) | 0; // an enum is an int32
        break;
      case 5:
        t.to = u32(r) | 0;
        break;
      case 6:
        t.time = readTimestamp(r, sub(r));
        break;
      case 7:
        t.memberId = str(r);
        break;
      case 8:
        t.error = readError(r, sub(r));
        break;
      case 9:
        t.output = bytes(r);
        break;
      case 10:
        t.port = str(r);
        break;
      case 11:
        t.seq = u64(r);
        break;
      case 12:
        t.detail = str(r);
        break;
      case 13:
        t.workerId = str(r);
        break;
      default:
        throw FALLBACK;
    }
  }
  if (r.pos !== end) throw new Error("a transition runs past its length");
  return t;
}

export function readTimestamp(r: Reader, end: number): Timestamp {
  const ts: Timestamp = { $typeName: "google.protobuf.Timestamp", seconds: 0n, nanos: 0 };
  while (r.pos < end) {
    const no = field(r);
    if (no === 1) ts.seconds = BigInt.asIntN(64, u64(r));
    else if (no === 2) ts.nanos = u32(r) | 0;
    else throw FALLBACK;
  }
  return ts;
}

export function readError(r: Reader, end: number): TaskError {
  const e: TaskError = { $typeName: "dsat.v1.TaskError", code: "", message: "", retryable: false };
  while (r.pos < end) {
    switch (field(r)) {
      case 1:
        e.code = str(r);
        break;
      case 2:
        e.message = str(r);
        break;
      case 3:
        e.retryable = u64(r) !== 0n;
        break;
      default:
        throw FALLBACK;
    }
  }
  return e;
}
