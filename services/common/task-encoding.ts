import { toBinary } from "@bufbuild/protobuf";
import { type Task, TaskSchema } from "@dsat/sdk";
import {
  bigVarintSize,
  lenFieldSize,
  timestampSize,
  writeBigVarint,
  writeBytesField,
  writeString,
  writeTimestampField,
  writeVarintField,
} from "./transition-encoding.ts";

// A hand-written encoder of dsat.v1.Task. Every task is encoded twice on the hot path: by
// the router without its payload and headers (the part its Assignments share,
// assignment-encoding.ts) and by StatusService whole (its record, state-encoding.ts).
// protobuf-es's generic writer took about 5 µs for each; these few fields need a fraction.
// The bytes are toBinary's (fields in number order, defaults left out, map entries in the
// order of Object.keys with key and value always written); `task-encoding.test.ts` checks
// that. A task with unknown fields (from a newer peer) goes through toBinary, so that
// nothing is lost.

const EMPTY = new Uint8Array(0);
const NO_HEADERS: Record<string, string> = {};

/** The bytes of a task; `withPayloadAndHeaders` false leaves those two fields out. */
export function encodeTask(task: Task, withPayloadAndHeaders = true): Uint8Array {
  const payload = withPayloadAndHeaders ? task.payload : EMPTY;
  const headers = withPayloadAndHeaders ? task.headers : NO_HEADERS;
  if (task.$unknown?.length || task.deadline?.$unknown?.length || task.createdAt?.$unknown?.length) {
    return toBinary(TaskSchema, withPayloadAndHeaders ? task : { ...task, payload, headers });
  }
  const id = Buffer.byteLength(task.id);
  const pipeline = Buffer.byteLength(task.pipeline);
  const deadline = task.deadline ? timestampSize(task.deadline) : -1;
  const createdAt = task.createdAt ? timestampSize(task.createdAt) : -1;
  let size = 0;
  if (id) size += lenFieldSize(id);
  if (pipeline) size += lenFieldSize(pipeline);
  if (task.pipelineVersion) size += 1 + bigVarintSize(task.pipelineVersion);
  if (payload.length) size += lenFieldSize(payload.length);
  const h = measureHeaders(headers);
  size += h.size;
  if (deadline >= 0) size += lenFieldSize(deadline);
  if (createdAt >= 0) size += lenFieldSize(createdAt);

  const out = Buffer.allocUnsafe(size);
  let p = 0;
  if (id) p = writeString(out, p, 0x0a, task.id, id);
  if (pipeline) p = writeString(out, p, 0x12, task.pipeline, pipeline);
  if (task.pipelineVersion) {
    out[p++] = 0x18;
    p = writeBigVarint(out, p, task.pipelineVersion);
  }
  if (payload.length) p = writeBytesField(out, p, 0x22, payload);
  p = writeHeaders(out, p, headers, h);
  if (task.deadline && deadline >= 0) p = writeTimestampField(out, p, 0x32, task.deadline, deadline);
  if (task.createdAt && createdAt >= 0) p = writeTimestampField(out, p, 0x3a, task.createdAt, createdAt);
  if (p !== size) throw new Error(`task encoding: wrote ${p} bytes of ${size}`);
  return out;
}

/** A task's headers (field 5, a map<string, string>) measured for {@link writeHeaders}. */
export interface MeasuredHeaders {
  readonly keys: readonly string[];
  /** Byte lengths of each header's key, value and entry: three numbers per header. */
  readonly lengths: readonly number[];
  /** Bytes of every entry, tags and lengths included. */
  readonly size: number;
}

export function measureHeaders(headers: Record<string, string>): MeasuredHeaders {
  const keys = Object.keys(headers);
  const lengths: number[] = [];
  let size = 0;
  for (const k of keys) {
    const kb = Buffer.byteLength(k);
    const vb = Buffer.byteLength(headers[k] as string);
    const entry = lenFieldSize(kb) + lenFieldSize(vb);
    lengths.push(kb, vb, entry);
    size += lenFieldSize(entry);
  }
  return { keys, lengths, size };
}

/** Writes the headers as Task field 5, one map entry each (key and value always written, as toBinary does). */
export function writeHeaders(out: Buffer, p: number, headers: Record<string, string>, m: MeasuredHeaders): number {
  for (let i = 0; i < m.keys.length; i++) {
    const k = m.keys[i] as string;
    p = writeVarintField(out, p, 0x2a, m.lengths[3 * i + 2] as number);
    p = writeString(out, p, 0x0a, k, m.lengths[3 * i] as number);
    p = writeString(out, p, 0x12, headers[k] as string, m.lengths[3 * i + 1] as number);
  }
  return p;
}
