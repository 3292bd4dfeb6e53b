import test from "ava";
import { isLegalStageTransition, isLegalTaskTransition, isTaskTerminal } from "./fsm.ts";
import { State } from "./gen/dsat/v1/task_pb.js";

const ALL = [
  State.UNSPECIFIED,
  State.PENDING,
  State.DISPATCHED,
  State.RUNNING,
  State.SUCCEEDED,
  State.FAILED,
  State.TIMED_OUT,
  State.CANCELLED,
  State.RETRYING,
];

const S = State;
const STAGE_LEGAL = new Set([
  `${S.UNSPECIFIED}>${S.PENDING}`,
  `${S.PENDING}>${S.DISPATCHED}`,
  `${S.PENDING}>${S.CANCELLED}`,
  `${S.PENDING}>${S.FAILED}`,
  `${S.DISPATCHED}>${S.RUNNING}`,
  `${S.DISPATCHED}>${S.FAILED}`,
  `${S.DISPATCHED}>${S.TIMED_OUT}`,
  `${S.DISPATCHED}>${S.CANCELLED}`,
  `${S.RUNNING}>${S.RUNNING}`,
  `${S.RUNNING}>${S.SUCCEEDED}`,
  `${S.RUNNING}>${S.FAILED}`,
  `${S.RUNNING}>${S.TIMED_OUT}`,
  `${S.RUNNING}>${S.CANCELLED}`,
  `${S.FAILED}>${S.RETRYING}`,
  `${S.TIMED_OUT}>${S.RETRYING}`,
  `${S.RETRYING}>${S.DISPATCHED}`,
  `${S.RETRYING}>${S.CANCELLED}`,
  `${S.RETRYING}>${S.FAILED}`,
]);

const TASK_LEGAL = new Set([
  `${S.UNSPECIFIED}>${S.PENDING}`,
  `${S.PENDING}>${S.RUNNING}`,
  `${S.PENDING}>${S.CANCELLED}`,
  `${S.PENDING}>${S.FAILED}`,
  `${S.PENDING}>${S.TIMED_OUT}`,
  `${S.RUNNING}>${S.SUCCEEDED}`,
  `${S.RUNNING}>${S.FAILED}`,
  `${S.RUNNING}>${S.TIMED_OUT}`,
  `${S.RUNNING}>${S.CANCELLED}`,
]);

test("every pair of stage states: legal exactly when the FSM says so", (t) => {
  for (const from of ALL) {
    for (const to of ALL) {
      t.is(isLegalStageTransition(from, to), STAGE_LEGAL.has(`${from}>${to}`), `${State[from]} -> ${State[to]}`);
    }
  }
});

test("every pair of task states: legal exactly when the FSM says so", (t) => {
  for (const from of ALL) {
    for (const to of ALL) {
      t.is(isLegalTaskTransition(from, to), TASK_LEGAL.has(`${from}>${to}`), `${State[from]} -> ${State[to]}`);
    }
  }
});

test("terminal states of a task never move again", (t) => {
  for (const s of ALL) {
    if (!isTaskTerminal(s)) continue;
    for (const to of ALL) t.false(isLegalTaskTransition(s, to), `${State[s]} -> ${State[to]}`);
  }
  t.deepEqual(ALL.filter(isTaskTerminal), [S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED]);
});
