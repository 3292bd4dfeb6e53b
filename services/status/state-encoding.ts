import { toBinary } from "@bufbuild/protobuf";
import {
  type StageState,
  type Task,
  TaskSchema,
  type TaskState,
  TaskStateSchema,
  type Transition,
} from "@dsat/sdk";
import { encodeTransitionField, lengthDelimited } from "./transition-encoding.ts";

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
  const rest = toBinary(TaskStateSchema, { ...state, task: undefined, history: [] });
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
