import { create, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { State, TaskSchema, type TaskState, TaskStateSchema, TransitionSchema } from "@dsat/sdk";
import test from "ava";
import { applyCreate, applyTransition } from "./apply-transition.ts";
import { decodeStoredState, encodeStateRest, encodeTaskState, workingCopy, writeCompact } from "./state-encoding.ts";

const now = timestampFromMs(1_700_000_000_000);

function created(): TaskState {
  const task = create(TaskSchema, { id: "t1", pipeline: "p", payload: new Uint8Array([1, 2, 3]) });
  const r = applyCreate(undefined, task, "router-1", now);
  if (!r.state) throw new Error("not created");
  return r.state;
}

function step(state: TaskState, stage: string, from: State, to: State): void {
  const o = applyTransition(
    state,
    create(TransitionSchema, { taskId: "t1", stage, attempt: 1, from, to, memberId: "w1", output: new Uint8Array([9]) }),
    now,
  );
  if (!o.accepted) throw new Error(o.reason);
}

/** A stage's run from its start to its success, as (from, to) pairs. */
const STAGE_RUN: readonly (readonly [State, State])[] = [
  [State.UNSPECIFIED, State.PENDING],
  [State.PENDING, State.DISPATCHED],
  [State.DISPATCHED, State.RUNNING],
  [State.RUNNING, State.SUCCEEDED],
];

test("the pieces decode to the same state as a whole encoding, put after put", (t) => {
  let state = created();
  let { value, parts } = encodeTaskState(state, undefined);
  t.true(equals(TaskStateSchema, fromBinary(TaskStateSchema, value), state));
  for (const [from, to] of STAGE_RUN) {
    const before = toBinary(TaskStateSchema, state);
    const next = workingCopy(state);
    step(next, "a", from, to);
    // The working copy leaves the state it was made from as it was.
    t.deepEqual(toBinary(TaskStateSchema, state), before);
    ({ value, parts } = encodeTaskState(next, parts));
    const decoded = fromBinary(TaskStateSchema, value);
    t.true(equals(TaskStateSchema, decoded, next));
    t.is(decoded.history.length, next.history.length);
    state = next;
  }
  t.is(state.stages[0]?.state, State.SUCCEEDED);
});

test("a state read back from etcd (no pieces) or with another task is encoded whole", (t) => {
  const state = created();
  const { parts } = encodeTaskState(state, undefined);
  const other = workingCopy(state);
  other.task = create(TaskSchema, { id: "t1", pipeline: "q" });
  other.history = [];
  const { value } = encodeTaskState(other, parts);
  t.true(equals(TaskStateSchema, fromBinary(TaskStateSchema, value), other));
});

test("a compact state leaves the task id out of its history, and the task's result out of its end; decodeStoredState puts them back", (t) => {
  let state = created();
  let whole = encodeTaskState(state, undefined);
  let compact = encodeTaskState(state, undefined, true);
  for (const [from, to] of STAGE_RUN) {
    const next = workingCopy(state);
    step(next, "a", from, to);
    whole = encodeTaskState(next, whole.parts);
    compact = encodeTaskState(next, compact.parts, true);
    t.true(equals(TaskStateSchema, decodeStoredState(compact.value), next));
    // What a reader that does not know compact states (a status server before 0.1.1) sees.
    const plain = fromBinary(TaskStateSchema, compact.value);
    t.deepEqual(plain.history.map((h) => h.taskId), next.history.map(() => ""));
    // Each entry is shorter by "t1" with its tag and length byte.
    t.is(whole.value.length - compact.value.length, 4 * next.history.length);
    // A whole state decodes the same either way.
    t.true(equals(TaskStateSchema, decodeStoredState(whole.value), next));
    state = next;
  }
  // The task's own end: its output is the state's, stored once in a compact state.
  const ended = workingCopy(state);
  const result = new Uint8Array(100).fill(7);
  for (const [from, to] of [
    [State.PENDING, State.RUNNING],
    [State.RUNNING, State.SUCCEEDED],
  ]) {
    const o = applyTransition(ended, create(TransitionSchema, { taskId: "t1", from, to, memberId: "r1", output: to === State.SUCCEEDED ? result : undefined }), now);
    t.true(o.accepted, o.reason);
  }
  whole = encodeTaskState(ended, whole.parts);
  compact = encodeTaskState(ended, compact.parts, true);
  const back = decodeStoredState(compact.value);
  t.true(equals(TaskStateSchema, back, ended));
  t.deepEqual(Uint8Array.from(back.history.at(-1)?.output ?? []), result);
  t.deepEqual(fromBinary(TaskStateSchema, compact.value).history.at(-1)?.output, new Uint8Array(0));
  // The task id in every entry, and the second copy of the result with its tag and length.
  t.is(whole.value.length - compact.value.length, 4 * ended.history.length + 102);
});

test("a task's states may switch between whole and compact from one put to the next", (t) => {
  let state = created();
  let { parts } = encodeTaskState(state, undefined);
  for (const [i, [from, to]] of STAGE_RUN.slice(0, 3).entries()) {
    const next = workingCopy(state);
    step(next, "a", from, to);
    const compact = i % 2 === 0;
    const encoded = encodeTaskState(next, parts, compact);
    // Every entry in the mode of this put: none kept from the other mode.
    t.deepEqual(
      fromBinary(TaskStateSchema, encoded.value).history.map((h) => h.taskId),
      next.history.map(() => (compact ? "" : "t1")),
    );
    t.true(equals(TaskStateSchema, decodeStoredState(encoded.value), next));
    parts = encoded.parts;
    state = next;
  }
});

test("compact states are written only while every status server seen reads them", (t) => {
  for (const current of [false, true]) {
    t.true(writeCompact(current, ["0.1.1"]));
    t.true(writeCompact(current, ["0.1.1", "0.1.z", "0.2.0", "1.0.0"]));
    t.false(writeCompact(current, ["0.1.1", "0.1.0"]));
    t.false(writeCompact(current, ["0.1.1", "not a version"]));
    // No status server seen (before this one's registration shows, or while its lease is
    // being renewed after a loss): nothing changes.
    t.is(writeCompact(current, []), current);
  }
});

test("the fields besides task and history: the same bytes as toBinary, for states of every shape", (t) => {
  const samples: TaskState[] = [
    create(TaskStateSchema, {}),
    create(TaskStateSchema, {
      state: State.FAILED,
      stages: [
        { name: "s1", state: State.SUCCEEDED, attempt: 1, workerId: "w-1", startedAt: timestampFromMs(1_700_000_000_001), endedAt: timestampFromMs(1_700_000_000_999) },
        { name: "étape ✓", state: State.FAILED, attempt: 300, workerId: "", error: { code: "BOOM", message: "x".repeat(200), retryable: true }, startedAt: timestampFromMs(-5) },
        { name: "s3" },
      ],
      output: new Uint8Array(20_000).fill(3),
      error: { code: "BOOM", message: "ünïcødé" },
      updatedAt: timestampFromMs(1_700_000_000_500),
      seq: 2n ** 63n + 1n,
      routerId: "router-host-1234-abcd",
    }),
  ];
  const s = created();
  step(s, "s1", State.UNSPECIFIED, State.PENDING);
  step(s, "s1", State.PENDING, State.DISPATCHED);
  step(s, "s1", State.DISPATCHED, State.RUNNING);
  samples.push(s);
  for (const [i, state] of samples.entries()) {
    const ours = Buffer.from(encodeStateRest(state));
    const theirs = Buffer.from(toBinary(TaskStateSchema, { ...state, task: undefined, history: [] }));
    t.true(ours.equals(theirs), `sample ${i}`);
  }
  const odd = create(TaskStateSchema, { routerId: "r" });
  odd.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([1]) }];
  t.true(Buffer.from(encodeStateRest(odd)).equals(Buffer.from(toBinary(TaskStateSchema, odd))), "unknown fields kept (toBinary)");
});
