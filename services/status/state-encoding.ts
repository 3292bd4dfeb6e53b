import { toBinary } from "@bufbuild/protobuf";
import {
  type StageState,
  type Task,
  TaskSchema,
  type TaskState,
  TaskStateSchema,
  type Transition,
} from "@dsat/sdk";
import {
  bigVarintSize,
  encodeTransitionField,
  errorSize,
  int32Size,
  lengthDelimited,
  timestampSize,
  varintSize,
  writeBigVarint,
  writeError,
  writeInt32,
  writeString,
  writeTimestamp,
  writeVarint,
} from "../common/transition-encoding.ts";

/**
 * A task state is put again and again as its transitions arrive; its task (with the
 * payload) never changes and its history only grows. So a put encodes only the small
 * fields and the new history entries, and reuses the bytes of the rest: protobuf lets a
 * message's fields come in any order and a repeated field in pieces, so the pieces,
 * concatenated, are a valid encoding of the whole TaskState, which any reader decodes as
 * usual.
 */

/** Field numbers of dsat.v1.TaskState (proto/dsat/v1/task.proto). */
const TASK_FIELD = 1;
const HISTORY_FIELD = 9;

/** What a put of a state encoded, kept to be reused by the next put of the same task. */
export interface EncodedParts {
  /** The task message the bytes below encode (reused only while it is the same object). */
  readonly task: Task | undefined;
  /** Field 1 (task), tag and length included; empty when there is no task. */
  readonly taskBytes: Uint8Array;
  /** Field 9 entries (history), each with its tag and length, in order. */
  readonly history: readonly Uint8Array[];
  /** The history entries those bytes encode, to check that the next state starts with them. */
  readonly historyRefs: readonly Transition[];
}

/** Encodes `state` as a dsat.v1.TaskState, reusing what `previous` encoded of the same task. */
export function encodeTaskState(
  state: TaskState,
  previous: EncodedParts | undefined,
): { value: Buffer; parts: EncodedParts } {
  const taskBytes =
    previous && previous.task === state.task
      ? previous.taskBytes
      : state.task
        ? lengthDelimited(TASK_FIELD, toBinary(TaskSchema, state.task))
        : new Uint8Array(0);
  // The entries already encoded, as long as the history still starts with them (a progress
  // entry may have been replaced at the end).
  const reused = previous ? commonPrefix(state.history, previous.historyRefs) : 0;
  const history = previous ? previous.history.slice(0, reused) : [];
  for (let i = reused; i < state.history.length; i++) {
    history.push(encodeTransitionField(HISTORY_FIELD, state.history[i] as Transition));
  }
  const rest = encodeStateRest(state);
  const value = Buffer.concat([taskBytes, rest, ...history]);
  return { value, parts: { task: state.task, taskBytes, history, historyRefs: state.history.slice() } };
}

/**
 * A copy of a state that transitions may change without touching the original: the top
 * level, the list of stages and each stage are copied; the task and the history entries,
 * which nothing changes once stored, are shared.
 */
export function workingCopy(state: TaskState): TaskState {
  return {
    ...state,
    stages: state.stages.map((s): StageState => ({ ...s })),
    history: state.history.slice(),
  };
}

function commonPrefix(history: readonly Transition[], encoded: readonly Transition[]): number {
  const n = Math.min(history.length, encoded.length);
  let i = 0;
  while (i < n && history[i] === encoded[i]) i++;
  return i;
}

/**
 * The fields of a TaskState but its task and history (state, stages, output, error,
 * updated_at, seq, router_id), by hand: the same bytes as toBinary's of the state without
 * them (`state-encoding.test.ts` compares), at a fraction of the cost. Unknown fields go
 * through toBinary.
 */
