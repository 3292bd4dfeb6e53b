import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { encodeTask } from "../common/task-encoding.ts";
import {
  compareVersions,
  type StageState,
  State,
  type Task,
  type TaskState,
  TaskStateSchema,
  type Transition,
} from "@dsat/sdk";
import {
  bigVarintSize,
  encodeTransitionField,
  errorSize,
  int32Size,
  lenFieldSize,
  lengthDelimited,
  timestampSize,
  varintSize,
  writeBigVarint,
  writeBytesField,
  writeErrorField,
  writeInt32,
  writeString,
  writeTimestampField,
  writeVarintField,
} from "../common/transition-encoding.ts";

/**
 * A task state is put again and again as its transitions arrive; its task (with the
 * payload) never changes and its history only grows. So a put encodes only the small
 * fields and the new history entries, and reuses the bytes of the rest: protobuf lets a
 * message's fields come in any order and a repeated field in pieces, so the pieces,
 * concatenated, are a valid encoding of the whole TaskState, which any reader decodes as
 * usual.
 *
 * A compact state (see `encodeTaskState`) leaves the task id out of its history's entries:
 * it is the record's own task id, and it was about a third of a stored task's bytes. It
 * also leaves out the output of the task's own SUCCEEDED transition, which is the state's
 * `output` (a second copy of the result). `decodeStoredState` puts both back, so every
 * reader of StatusService sees whole transitions. Status servers before dsat 0.1.1 do not,
 * which is why a status server writes compact states only while every status server it
 * sees is 0.1.1 or later.
 */

/** The first dsat version whose status servers read compact task states. */
export const COMPACT_HISTORY_SINCE = "0.1.1";

/**
 * Whether to write compact task states, now writing them or not (`current`), when the
 * status servers registered in etcd announce these versions: while every one reads them.
 * A version that does not parse reads them not. No status server at all (not even this
 * one: its lease was lost, and it registers again) tells nothing, so nothing changes.
 */
export function writeCompact(current: boolean, versions: readonly string[]): boolean {
  return versions.length === 0 ? current : versions.every(readsCompact);
}

/** Whether a status server of this version reads compact task states (an invalid version: no). */
export function readsCompact(version: string): boolean {
  try {
    return compareVersions(version, COMPACT_HISTORY_SINCE) >= 0;
  } catch {
    return false;
  }
}

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
  /** Whether the history entries leave out the task id. */
  readonly compact: boolean;
}

/**
 * Encodes `state` as a dsat.v1.TaskState, reusing what `previous` encoded of the same task
 * (when it was encoded the same way). `compact`: the history's entries leave out the task
 * id (read such a state with `decodeStoredState`).
 */
export function encodeTaskState(
  state: TaskState,
  previous: EncodedParts | undefined,
  compact = false,
): { value: Buffer; parts: EncodedParts } {
  if (previous && previous.compact !== compact) previous = { ...previous, history: [], historyRefs: [] };
  const taskBytes =
    previous && previous.task === state.task
      ? previous.taskBytes
      : state.task
        ? lengthDelimited(TASK_FIELD, encodeTask(state.task))
        : new Uint8Array(0);
  // The entries already encoded, as long as the history still starts with them (a progress
  // entry may have been replaced at the end).
  const reused = previous ? commonPrefix(state.history, previous.historyRefs) : 0;
  const history = previous ? previous.history.slice(0, reused) : [];
  for (let i = reused; i < state.history.length; i++) {
    const t = state.history[i] as Transition;
    history.push(encodeTransitionField(HISTORY_FIELD, compact && isTaskSuccess(t) ? { ...t, output: EMPTY } : t, !compact));
  }
  const rest = encodeStateRest(state);
  const value = Buffer.concat([taskBytes, rest, ...history]);
  return { value, parts: { task: state.task, taskBytes, history, historyRefs: state.history.slice(), compact } };
}

/**
 * Decodes a task state as stored in etcd, compact or whole: a history entry without a task
 * id gets the record's task id back, and the task's own SUCCEEDED transition without an
 * output gets the record's output.
 */
export function decodeStoredState(bytes: Uint8Array): TaskState {
  const state = fromBinary(TaskStateSchema, bytes);
  const id = state.task?.id ?? "";
  for (const t of state.history) {
    if (!t.taskId) t.taskId = id;
    if (isTaskSuccess(t) && t.output.length === 0) t.output = state.output;
  }
  return state;
}

const EMPTY = new Uint8Array(0);

/** The task's own SUCCEEDED transition: its output is the state's (applyTransition sets it so). */
function isTaskSuccess(t: Transition): boolean {
  return t.stage === "" && t.to === State.SUCCEEDED;
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
    size += lenFieldSize(n);
  }
  if (state.output.length) size += lenFieldSize(state.output.length);
  if (error >= 0) size += lenFieldSize(error);
  if (updated >= 0) size += lenFieldSize(updated);
  if (state.seq) size += 1 + bigVarintSize(state.seq);
  if (routerId) size += lenFieldSize(routerId);

  const out = Buffer.allocUnsafe(size);
  let p = 0;
  if (state.state) {
    out[p++] = 0x10;
    p = writeInt32(out, p, state.state);
  }
  state.stages.forEach((st, i) => {
    p = writeStage(out, writeVarintField(out, p, 0x1a, stageSizes[i] as number), st);
  });
  if (state.output.length) p = writeBytesField(out, p, 0x22, state.output);
  if (state.error && error >= 0) p = writeErrorField(out, p, 0x2a, state.error, error);
  if (state.updatedAt && updated >= 0) p = writeTimestampField(out, p, 0x32, state.updatedAt, updated);
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
  if (name) n += lenFieldSize(name);
  if (st.state) n += 1 + int32Size(st.state);
  if (st.attempt) n += 1 + varintSize(st.attempt);
  if (worker) n += lenFieldSize(worker);
  if (st.error) n += lenFieldSize(errorSize(st.error));
  if (st.startedAt) n += lenFieldSize(timestampSize(st.startedAt));
  if (st.endedAt) n += lenFieldSize(timestampSize(st.endedAt));
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
  if (st.attempt) p = writeVarintField(out, p, 0x18, st.attempt);
  if (worker) p = writeString(out, p, 0x22, st.workerId, worker);
  if (st.error) p = writeErrorField(out, p, 0x2a, st.error, errorSize(st.error));
  if (st.startedAt) p = writeTimestampField(out, p, 0x32, st.startedAt, timestampSize(st.startedAt));
  if (st.endedAt) p = writeTimestampField(out, p, 0x3a, st.endedAt, timestampSize(st.endedAt));
  return p;
}
