import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { State, TaskSchema, type TaskState, type Transition, TransitionSchema } from "@dsat/sdk";
import test from "ava";
import { applyCreate, applyTransition, type Outcome } from "./apply-transition.ts";

/** The fields of an outcome (the common ones are ReportOutcome messages, with a $typeName). */
const fields = (o: Outcome) => ({ accepted: o.accepted, duplicate: o.duplicate, reason: o.reason });

const NOW = timestampFromMs(1_700_000_000_000);

function created(id = "t1"): TaskState {
  const { state } = applyCreate(undefined, create(TaskSchema, { id, pipeline: "p" }), "router-1", NOW);
  if (!state) throw new Error("not created");
  return state;
}

function step(stage: string, attempt: number, from: State, to: State, extra: MessageInitShape<typeof TransitionSchema> = {}): Transition {
  return create(TransitionSchema, { taskId: "t1", stage, attempt, from, to, ...extra });
}

/** The steps of one attempt at one stage that succeeds. */
function stageRun(stage: string, attempt = 1): Transition[] {
  return [
    step(stage, attempt, State.UNSPECIFIED, State.PENDING),
    step(stage, attempt, State.PENDING, State.DISPATCHED, { workerId: "w1" }),
    step(stage, attempt, State.DISPATCHED, State.RUNNING),
    step(stage, attempt, State.RUNNING, State.SUCCEEDED, { output: new Uint8Array([1]) }),
  ];
}

test("create starts a PENDING task with the implied transition as seq 1", (t) => {
  const s = created();
  t.is(s.state, State.PENDING);
  t.is(s.seq, 1n);
  t.is(s.routerId, "router-1");
  t.deepEqual(s.task?.createdAt, NOW);
  t.is(s.history.length, 1);
  const first = s.history[0];
  t.is(first?.stage, "");
  t.is(first?.from, State.UNSPECIFIED);
  t.is(first?.to, State.PENDING);
  t.is(first?.memberId, "router-1");
  t.is(first?.seq, 1n);
});

test("create keeps a created_at that is already set", (t) => {
  const at = timestampFromMs(1_000);
  const { state } = applyCreate(undefined, create(TaskSchema, { id: "x", createdAt: at }), "r", NOW);
  t.deepEqual(state?.task?.createdAt, at);
});

test("create of an existing task is a refused duplicate that changes nothing", (t) => {
  const s = created();
  const r = applyCreate(s, create(TaskSchema, { id: "t1" }), "router-2", NOW);
  t.deepEqual(fields(r.outcome), { accepted: false, duplicate: true, reason: "task t1 exists" });
  t.is(r.state, s);
  t.is(s.routerId, "router-1");
});

test("regression: a create replayed by the router that made it is accepted as a replay (its task, still)", (t) => {
  const s = created();
  const r = applyCreate(s, create(TaskSchema, { id: "t1" }), "router-1", NOW);
  t.true(r.outcome.accepted);
  t.true(r.outcome.duplicate);
  t.is(r.state, s);
});

test("the same id submitted anew to the router that ran it (another created_at) is a refused duplicate, not a replay", (t) => {
  const at = timestampFromMs(1_000);
  const s = applyCreate(undefined, create(TaskSchema, { id: "t1", createdAt: at }), "router-1", NOW).state as TaskState;
  const replay = applyCreate(s, create(TaskSchema, { id: "t1", createdAt: at }), "router-1", NOW);
  t.deepEqual(fields(replay.outcome), { accepted: true, duplicate: true, reason: "" });
  const anew = applyCreate(s, create(TaskSchema, { id: "t1", createdAt: timestampFromMs(2_000) }), "router-1", NOW);
  t.deepEqual(fields(anew.outcome), { accepted: false, duplicate: true, reason: "task t1 exists" });
  t.is(anew.state, s);
});

