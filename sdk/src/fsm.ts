import { State } from "./gen/dsat/v1/task_pb.js";

/**
 * The task FSM, at one stage:
 *
 *   PENDING -> DISPATCHED -> RUNNING -> SUCCEEDED | FAILED | TIMED_OUT | CANCELLED
 *   FAILED | TIMED_OUT -> RETRYING -> DISPATCHED
 *   RUNNING -> RUNNING: progress (the worker's `detail`), any number of times
 *
 * DISPATCHED may also end in FAILED, TIMED_OUT or CANCELLED: a worker can be lost or a
 * task cancelled before the worker reported RUNNING. PENDING and RETRYING may end in
 * CANCELLED (a task cancelled while it waits) or FAILED (its deadline passed while it waited).
 */
const STAGE_EDGES: ReadonlyMap<State, ReadonlySet<State>> = new Map<State, ReadonlySet<State>>([
  [State.UNSPECIFIED, new Set<State>([State.PENDING])],
  [State.PENDING, new Set<State>([State.DISPATCHED, State.CANCELLED, State.FAILED])],
  [
    State.DISPATCHED,
    new Set<State>([State.RUNNING, State.FAILED, State.TIMED_OUT, State.CANCELLED]),
  ],
  [
    State.RUNNING,
    new Set<State>([State.RUNNING, State.SUCCEEDED, State.FAILED, State.TIMED_OUT, State.CANCELLED]),
  ],
  [State.FAILED, new Set<State>([State.RETRYING])],
  [State.TIMED_OUT, new Set<State>([State.RETRYING])],
  [State.RETRYING, new Set<State>([State.DISPATCHED, State.CANCELLED, State.FAILED])],
]);

/**
 * The FSM of a task as a whole: accepted (PENDING), running once its first stage is
 * dispatched, then one terminal state.
 */
const TASK_EDGES: ReadonlyMap<State, ReadonlySet<State>> = new Map<State, ReadonlySet<State>>([
  [State.UNSPECIFIED, new Set<State>([State.PENDING])],
  [State.PENDING, new Set<State>([State.RUNNING, State.CANCELLED, State.FAILED, State.TIMED_OUT])],
  [
    State.RUNNING,
    new Set<State>([State.SUCCEEDED, State.FAILED, State.TIMED_OUT, State.CANCELLED]),
  ],
]);

/** True when a stage may go from one state to the other. */
export function isLegalStageTransition(from: State, to: State): boolean {
  return STAGE_EDGES.get(from)?.has(to) ?? false;
}

/** True when a task as a whole may go from one state to the other. */
export function isLegalTaskTransition(from: State, to: State): boolean {
  return TASK_EDGES.get(from)?.has(to) ?? false;
}

/** True for states after which a task as a whole never changes again. */
export function isTaskTerminal(s: State): boolean {
  return (
    s === State.SUCCEEDED || s === State.FAILED || s === State.TIMED_OUT || s === State.CANCELLED
  );
}

/** True for states that end one attempt at a stage (a retry may still follow FAILED or TIMED_OUT). */
export function isAttemptEnd(s: State): boolean {
  return isTaskTerminal(s);
}

/** The short upper-case name of a state ("RUNNING"), for logs and terminals. */
export function stateName(s: State): string {
  return State[s] ?? `STATE_${s}`;
}
