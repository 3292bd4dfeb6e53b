import type { Pipeline, State, Task, TaskError } from "@dsat/sdk";
import type { WorkerLink } from "./worker-link.ts";

/** One stage of one task, as the router drives it. */
export interface StageRun {
  /**
   * The task it belongs to. A field rather than a WeakMap from stage to task: V8 keeps a
   * WeakMap's short-lived keys and values through every young-generation collection until
   * the next full one, so each queued stage took its whole task into the old generation.
   */
  readonly run: TaskRun;
  readonly name: string;
  state: State;
  attempt: number;
  /** Redeliveries after a lost worker, which do not count against the retry policy. */
  lost: number;
  /** Attempts that failed, counted against the retry policy. */
  failures: number;
  input: Uint8Array;
  link: WorkerLink | undefined;
  lastError: TaskError | undefined;
  retryTimer: NodeJS.Timeout | undefined;
  /** Armed while it waits at a stage that no worker serves (stageWaitMs). */
  waitTimer?: NodeJS.Timeout | undefined;
}

/** One task in flight at this router. */
export interface TaskRun {
  readonly task: Task;
  readonly pipeline: Pipeline;
  /** State of the task as a whole. */
  state: State;
  readonly stages: Map<string, StageRun>;
  /** Stages started and not ended. */
  active: number;
  /** Output of the leaf stage that ended last. */
  output: Uint8Array;
  /** What each stage that succeeded put out, and on which port. */
  readonly outputs: Map<string, { output: Uint8Array; port: string }>;
  /** Join stages (several parents) waiting for their parents. */
  readonly joins: Set<string>;
  deadlineTimer: NodeJS.Timeout | undefined;
  /**
   * While a task submitted here is not accepted yet: resolves once its create is stored,
   * true when the task is new (false: a task with its id existed); a task may start before
   * (see RouterServer.submit). Undefined once it is accepted, and for a task taken over from
   * another router.
   */
  accepted?: Promise<boolean>;
  /** The task's bytes without payload and headers, shared by its assignments (assignment-encoding.ts); made at the first dispatch. */
  taskBase?: Uint8Array;
}