test("a full one-stage lifecycle moves the stage and the task, with contiguous seqs", (t) => {
  const s = created();
  const steps = [
    step("", 0, State.PENDING, State.RUNNING),
    ...stageRun("a"),
    step("", 0, State.RUNNING, State.SUCCEEDED, { output: new Uint8Array([7]) }),
  ];
  for (const st of steps) t.deepEqual(fields(applyTransition(s, st, NOW)), { accepted: true, duplicate: false, reason: "" });
  t.is(s.state, State.SUCCEEDED);
  t.deepEqual(s.output, new Uint8Array([7]));
  t.is(s.seq, BigInt(steps.length + 1));
  t.deepEqual(
    s.history.map((h) => h.seq),
    Array.from({ length: steps.length + 1 }, (_, i) => BigInt(i + 1)),
  );
  t.is(s.stages.length, 1);
  const a = s.stages[0];
  t.is(a?.name, "a");
  t.is(a?.state, State.SUCCEEDED);
  t.is(a?.attempt, 1);
  t.is(a?.workerId, "w1");
  t.truthy(a?.startedAt);
  t.truthy(a?.endedAt);
  t.deepEqual(s.updatedAt, NOW);
  t.true(s.history.every((h) => h.time !== undefined));
});

test("an illegal transition is refused with a reason that names the stage, and nothing changes", (t) => {
  const s = created();
  for (const st of stageRun("b")) applyTransition(s, st, NOW);
  const before = s.history.length;
  const o = applyTransition(s, step("b", 1, State.RUNNING, State.PENDING), NOW);
  t.false(o.accepted);
  t.false(o.duplicate);
  t.is(o.reason, 'illegal transition at stage "b" attempt 1: RUNNING -> PENDING (the stage is SUCCEEDED)');
  t.is(s.history.length, before);
  t.is(s.seq, BigInt(before));
});

test("a transition whose from is not where the stage stands is refused", (t) => {
  const s = created();
  const o = applyTransition(s, step("a", 1, State.DISPATCHED, State.RUNNING), NOW);
  t.false(o.accepted);
  t.regex(o.reason, /the stage is UNSPECIFIED/);
});

test("a replay is accepted as a duplicate and not stored twice", (t) => {
  const s = created();
  const run = stageRun("a");
  for (const st of run) applyTransition(s, st, NOW);
  const seq = s.seq;
  const o = applyTransition(s, run[1] as Transition, NOW);
  t.deepEqual(fields(o), { accepted: true, duplicate: true, reason: "" });
  t.is(s.seq, seq);
  t.is(s.history.filter((h) => h.stage === "a" && h.to === State.DISPATCHED).length, 1);
});

test("a transition of an unknown task is refused", (t) => {
  const o = applyTransition(undefined, step("a", 1, State.UNSPECIFIED, State.PENDING), NOW);
  t.false(o.accepted);
  t.is(o.reason, "unknown task t1");
});

test("a second task-level terminal transition is refused: one terminal result per task", (t) => {
  const s = created();
  t.true(applyTransition(s, step("", 0, State.PENDING, State.RUNNING), NOW).accepted);
  t.true(applyTransition(s, step("", 0, State.RUNNING, State.FAILED), NOW).accepted);
  const o = applyTransition(s, step("", 0, State.RUNNING, State.SUCCEEDED), NOW);
  t.false(o.accepted);
  t.regex(o.reason, /already ended FAILED/);
  t.is(s.state, State.FAILED);
});

test("stage transitions are still accepted after the task ended (stages cancelled after it)", (t) => {
  const s = created();
  applyTransition(s, step("", 0, State.PENDING, State.RUNNING), NOW);
  applyTransition(s, step("a", 1, State.UNSPECIFIED, State.PENDING), NOW);
  applyTransition(s, step("", 0, State.RUNNING, State.CANCELLED), NOW);
  t.true(applyTransition(s, step("a", 1, State.PENDING, State.CANCELLED), NOW).accepted);
  t.is(s.stages[0]?.state, State.CANCELLED);
});

