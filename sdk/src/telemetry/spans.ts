import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  type Attributes,
  type Context,
  context,
  createContextKey,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import { stateName } from "../fsm.ts";
import { State, type TaskError, type Transition } from "../gen/dsat/v1/task_pb.js";
import type { Assignment } from "../gen/dsat/v1/worker_pb.js";
import { contextFromHeaders, withSpan } from "./trace-context.ts";

/** Attribute names of dsat's spans and span events. */
export const ATTR = Object.freeze({
  taskId: "dsat.task.id",
  pipeline: "dsat.pipeline",
  pipelineVersion: "dsat.pipeline.version",
  stage: "dsat.stage",
  attempt: "dsat.attempt",
  workerId: "dsat.worker.id",
  routerId: "dsat.router.id",
  state: "dsat.state",
  errorCode: "dsat.error.code",
  errorMessage: "dsat.error.message",
  port: "dsat.port",
});

/** The context key under which a task's id rides along with its span (for log lines). */
export const TASK_ID_KEY = createContextKey("dsat.task.id");


/** True for the states that end an attempt (or a task). */
export function isEndState(s: State): boolean {
  return s === State.SUCCEEDED || s === State.FAILED || s === State.TIMED_OUT || s === State.CANCELLED;
}

/** What {@link addTransitionEvent} reads of a transition. */
export type TransitionEventFields = Pick<Transition, "taskId" | "stage" | "attempt" | "to" | "workerId" | "port" | "error" | "time">;

/**
 * What a span stands for, which decides what its events repeat: an attempt's span (`dispatch`,
 * `run`) carries the task, stage, attempt and worker, so its events say only what is new;
 * a task's span (`submit`, `resume`) carries the task, so its events name the stage and
 * attempt (a stage "" is the task itself) and the worker.
 */
export type EventScope = "attempt" | "task";

/**
 * Adds one FSM transition to a span as an event named after the state it goes to, at the
 * transition's own time, with the state, and what the span does not say already (see
 * {@link EventScope}): on a task's span the stage, attempt and worker; the port and the
 * error on either. (No more: events are most of a trace's bytes.)
 */
export function addTransitionEvent(span: Span, t: TransitionEventFields, scope: EventScope): void {
  // A span that is not sampled records nothing: no need to build what it would drop.
  if (!span.isRecording()) return;
  const attrs: Attributes =
    scope === "task" ? { [ATTR.stage]: t.stage, [ATTR.attempt]: t.attempt, [ATTR.state]: stateName(t.to) } : { [ATTR.state]: stateName(t.to) };
  if (scope === "task" && t.workerId) attrs[ATTR.workerId] = t.workerId;
  if (t.port) attrs[ATTR.port] = t.port;
  if (t.error) {
    attrs[ATTR.errorCode] = t.error.code;
    attrs[ATTR.errorMessage] = t.error.message;
  }
  span.addEvent(stateName(t.to), attrs, t.time ? timestampMs(t.time) : undefined);
}

/** Ends a span with the state it ended in, ERROR status for anything but SUCCEEDED. */
export function endSpan(span: Span, state: State, error: TaskError | undefined, at?: number): void {
  if (!span.isRecording()) {
    span.end(at);
    return;
  }
  span.setAttribute(ATTR.state, stateName(state));
  if (error) {
    span.setAttribute(ATTR.errorCode, error.code);
    span.setAttribute(ATTR.errorMessage, error.message);
  }
  if (state !== State.SUCCEEDED) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: error ? `${error.code}: ${error.message}` : stateName(state) });
  }
  span.end(at);
}

/**
 * The span of one attempt on a worker, `run <stage>`: a child of the router's dispatch
 * span, whose context comes in the task's `traceparent` header. The handler runs in its
 * context, so that its own spans and log lines are under it.
 */
export class AttemptSpan {
  readonly #span: Span;
  readonly #context: Context;

  private constructor(span: Span, ctx: Context) {
    this.#span = span;
    this.#context = ctx;
  }

  /** Starts the span of an assignment; undefined when tracing is off. */
  static start(tracer: Tracer | undefined, a: Assignment, workerId: string): AttemptSpan | undefined {
    const task = a.task;
    if (!tracer || !task) return undefined;
    const parent = contextFromHeaders(task.headers, ROOT_CONTEXT);
    const span = tracer.startSpan(
      `run ${a.stage}`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          [ATTR.taskId]: task.id,
          [ATTR.pipeline]: task.pipeline,
          [ATTR.stage]: a.stage,
          [ATTR.attempt]: a.attempt,
          [ATTR.workerId]: workerId,
        },
      },
      parent,
    );
    // The handler's context: the span (in place of the remote parent) and the task id.
    return new AttemptSpan(span, withSpan(span).setValue(TASK_ID_KEY, task.id));
  }

  /** Records a transition this worker made. */
  transition(t: Transition): void {
    addTransitionEvent(this.#span, t, "attempt");
  }

  /** Records the transition that ends the attempt, and ends the span. */
  end(t: Transition): void {
    addTransitionEvent(this.#span, t, "attempt");
    endSpan(this.#span, t.to, t.error);
  }

  /** Runs fn in the span's context. */
  run<T>(fn: () => T): T {
    return context.with(this.#context, fn);
  }
}

/** Trace and span ids, and the task id, of the active context; undefined outside any span. */
export function activeLogContext(): { traceId: string; spanId: string; taskId: unknown } | undefined {
  const ctx = context.active();
  const sc = trace.getSpanContext(ctx);
  if (!sc) return undefined;
  return { traceId: sc.traceId, spanId: sc.spanId, taskId: ctx.getValue(TASK_ID_KEY) };
}
