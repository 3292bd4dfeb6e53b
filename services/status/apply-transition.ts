import { create } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import {
  isLegalStageTransition,
  isLegalTaskTransition,
  isTaskTerminal,
  StageStateSchema,
  State,
  stateName,
  type StageState,
  type Task,
  type TaskState,
  TaskStateSchema,
  type Transition,
  TransitionSchema,
} from "@dsat/sdk";

/**
 * The pure rules of StatusService: how a created task and a transition change a task's
 * state. No I/O here; the task store feeds it states and persists what it returns.
 */

/** What became of one created task or one transition (the fields of a ReportOutcome). */
export interface Outcome {
  readonly accepted: boolean;
  readonly duplicate: boolean;
  readonly reason: string;
  /** Refused because another router drives the task now. */
  readonly notOwner?: boolean;
}

// The two common outcomes are ReportOutcome messages already ($typeName): a Report's
// response, hundreds of them, then goes out without a create() of each.
const ACCEPTED: Outcome = Object.freeze({ $typeName: "dsat.v1.ReportOutcome", accepted: true, duplicate: false, reason: "" });
const REPLAYED: Outcome = Object.freeze({ $typeName: "dsat.v1.ReportOutcome", accepted: true, duplicate: true, reason: "" });

function refused(reason: string): Outcome {
  return { accepted: false, duplicate: false, reason };
}

/** The result of {@link applyCreate}: the task's state after it (none if refused on an empty id), and the outcome. */
export interface CreateResult {
  readonly state: TaskState | undefined;
  readonly outcome: Outcome;
}

/**
 * Creates a task: a new state, PENDING as a whole, whose history starts with the implied
 * task-level UNSPECIFIED -> PENDING transition (seq 1). When a state already exists the
 * task is refused as a duplicate and the existing state is returned unchanged.
 */
/** True when a create's created_at is unset (an older router's) or the stored task's. */
function sameTime(sent: Timestamp | undefined, stored: Timestamp | undefined): boolean {
  if (!sent) return true;
  return stored !== undefined && sent.seconds === stored.seconds && sent.nanos === stored.nanos;
}

export function applyCreate(
  existing: TaskState | undefined,
  task: Task,
  routerId: string,
  now: Timestamp,
): CreateResult {
  if (existing) {
    // The same router sending its create again (its first Report was stored, but the answer
    // was lost with the status server that took it): a replay, and the task is still its own.
    // The same id submitted anew to that router (a task it ran before) is another create,
    // told apart by its created_at (set when the router accepts a submission).
    if (existing.routerId === routerId && sameTime(task.createdAt, existing.task?.createdAt)) {
      return { state: existing, outcome: REPLAYED };
    }
    return { state: existing, outcome: { accepted: false, duplicate: true, reason: `task ${task.id} exists` } };
  }
  if (!task.id) return { state: undefined, outcome: refused("a created task needs an id") };
  // Shallow copies: nothing here changes the messages of a request, only fields of the copies.
  const t: Task = { ...task };
  if (!t.createdAt) t.createdAt = now;
  const first = create(TransitionSchema, {
    taskId: t.id,
    stage: "",
    attempt: 0,
    from: State.UNSPECIFIED,
    to: State.PENDING,
    time: now,
    memberId: routerId,
    seq: 1n,
  });
  const state = create(TaskStateSchema, {
    task: t,
    state: State.PENDING,
    routerId,
    seq: 1n,
    updatedAt: now,
    history: [first],
  });
  return { state, outcome: ACCEPTED };
}

/**
 * Applies one transition to a task's state, in place, and says what became of it.
 *
 * - A transition whose (stage, attempt, from, to) is in the history is a replay: accepted
 *   as a duplicate, nothing changes.
 * - Otherwise `from` must be where the stage (or the task as a whole, for stage "") stands,
 *   and from -> to an edge of the FSM; a stage's attempt may not go back. Else it is
 *   refused and nothing changes. A task that ended as a whole accepts no other task-level
 *   transition, which is what keeps its terminal result unique.
 * - An accepted transition gets the next seq, the time `now` when it has none, and is
 *   appended to the history; the stage (or the task) moves to its `to`.
 * - Progress (a stage's RUNNING -> RUNNING, with the worker's `detail`) is a replay only
 *   when its detail repeats the latest one; it replaces a progress entry that is the last
 *   of the history for the same attempt, so that a chatty handler keeps one entry per
 *   attempt, not one per report (its seq is new: Watch sends it as a step).
 */
