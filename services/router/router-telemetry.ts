import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  type Assignment,
  ATTR,
  addTransitionEvent,
  contextFromHeaders,
  endSpan,
  formatTraceparent,
  isEndState,
  State,
  type SubmitRequest,
  stateName,
  type Task,
  TRACEPARENT,
  TRACESTATE,
  type Transition,
  withSpan,
} from "@dsat/sdk";
import type * as grpc from "@grpc/grpc-js";
import { ROOT_CONTEXT, type Span, SpanKind, SpanStatusCode, type Tracer } from "@opentelemetry/api";
import { BATCH_SIZE_BUCKETS, type Counter, type Histogram, type MetricsRegistry, SECONDS_BUCKETS } from "../common/metrics.ts";

/** What {@link RouterTelemetry} reads from its router. */
export interface RouterTelemetryInit {
  readonly routerId: string;
  /** The tracer, or undefined when tracing is off. */
  readonly tracer: Tracer | undefined;
  /** The registry, or undefined when metrics are off. */
  readonly metrics: MetricsRegistry | undefined;
  /** Stage runs waiting for a worker, per stage. */
  queueDepths(): Iterable<readonly [string, number]>;
  /** Attempts running and slots, per stage, over the workers the router is connected to. */
  stageLoad(): Iterable<readonly [string, number, number]>;
  /** Tasks the router holds. */
  taskCount(): number;
  /** Items for StatusService not yet stored: queued or in flight, and held back. */
  statusBacklog(): { queued: number; held: number };
  /** Reports sent to StatusService so far. */
  statusReports(): number;
}

interface StageTrack {
  /** performance.now() when the stage run last entered its queue. */
  queuedAt: number;
  /** The worker's time of the RUNNING transition of the current attempt, in ms. */
  runningAt: number;
  dispatch: Span | undefined;
  dispatchAttempt: number;
}

interface TaskTrack {
  readonly pipeline: string;
  /** When the router made the task, in ms since the epoch. */
  readonly createdMs: number;
  readonly span: Span | undefined;
  readonly stages: Map<string, StageTrack>;
}

/** The hops whose batches dsat_router_batch_items counts (besides "status", the Reports). */
export type BatchHop = "client" | "to_worker" | "from_worker";

/**
 * The router's spans and metrics, driven by the transitions it reports.
 *
 * Spans: `submit <pipeline>` per task (from Submit to the task's end; its parent is the
 * trace context of the request), `dispatch <stage>` per attempt (a child of it, from
 * DISPATCHED to the attempt's end; its context goes to the worker in the assignment's
 * `traceparent`). Each transition the router makes is an event on the dispatch span of its
 * attempt, else on the task span; the worker's own transitions are events on its span.
 *
 * Metrics: transitions by stage and state, queue wait, run time, end-to-end time, queue
 * depth, in-flight and slots per stage.
 */
export class RouterTelemetry {
  readonly #routerId: string;
  readonly #tracer: Tracer | undefined;
  readonly #tasks = new Map<string, TaskTrack>();
  readonly #transitions: Counter | undefined;
  readonly #queueWait: Histogram | undefined;
  readonly #run: Histogram | undefined;
  readonly #duration: Histogram | undefined;
  readonly #reportSeconds: Histogram | undefined;
  readonly #batchItems: Histogram | undefined;