test("a retry: the error of the failed attempt is kept until the next attempt is dispatched", (t) => {
  const s = created();
  const err = { code: "UNAVAILABLE", message: "worker lost", retryable: true };
  const steps = [
    step("a", 1, State.UNSPECIFIED, State.PENDING),
    step("a", 1, State.PENDING, State.DISPATCHED, { workerId: "w1" }),
    step("a", 1, State.DISPATCHED, State.FAILED, { error: err }),
  ];
  for (const st of steps) t.true(applyTransition(s, st, NOW).accepted);
  t.is(s.stages[0]?.error?.message, "worker lost");
  t.true(applyTransition(s, step("a", 1, State.FAILED, State.RETRYING), NOW).accepted);
  t.true(applyTransition(s, step("a", 2, State.RETRYING, State.DISPATCHED, { workerId: "w2" }), NOW).accepted);
  const a = s.stages[0];
  t.is(a?.attempt, 2);
  t.is(a?.workerId, "w2");
  t.is(a?.error, undefined);
  t.is(a?.endedAt, undefined);
});

test("a late step of an attempt that was replaced is refused as stale", (t) => {
  const s = created();
  for (const st of [
    step("a", 1, State.UNSPECIFIED, State.PENDING),
    step("a", 1, State.PENDING, State.DISPATCHED),
    step("a", 1, State.DISPATCHED, State.TIMED_OUT),
    step("a", 1, State.TIMED_OUT, State.RETRYING),
    step("a", 2, State.RETRYING, State.DISPATCHED),
  ]) {
    t.true(applyTransition(s, st, NOW).accepted);
  }
  const o = applyTransition(s, step("a", 1, State.DISPATCHED, State.RUNNING), NOW);
  t.false(o.accepted);
  t.regex(o.reason, /stale transition at stage "a" attempt 1.*attempt 2/);
});

test("the transition given is not changed; the stored copy gets seq and time", (t) => {
  const s = created();
  const st = step("a", 1, State.UNSPECIFIED, State.PENDING);
  applyTransition(s, st, NOW);
  t.is(st.seq, 0n);
  t.is(st.time, undefined);
  t.is(s.history[1]?.seq, 2n);
  t.deepEqual(s.history[1]?.time, NOW);
});

test("a transition without a task id is refused", (t) => {
  const o = applyTransition(created(), create(TransitionSchema, { stage: "a", from: State.UNSPECIFIED, to: State.PENDING }), NOW);
  t.false(o.accepted);
  t.regex(o.reason, /task_id/);
});

test("progress: RUNNING -> RUNNING keeps the latest detail per attempt, a repeat is a replay, startedAt stays", (t) => {
  const now = timestampFromMs(1_700_000_000_000);
  const later = timestampFromMs(1_700_000_005_000);
  const state = applyCreate(undefined, create(TaskSchema, { id: "p1", pipeline: "p" }), "r", now).state as TaskState;
  const go = (from: State, to: State, extra: { detail?: string } = {}, at = now) =>
    applyTransition(state, create(TransitionSchema, { taskId: "p1", stage: "s", attempt: 1, from, to, time: at, ...extra }), now);
  t.true(go(State.UNSPECIFIED, State.PENDING).accepted);
  t.true(go(State.PENDING, State.DISPATCHED).accepted);
  t.true(go(State.DISPATCHED, State.RUNNING).accepted);
  const started = state.stages[0]?.startedAt;
  const a = go(State.RUNNING, State.RUNNING, { detail: "10%" }, later);
  t.true(a.accepted && !a.duplicate);
  t.true(go(State.RUNNING, State.RUNNING, { detail: "10%" }, later).duplicate, "the same detail again is a replay");
  const b = go(State.RUNNING, State.RUNNING, { detail: "50%" }, later);
  t.true(b.accepted && !b.duplicate);
  const progress = state.history.filter((h) => h.from === State.RUNNING && h.to === State.RUNNING);
  t.deepEqual(
    progress.map((h) => h.detail),
    ["50%"],
    "the latest progress replaced the one before it",
  );
  t.is(state.history.at(-1)?.seq, state.seq, "the replacing entry has the newest seq");
  t.deepEqual(state.stages[0]?.startedAt, started, "progress does not move the start of the attempt");
  t.is(state.stages[0]?.state, State.RUNNING);
  t.true(go(State.RUNNING, State.SUCCEEDED).accepted);
  t.false(go(State.RUNNING, State.RUNNING, { detail: "late" }).accepted, "no progress after the attempt ended");
});
