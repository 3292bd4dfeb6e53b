import { toBinary } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { type Assignment, AssignmentSchema, type ProcessRequest, type Task } from "@dsat/sdk";
import { encodeTask, measureHeaders, writeHeaders } from "../common/task-encoding.ts";
import {
  lenFieldSize,
  lengthDelimited,
  timestampSize,
  varintSize,
  writeBytesField,
  writeString,
  writeTimestampField,
  writeVarint,
  writeVarintField,
} from "../common/transition-encoding.ts";

// The router sends every stage of every task to a worker as an Assignment, whose Task is the
// same for each stage but for its payload (the stage's input) and its headers (the trace
// context of the dispatch). protobuf-es's generic writer made that the largest single cost
// of the router (about 6 µs per Assignment, with the create() of its copy of the task).
// Here the rest of the task is encoded once per task, and each Assignment is put together
// from those bytes, the payload, the headers and its own three fields. The bytes decode to
// the same message as toBinary's (the task's fields come in another order, which protobuf
// allows); `assignment-encoding.test.ts` checks that. An Assignment without a remembered
// task (a hand-off from another router) or with unknown fields goes through toBinary.

/**
 * Where an Assignment made by the router keeps the bytes of its task without payload and
 * headers: a symbol-keyed property, which protobuf-es ignores. Not a WeakMap: V8 keeps a
 * WeakMap's short-lived keys and values through every young-generation collection until the
 * next full one, and each Assignment took its task along into the old generation.
 */
const TASK_BASE = Symbol("dsat.taskBase");

/** An Assignment that may carry its task's bytes (see {@link rememberTaskBase}). */
type WithTaskBase = Assignment & { [TASK_BASE]?: Uint8Array };

/** The bytes of a task without its payload and headers, to be shared by its assignments. */
export function encodeTaskBase(task: Task): Uint8Array {
  return encodeTask(task, false);
}

/** Remembers the task bytes (from {@link encodeTaskBase} of a.task, as it was) for {@link encodeAssignmentValue}. */
export function rememberTaskBase(a: Assignment, base: Uint8Array): void {
  (a as WithTaskBase)[TASK_BASE] = base;
}

/**
 * An Assignment as the value of a length-delimited field (its length, then the message),
 * which is what protobuf-es keeps of an unknown field: see {@link processRequestWith}.
 */
export function encodeAssignmentValue(a: Assignment): Uint8Array {
  const task = a.task;
  const base = (a as WithTaskBase)[TASK_BASE];
  if (!task || !base || a.$unknown?.length || task.$unknown?.length || a.timeout?.$unknown?.length) {
    // The value of field 1: its length and the message, without the one-byte tag.
    return lengthDelimited(1, toBinary(AssignmentSchema, a)).subarray(1);
  }
  // Task: the shared fields, then payload (4) and headers (5, one map entry each).
  const payload = task.payload.length;
  let taskLen = base.length;
  if (payload > 0) taskLen += lenFieldSize(payload);
  const headers = measureHeaders(task.headers);
  taskLen += headers.size;
  const stage = Buffer.byteLength(a.stage);
  const timeout = a.timeout ? timestampSize(a.timeout) : -1;
  let len = lenFieldSize(taskLen);
  if (stage > 0) len += lenFieldSize(stage);
  if (a.attempt !== 0) len += 1 + varintSize(a.attempt);
  if (timeout >= 0) len += lenFieldSize(timeout);

  const out = Buffer.allocUnsafe(varintSize(len) + len);
  let p = writeVarint(out, 0, len);
  p = writeVarintField(out, p, 0x0a, taskLen);
  out.set(base, p);
  p += base.length;
  if (payload > 0) p = writeBytesField(out, p, 0x22, task.payload);
  p = writeHeaders(out, p, task.headers, headers);
  if (stage > 0) p = writeString(out, p, 0x12, a.stage, stage);
  if (a.attempt !== 0) p = writeVarintField(out, p, 0x18, a.attempt);
  if (a.timeout && timeout >= 0) p = writeTimestampField(out, p, 0x22, a.timeout, timeout);
  if (p !== out.length) throw new Error(`assignment encoding: wrote ${p} bytes of ${out.length}`);
  return out;
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
