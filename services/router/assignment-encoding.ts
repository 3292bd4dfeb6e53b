import { toBinary } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { type Assignment, AssignmentSchema, type ProcessRequest, type Task, TaskSchema } from "@dsat/sdk";

// The router sends every stage of every task to a worker as an Assignment, whose Task is the
// same for each stage but for its payload (the stage's input) and its headers (the trace
// context of the dispatch). protobuf-es's generic writer made that the largest single cost
// of the router (about 6 µs per Assignment, with the create() of its copy of the task).
// Here the rest of the task is encoded once per task, and each Assignment is put together
// from those bytes, the payload, the headers and its own three fields. The bytes decode to
// the same message as toBinary's (the task's fields come in another order, which protobuf
// allows); `assignment-encoding.test.ts` checks that. An Assignment without a remembered
// task (a hand-off from another router) or with unknown fields goes through toBinary.

const EMPTY = new Uint8Array(0);
/** Assignments made by the router, with the bytes of their task without payload and headers. */
const bases = new WeakMap<Assignment, Uint8Array>();

/** The bytes of a task without its payload and headers, to be shared by its assignments. */
export function encodeTaskBase(task: Task): Uint8Array {
  return toBinary(TaskSchema, { ...task, payload: EMPTY, headers: {} });
}

/** Remembers the task bytes (from {@link encodeTaskBase} of a.task, as it was) for {@link encodeAssignmentValue}. */
export function rememberTaskBase(a: Assignment, base: Uint8Array): void {
  bases.set(a, base);
}

/**
 * An Assignment as the value of a length-delimited field (its length, then the message),
 * which is what protobuf-es keeps of an unknown field: see {@link processRequestWith}.
 */
export function encodeAssignmentValue(a: Assignment): Uint8Array {
  const task = a.task;
  const base = bases.get(a);
  if (!task || !base || a.$unknown?.length || task.$unknown?.length || a.timeout?.$unknown?.length) {
    return withLength(toBinary(AssignmentSchema, a));
  }
  const w = new Writer();
  // Task: the shared fields, then payload (4) and headers (5).
  let taskLen = base.length;
  if (task.payload.length > 0) taskLen += 1 + varintSize(task.payload.length) + task.payload.length;
  const headers = Object.entries(task.headers);
  const entries: [Uint8Array, Uint8Array, number][] = [];
  for (const [k, v] of headers) {
    const kb = Buffer.from(k, "utf8");
    const vb = Buffer.from(v, "utf8");
    const entry = 1 + varintSize(kb.length) + kb.length + 1 + varintSize(vb.length) + vb.length;
    entries.push([kb, vb, entry]);
    taskLen += 1 + varintSize(entry) + entry;
  }
  const stage = Buffer.from(a.stage, "utf8");
  let timeoutLen = -1;
  if (a.timeout) {
    timeoutLen = 0;
    if (a.timeout.seconds !== 0n) timeoutLen += 1 + bigVarintSize(BigInt.asUintN(64, a.timeout.seconds));
    if (a.timeout.nanos !== 0) timeoutLen += 1 + int32Size(a.timeout.nanos);
  }
  let len = 1 + varintSize(taskLen) + taskLen;
  if (stage.length > 0) len += 1 + varintSize(stage.length) + stage.length;
  if (a.attempt !== 0) len += 1 + varintSize(a.attempt);
  if (timeoutLen >= 0) len += 1 + varintSize(timeoutLen) + timeoutLen;

  w.start(varintSize(len) + len);
  w.varint(len);
  w.byte(0x0a);
  w.varint(taskLen);
  w.bytes(base);
  if (task.payload.length > 0) {
    w.byte(0x22);
    w.varint(task.payload.length);
    w.bytes(task.payload);
  }
  for (const [kb, vb, entry] of entries) {
    w.byte(0x2a);
    w.varint(entry);
    w.byte(0x0a);
    w.varint(kb.length);
    w.bytes(kb);
    w.byte(0x12);
    w.varint(vb.length);
    w.bytes(vb);
  }
  if (stage.length > 0) {
    w.byte(0x12);
    w.varint(stage.length);
    w.bytes(stage);
  }
  if (a.attempt !== 0) {
    w.byte(0x18);
    w.varint(a.attempt);
  }
  if (a.timeout && timeoutLen >= 0) {
    w.byte(0x22);
    w.varint(timeoutLen);
    if (a.timeout.seconds !== 0n) {
      w.byte(0x08);
      w.bigVarint(BigInt.asUintN(64, a.timeout.seconds));
    }
    if (a.timeout.nanos !== 0) {
      w.byte(0x10);
      w.int32(a.timeout.nanos);
    }
  }
  return w.finish();
}

/**
 * Puts the assignments of a ProcessRequest in as already-encoded entries of its field 1
 * (`$unknown`, which toBinary writes as they are), so that protobuf-es does not encode them
 * again; a decoder sees the same repeated field.
 */
export function processRequestWith(req: ProcessRequest, assignments: readonly Assignment[]): ProcessRequest {
  req.$unknown = assignments.map((a) => ({ no: 1, wireType: WireType.LengthDelimited, data: encodeAssignmentValue(a) }));
  return req;
}

function withLength(body: Uint8Array): Uint8Array {
  const w = new Writer();
  w.start(varintSize(body.length) + body.length);
  w.varint(body.length);
  w.bytes(body);
  return w.finish();
}

class Writer {
  #buf: Buffer = Buffer.alloc(0);
  #pos = 0;

  start(size: number): void {
    this.#buf = Buffer.allocUnsafe(size);
    this.#pos = 0;
  }

  byte(b: number): void {
    this.#buf[this.#pos++] = b;
  }

  varint(n: number): void {
    while (n > 0x7f) {
      this.#buf[this.#pos++] = (n & 0x7f) | 0x80;
      n >>>= 7;
    }
    this.#buf[this.#pos++] = n;
  }

  bigVarint(n: bigint): void {
    while (n > 0x7fn) {
      this.#buf[this.#pos++] = Number(n & 0x7fn) | 0x80;
      n >>= 7n;
    }
    this.#buf[this.#pos++] = Number(n);
  }

  int32(n: number): void {
    if (n >= 0) this.varint(n);
    else this.bigVarint(BigInt.asUintN(64, BigInt(n)));
  }

  bytes(b: Uint8Array): void {
    if (b.length > 32) this.#buf.set(b, this.#pos);
    else for (let i = 0; i < b.length; i++) this.#buf[this.#pos + i] = b[i] as number;
    this.#pos += b.length;
  }

  finish(): Uint8Array {
    if (this.#pos !== this.#buf.length) throw new Error(`assignment encoding: wrote ${this.#pos} bytes of ${this.#buf.length}`);
    return this.#buf;
  }
}

function varintSize(n: number): number {
  let size = 1;
  while (n > 0x7f) {
    n >>>= 7;
    size++;
  }
  return size;
}

function bigVarintSize(n: bigint): number {
  let size = 1;
  while (n > 0x7fn) {
    n >>= 7n;
    size++;
  }
  return size;
}

function int32Size(n: number): number {
  return n >= 0 ? varintSize(n) : 10;
}
