import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { State, TaskStateSchema, type TransitionSchema } from "@dsat/sdk";
import type { MessageInitShape } from "@bufbuild/protobuf";
import test from "ava";
import { attemptRows, renderTimeline } from "./trace-chart.ts";

const T0 = 1_700_000_000_000;

function step(ms: number, stage: string, attempt: number, from: State, to: State, extra: MessageInitShape<typeof TransitionSchema> = {}) {
  return { taskId: "t1", stage, attempt, from, to, time: timestampFromMs(T0 + ms), ...extra };
}

/** A task of two stages over 100 ms; stage b fails once and runs again on another worker. */
const STATE = create(TaskStateSchema, {
  task: { id: "t1", pipeline: "p", pipelineVersion: 3n },
  state: State.SUCCEEDED,
  history: [
    step(0, "", 0, State.UNSPECIFIED, State.PENDING),
    step(0, "a", 1, State.UNSPECIFIED, State.PENDING),
    step(0, "", 0, State.PENDING, State.RUNNING),
    step(10, "a", 1, State.PENDING, State.DISPATCHED, { workerId: "wa" }),
    step(12, "a", 1, State.DISPATCHED, State.RUNNING, { workerId: "wa" }),
    step(30, "a", 1, State.RUNNING, State.SUCCEEDED, { workerId: "wa" }),
    step(30, "b", 1, State.UNSPECIFIED, State.PENDING),
    step(30, "b", 1, State.PENDING, State.DISPATCHED, { workerId: "wb1" }),
    step(32, "b", 1, State.DISPATCHED, State.RUNNING, { workerId: "wb1" }),
    step(50, "b", 1, State.RUNNING, State.FAILED, { workerId: "wb1", error: { code: "UNKNOWN", message: "boom" } }),
    step(50, "b", 1, State.FAILED, State.RETRYING),
    step(70, "b", 2, State.RETRYING, State.DISPATCHED, { workerId: "wb2" }),
    step(70, "b", 2, State.DISPATCHED, State.RUNNING, { workerId: "wb2" }),
    step(100, "b", 2, State.RUNNING, State.SUCCEEDED, { workerId: "wb2" }),
    step(100, "", 0, State.RUNNING, State.SUCCEEDED),
  ],
});

test("attempt rows: one per attempt, with its worker, times and end; a retry waits from its RETRYING", (t) => {
  const rows = attemptRows(STATE);
  t.deepEqual(
    rows.map((r) => [r.stage, r.attempt, r.worker, State[r.state], r.waitFrom - T0, (r.dispatchedAt ?? 0) - T0, (r.runningAt ?? 0) - T0, (r.endedAt ?? 0) - T0]),
    [
      ["a", 1, "wa", "SUCCEEDED", 0, 10, 12, 30],
      ["b", 1, "wb1", "FAILED", 30, 30, 32, 50],
      ["b", 2, "wb2", "SUCCEEDED", 50, 70, 70, 100],
    ],
  );
  t.is(rows[1]?.error?.message, "boom");
});

test("the timeline scales bars to the task's duration", (t) => {
  const text = renderTimeline(STATE, { width: 20 });
  const lines = text.split("\n");
  t.regex(lines[0] ?? "", /^task t1 {2}pipeline p v3 {2}SUCCEEDED {2}in 100\.0 ms, 2 stages, 3 attempts$/);
  const bar = (prefix: RegExp) => /\|(.*)\|$/.exec(lines.find((l) => prefix.test(l)) ?? "")?.[1];
  t.is(bar(/^\(task\)/), "━".repeat(20));
  // 5 ms a column: a waits 0-10 ms, is dispatched 10-12 (under a column: running wins it), runs 12-30.
  t.is(bar(/^a\s+1\s/), "··████              ");
  t.is(bar(/^b\s+1\s/), "      ████          ");
  t.is(bar(/^b\s+2\s/), "          ····██████");
  t.regex(text, /^b\s+1\s+wb1\s+FAILED\s+0\.0 ms\s+18\.0 ms\s+20\.0 ms\s/m);
  t.regex(text, /errors:\n {2}b attempt 1: UNKNOWN: boom/);
});

test("a task still running is drawn up to now", (t) => {
  const running = create(TaskStateSchema, { ...STATE, state: State.RUNNING, history: STATE.history.slice(0, 9) });
  const text = renderTimeline(running, { width: 20, now: T0 + 40 });
  t.regex(text, /for 40\.0 ms so far/);
  t.regex(text, /^b\s+1\s+wb1\s+RUNNING\s/m);
});