export function encodeStateRest(state: TaskState): Uint8Array {
  if (
    state.$unknown?.length ||
    state.error?.$unknown?.length ||
    state.updatedAt?.$unknown?.length ||
    state.stages.some((s) => s.$unknown?.length || s.error?.$unknown?.length || s.startedAt?.$unknown?.length || s.endedAt?.$unknown?.length)
  ) {
    return toBinary(TaskStateSchema, { ...state, task: undefined, history: [] });
  }
  const routerId = Buffer.byteLength(state.routerId);
  const error = state.error ? errorSize(state.error) : -1;
  const updated = state.updatedAt ? timestampSize(state.updatedAt) : -1;
  const stageSizes: number[] = [];
  let size = 0;
  if (state.state) size += 1 + int32Size(state.state);
  for (const st of state.stages) {
    const n = stageSize(st);
    stageSizes.push(n);
    size += 1 + varintSize(n) + n;
  }
  if (state.output.length) size += 1 + varintSize(state.output.length) + state.output.length;
  if (error >= 0) size += 1 + varintSize(error) + error;
  if (updated >= 0) size += 1 + varintSize(updated) + updated;
  if (state.seq) size += 1 + bigVarintSize(state.seq);
  if (routerId) size += 1 + varintSize(routerId) + routerId;

  const out = Buffer.allocUnsafe(size);
  let p = 0;
  if (state.state) {
    out[p++] = 0x10;
    p = writeInt32(out, p, state.state);
  }
  state.stages.forEach((st, i) => {
    out[p++] = 0x1a;
    p = writeVarint(out, p, stageSizes[i] as number);
    p = writeStage(out, p, st);
  });
  if (state.output.length) {
    out[p++] = 0x22;
    p = writeVarint(out, p, state.output.length);
    out.set(state.output, p);
    p += state.output.length;
  }
  if (state.error && error >= 0) {
    out[p++] = 0x2a;
    p = writeVarint(out, p, error);
    p = writeError(out, p, state.error);
  }
  if (state.updatedAt && updated >= 0) {
    out[p++] = 0x32;
    p = writeVarint(out, p, updated);
    p = writeTimestamp(out, p, state.updatedAt);
  }
  if (state.seq) {
    out[p++] = 0x38;
    p = writeBigVarint(out, p, state.seq);
  }
  if (routerId) p = writeString(out, p, 0x42, state.routerId, routerId);
  if (p !== size) throw new Error(`task state encoding: wrote ${p} bytes of ${size}`);
  return out;
}

function stageSize(st: StageState): number {
  const name = Buffer.byteLength(st.name);
  const worker = Buffer.byteLength(st.workerId);
  let n = 0;
  if (name) n += 1 + varintSize(name) + name;
  if (st.state) n += 1 + int32Size(st.state);
  if (st.attempt) n += 1 + varintSize(st.attempt);
  if (worker) n += 1 + varintSize(worker) + worker;
  if (st.error) {
    const e = errorSize(st.error);
    n += 1 + varintSize(e) + e;
  }
  if (st.startedAt) {
    const t = timestampSize(st.startedAt);
    n += 1 + varintSize(t) + t;
  }
  if (st.endedAt) {
    const t = timestampSize(st.endedAt);
    n += 1 + varintSize(t) + t;
  }
  return n;
}

function writeStage(out: Buffer, p: number, st: StageState): number {
  const name = Buffer.byteLength(st.name);
  const worker = Buffer.byteLength(st.workerId);
  if (name) p = writeString(out, p, 0x0a, st.name, name);
  if (st.state) {
    out[p++] = 0x10;
    p = writeInt32(out, p, st.state);
  }
  if (st.attempt) {
    out[p++] = 0x18;
    p = writeVarint(out, p, st.attempt);
  }
  if (worker) p = writeString(out, p, 0x22, st.workerId, worker);
  if (st.error) {
    out[p++] = 0x2a;
    p = writeVarint(out, p, errorSize(st.error));
    p = writeError(out, p, st.error);
  }
  if (st.startedAt) {
    out[p++] = 0x32;
    p = writeVarint(out, p, timestampSize(st.startedAt));
    p = writeTimestamp(out, p, st.startedAt);
  }
  if (st.endedAt) {
    out[p++] = 0x3a;
    p = writeVarint(out, p, timestampSize(st.endedAt));
    p = writeTimestamp(out, p, st.endedAt);
  }
  return p;
}