  private constructor(init: RouterTelemetryInit) {
    this.#routerId = init.routerId;
    this.#tracer = init.tracer;
    const m = init.metrics;
    if (!m) return;
    this.#transitions = m.counter(
      "dsat_transitions_total",
      'FSM transitions reported by this router, by stage ("" for the task as a whole) and the state entered.',
      ["stage", "state"],
    );
    this.#queueWait = m.histogram(
      "dsat_stage_queue_wait_seconds",
      "Time from a stage run entering its stage's queue to its dispatch to a worker.",
      ["stage"],
      SECONDS_BUCKETS,
    );
    this.#run = m.histogram(
      "dsat_stage_run_seconds",
      "Time from RUNNING to the end of an attempt, as the worker's clock says (ms resolution).",
      ["stage"],
      SECONDS_BUCKETS,
    );
    this.#duration = m.histogram(
      "dsat_task_duration_seconds",
      "Time from Submit to the end of a task, by pipeline and the state it ended in.",
      ["pipeline", "state"],
      SECONDS_BUCKETS,
    );
    this.#reportSeconds = m.histogram(
      "dsat_router_status_report_seconds",
      "Round trip of a Report to StatusService (its writes to etcd included), by result (ok, error).",
      ["result"],
      SECONDS_BUCKETS,
    );
    this.#batchItems = m.histogram(
      "dsat_router_batch_items",
      "Items per message on each hop of the router: tasks per SubmitStream request (client), assignments per message to a worker (to_worker), transitions per message from a worker (from_worker), tasks and transitions per Report (status). Few at low load, many under load.",
      ["hop"],
      BATCH_SIZE_BUCKETS,
    );
    m.gauge("dsat_router_queue_depth", "Stage runs waiting for a free worker, per stage.", ["stage"], () =>
      [...init.queueDepths()].map(([stage, n]) => [[stage], n] as const),
    );
    m.gauge("dsat_router_tasks", "Tasks this router holds (accepted, not ended).", [], () => [[[], init.taskCount()]]);
    m.gauge(
      "dsat_router_status_backlog",
      "Tasks and transitions for StatusService not stored yet: queued (or in a Report in flight), and held back to go with their task's next awaited step.",
      ["kind"],
      () => {
        const b = init.statusBacklog();
        return [
          [["queued"], b.queued],
          [["held"], b.held],
        ] as const;
      },
    );
    m.gauge("dsat_router_status_reports", "Reports sent to StatusService since the router started.", [], () => [
      [[], init.statusReports()],
    ]);
    m.gauge("dsat_router_stage_in_flight", "Attempts running on the workers of a stage that this router feeds.", ["stage"], () =>
      [...init.stageLoad()].map(([stage, inFlight]) => [[stage], inFlight] as const),
    );
    m.gauge("dsat_router_stage_capacity", "Slots (concurrency) of the connected workers of a stage.", ["stage"], () =>
      [...init.stageLoad()].map(([stage, , capacity]) => [[stage], capacity] as const),
    );
  }

  /** Undefined when both tracing and metrics are off: the router then checks one field and does nothing. */
  static create(init: RouterTelemetryInit): RouterTelemetry | undefined {
    return init.tracer || init.metrics ? new RouterTelemetry(init) : undefined;
  }

  /** A task was stored: its span starts (at the task's creation), with its first transitions. */
  accepted(task: Task, first: readonly Transition[]): void {
    const createdMs = task.createdAt ? timestampMs(task.createdAt) : Date.now();
    const span = this.#taskSpan(`submit ${task.pipeline}`, task, createdMs);
    if (span) {
      // StatusService records the task's own PENDING when it stores the task.
      addTransitionEvent(
        span,
        { taskId: task.id, stage: "", attempt: 0, to: State.PENDING, workerId: "", port: "", error: undefined, time: task.createdAt },
        "task",
      );
    }
    this.#transitions?.inc(["", stateName(State.PENDING)]);
    this.#tasks.set(task.id, { pipeline: task.pipeline, createdMs, span, stages: new Map() });
    for (const t of first) this.reported(t);
  }

  /**
   * A task taken over from a router that left: its span, `resume <pipeline>`, starts now,
   * under the trace context of the task's headers (the client's, if it gave one).
   */
  resumed(task: Task): void {
    if (this.#tasks.has(task.id)) return;
    const span = this.#taskSpan(`resume ${task.pipeline}`, task);
    const createdMs = task.createdAt ? timestampMs(task.createdAt) : Date.now();
    this.#tasks.set(task.id, { pipeline: task.pipeline, createdMs, span, stages: new Map() });
  }

  /** A task's span on this router, under the trace context of its headers; undefined when not tracing. */
  #taskSpan(name: string, task: Task, startTime?: number): Span | undefined {
    return this.#tracer?.startSpan(
      name,
      {
        kind: SpanKind.SERVER,
        ...(startTime === undefined ? {} : { startTime }),
        attributes: {
          [ATTR.taskId]: task.id,
          [ATTR.pipeline]: task.pipeline,
          [ATTR.pipelineVersion]: Number(task.pipelineVersion),
          [ATTR.routerId]: this.#routerId,
        },
      },
      contextFromHeaders(task.headers, ROOT_CONTEXT),
    );
  }

  /** A Report call to StatusService ended (see StatusReporterOptions.onReport). */
  statusReport(items: number, seconds: number, ok: boolean): void {
    this.#reportSeconds?.observe([ok ? "ok" : "error"], seconds);
    this.#batchItems?.observe(["status"], items);
  }

  /** A message with this many items went over a hop (see dsat_router_batch_items). */
  batch(hop: BatchHop, items: number): void {
    this.#batchItems?.observe([hop], items);
  }

  /** A stage run entered its stage's queue. */
  enqueued(taskId: string, stage: string): void {
    const track = this.#tasks.get(taskId);
    if (track) this.#stage(track, stage).queuedAt = performance.now();
  }

  /** A transition goes to StatusService (made by this router or forwarded from a worker). */
  reported(t: Transition): void {
    this.#transitions?.inc([t.stage, stateName(t.to)]);
    const track = this.#tasks.get(t.taskId);
    if (!track) return;
    if (t.stage === "") {
      if (track.span) addTransitionEvent(track.span, t, "task");
      if (isEndState(t.to)) this.#taskEnded(t.taskId, track, t);
      return;
    }
    const st = this.#stage(track, t.stage);
    if (t.to === State.DISPATCHED) {
      this.#queueWait?.observe([t.stage], (performance.now() - st.queuedAt) / 1000);
      st.runningAt = 0;
      // A task whose span does not record (not sampled) gets no dispatch spans: under any of
      // OpenTelemetry's samplers they would not record either, and the workers continue the
      // task span's (unsampled) context instead, which `inject` gives them.
      if (track.span?.isRecording() && this.#tracer) {
        st.dispatch = this.#tracer.startSpan(
          `dispatch ${t.stage}`,
          {
            kind: SpanKind.PRODUCER,
            startTime: t.time ? timestampMs(t.time) : undefined,
            attributes: {
              [ATTR.taskId]: t.taskId,
              [ATTR.pipeline]: track.pipeline,
              [ATTR.stage]: t.stage,
              [ATTR.attempt]: t.attempt,
              [ATTR.workerId]: t.workerId,
              [ATTR.routerId]: this.#routerId,
            },
          },
          withSpan(track.span),
        );
        st.dispatchAttempt = t.attempt;
        addTransitionEvent(st.dispatch, t, "attempt");
      }
      return;
    }
    const byWorker = t.memberId !== this.#routerId;
    // Progress (RUNNING -> RUNNING) does not restart the attempt's run time.
    if (t.to === State.RUNNING && t.from !== State.RUNNING && t.time) st.runningAt = timestampMs(t.time);
    const inDispatch = st.dispatch !== undefined && st.dispatchAttempt === t.attempt;
    // The worker records its own transitions on its span; the router records its own here.
    if (!byWorker) {
      const span = inDispatch ? st.dispatch : track.span;
      if (span) addTransitionEvent(span, t, inDispatch ? "attempt" : "task");
    }
    if (!isEndState(t.to)) return;
    if (byWorker && st.runningAt > 0 && t.time) this.#run?.observe([t.stage], (timestampMs(t.time) - st.runningAt) / 1000);
    st.runningAt = 0;
    if (inDispatch && st.dispatch) {
      endSpan(st.dispatch, t.to, t.error);
      st.dispatch = undefined;
    }
  }

  /**
   * Puts the trace context of the attempt's dispatch span (of the task's span, when the task
   * is not sampled) in the assignment's task headers.
   */
  inject(a: Assignment): void {
    const task = a.task;
    const track = task ? this.#tasks.get(task.id) : undefined;
    const span = track?.stages.get(a.stage)?.dispatch ?? track?.span;
    if (!task || !span) return;
    const sc = span.spanContext();
    const headers: Record<string, string> = { ...task.headers, [TRACEPARENT]: formatTraceparent(sc) };
    const state = sc.traceState?.serialize();
    if (state) headers[TRACESTATE] = state;
    else delete headers[TRACESTATE];
    task.headers = headers;
  }

  /** A task went to another router: its spans here end, marked so. */
  dropped(taskId: string, reason: string): void {
    const track = this.#tasks.get(taskId);
    if (!track) return;
    this.#tasks.delete(taskId);
    for (const st of track.stages.values()) this.#abandon(st.dispatch, reason);
    this.#abandon(track.span, reason);
  }

  /** The router closes with tasks in flight: their spans end, marked so. */
  close(): void {
    const reason = `router ${this.#routerId} closed while the task was in flight`;
    for (const track of this.#tasks.values()) {
      for (const st of track.stages.values()) this.#abandon(st.dispatch, reason);
      this.#abandon(track.span, reason);
    }
    this.#tasks.clear();
  }

  #stage(track: TaskTrack, name: string): StageTrack {
    let st = track.stages.get(name);
    if (!st) {
      st = { queuedAt: performance.now(), runningAt: 0, dispatch: undefined, dispatchAttempt: 0 };
      track.stages.set(name, st);
    }
    return st;
  }

  #taskEnded(taskId: string, track: TaskTrack, t: Transition): void {
    this.#tasks.delete(taskId);
    this.#duration?.observe([track.pipeline, stateName(t.to)], (performance.timeOrigin + performance.now() - track.createdMs) / 1000);
    for (const st of track.stages.values()) {
      if (st.dispatch) endSpan(st.dispatch, t.to, t.error);
    }
    if (track.span) endSpan(track.span, t.to, t.error);
  }

  #abandon(span: Span | undefined, reason: string): void {
    if (!span) return;
    span.setStatus({ code: SpanStatusCode.ERROR, message: reason });
    span.end();
  }
}

/**
 * A unary Submit whose task headers carry no trace context takes it from the call's gRPC
 * metadata (`traceparent`, `tracestate`), so that a client that propagates only there is
 * still the task's parent.
 */
export function adoptTraceMetadata(req: SubmitRequest, metadata: grpc.Metadata): SubmitRequest {
  if (req.headers[TRACEPARENT]) return req;
  const parent = metadata.get(TRACEPARENT)[0];
  if (typeof parent !== "string" || parent === "") return req;
  const state = metadata.get(TRACESTATE)[0];
  req.headers = { ...req.headers, [TRACEPARENT]: parent, ...(typeof state === "string" && state ? { [TRACESTATE]: state } : {}) };
  return req;
}