export function applyTransition(
  state: TaskState | undefined,
  transition: Transition,
  now: Timestamp,
  routerId = "",
): Outcome {
  if (!transition.taskId) return refused("a transition needs a task_id");
  if (!state) return refused(`unknown task ${transition.taskId}`);
  if (isReplay(state, transition)) return REPLAYED;
  // The fence of a take-over: once a task is claimed, its old router's word no longer counts.
  if (routerId && state.routerId && routerId !== state.routerId) {
    return {
      accepted: false,
      duplicate: false,
      notOwner: true,
      reason: `task ${transition.taskId} is driven by router ${state.routerId}, not ${routerId}`,
    };
  }
  const problem = transition.stage === "" ? checkTaskLevel(state, transition) : checkStageLevel(state, transition);
  if (problem) return refused(problem);

  const t: Transition = { ...transition };
  t.seq = state.seq + 1n;
  if (!t.time) t.time = now;
  state.seq = t.seq;
  const last = state.history[state.history.length - 1];
  if (isProgress(t) && last && isProgress(last) && last.stage === t.stage && last.attempt === t.attempt) {
    state.history[state.history.length - 1] = t;
  } else {
    state.history.push(t);
  }
  state.updatedAt = now;
  if (t.stage === "") moveTask(state, t);
  else moveStage(state, t);
  return ACCEPTED;
}

/**
 * Moves an unfinished task from router `from` to router `to`, in place. Refused when the
 * task ended, or when another router than `from` drives it now (someone claimed it first).
 */
export function applyClaim(state: TaskState | undefined, taskId: string, from: string, to: string, now: Timestamp): Outcome {
  if (!state) return refused(`unknown task ${taskId}`);
  if (isTaskTerminal(state.state)) return refused(`task ${taskId} already ended ${stateName(state.state)}`);
  if (state.routerId === to) return REPLAYED;
  if (state.routerId !== from) return refused(`task ${taskId} is driven by router ${state.routerId}, not ${from}`);
  state.routerId = to;
  state.updatedAt = now;
  return ACCEPTED;
}

/** True when the same step of the same attempt at the same stage is already stored. */
function isReplay(state: TaskState, t: Transition): boolean {
  if (isProgress(t)) {
    // Progress repeats: only the same detail as the latest progress of that attempt is a replay.
    for (let i = state.history.length - 1; i >= 0; i--) {
      const h = state.history[i] as Transition;
      if (h.stage === t.stage && h.attempt === t.attempt && isProgress(h)) return h.detail === t.detail;
    }
    return false;
  }
  for (const h of state.history) {
    if (h.stage === t.stage && h.attempt === t.attempt && h.from === t.from && h.to === t.to) return true;
  }
  return false;
}

/** A stage's progress report: RUNNING -> RUNNING. */
function isProgress(t: Transition): boolean {
  return t.stage !== "" && t.from === State.RUNNING && t.to === State.RUNNING;
}

// The messages of a refusal are made only when there is one: these checks run for every
// transition stored.

function step(t: Transition): string {
  return `${stateName(t.from)} -> ${stateName(t.to)}`;
}

function checkTaskLevel(state: TaskState, t: Transition): string | undefined {
  if (isTaskTerminal(state.state)) {
    return `illegal transition of task ${t.taskId}: ${step(t)} (the task already ended ${stateName(state.state)})`;
  }
  if (t.from !== state.state || !isLegalTaskTransition(t.from, t.to)) {
    return `illegal transition of task ${t.taskId}: ${step(t)} (the task is ${stateName(state.state)})`;
  }
  return undefined;
}

/** The stage of that name (a loop, not find(): no closure per transition). */
function stageOf(state: TaskState, name: string): StageState | undefined {
  for (const s of state.stages) if (s.name === name) return s;
  return undefined;
}

function where(t: Transition): string {
  return `at stage "${t.stage}" attempt ${t.attempt}: ${step(t)}`;
}

function checkStageLevel(state: TaskState, t: Transition): string | undefined {
  const stage = stageOf(state, t.stage);
  const current = stage?.state ?? State.UNSPECIFIED;
  if (t.from !== current || !isLegalStageTransition(t.from, t.to)) {
    return `illegal transition ${where(t)} (the stage is ${stateName(current)})`;
  }
  // A worker that was given up on (its attempt failed or timed out) may still report;
  // its steps must not be taken for those of the attempt that replaced it.
  if (stage && t.attempt < stage.attempt) {
    return `stale transition ${where(t)} (the stage is at attempt ${stage.attempt})`;
  }
  return undefined;
}

function moveTask(state: TaskState, t: Transition): void {
  state.state = t.to;
  if (t.to === State.SUCCEEDED) state.output = t.output;
  if (t.error) state.error = t.error;
}

function moveStage(state: TaskState, t: Transition): void {
  let stage = stageOf(state, t.stage);
  if (!stage) {
    stage = create(StageStateSchema, { name: t.stage });
    state.stages.push(stage);
  }
  stage.state = t.to;
  stage.attempt = t.attempt;
  if (t.workerId) stage.workerId = t.workerId;
  if (t.to === State.DISPATCHED) {
    // A new attempt starts: what ended the previous one no longer describes the stage.
    stage.error = undefined;
    stage.startedAt = undefined;
    stage.endedAt = undefined;
  }
  if (t.error) stage.error = t.error;
  if (t.to === State.RUNNING && t.from !== State.RUNNING) stage.startedAt = t.time;
  if (isTaskTerminal(t.to)) stage.endedAt = t.time;
}
