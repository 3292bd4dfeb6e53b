import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type Assignment, AssignmentSchema, parseTraceparent, State, TaskSchema, TransitionSchema } from "@dsat/sdk";
import { AlwaysOffSampler, AlwaysOnSampler, InMemorySpanExporter, type Sampler, SimpleSpanProcessor, TracerProvider } from "@opentelemetry/sdk-trace";
import test from "ava";
import { RouterTelemetry } from "./router-telemetry.ts";

/** A router's telemetry with a tracer of this sampler, a task accepted and its stage "s" dispatched. */
function dispatchOne(sampler: Sampler) {
  const exporter = new InMemorySpanExporter();
  const tracer = new TracerProvider({ sampler, spanProcessors: [new SimpleSpanProcessor({ exporter })] }).getTracer("dsat");
  const telemetry = RouterTelemetry.create({
    routerId: "r1",
    tracer,
    metrics: undefined,
    queueDepths: () => [],
    stageLoad: () => [],
    taskCount: () => 0,
    statusBacklog: () => ({ queued: 0, held: 0 }),
    statusReports: () => 0,
  }) as RouterTelemetry;
  const task = create(TaskSchema, { id: "t1", pipeline: "p", createdAt: timestampNow() });
  telemetry.accepted(task, []);
  telemetry.reported(
    create(TransitionSchema, { taskId: "t1", stage: "s", attempt: 1, from: State.PENDING, to: State.DISPATCHED, memberId: "r1", workerId: "w1", time: timestampNow() }),
  );
  const a: Assignment = create(AssignmentSchema, { task: { ...task }, stage: "s", attempt: 1 });
  telemetry.inject(a);
  return { a, spans: () => exporter.getFinishedSpans(), telemetry };
}

test("a sampled task: the worker gets the context of the attempt's dispatch span, sampled", (t) => {
  const { a, telemetry, spans } = dispatchOne(new AlwaysOnSampler());
  const sc = parseTraceparent(a.task?.headers.traceparent);
  t.truthy(sc);
  t.is(sc?.traceFlags, 1);
  telemetry.close();
  const dispatch = spans().find((s) => s.name === "dispatch s");
  t.is(dispatch?.spanContext().spanId, sc?.spanId);
});

test("an unsampled task: no dispatch span, and the worker gets the task span's context, not sampled, so that it does not start a trace of its own", (t) => {
  const { a, telemetry, spans } = dispatchOne(new AlwaysOffSampler());
  const sc = parseTraceparent(a.task?.headers.traceparent);
  t.truthy(sc, "a traceparent even so");
  t.is(sc?.traceFlags, 0);
  telemetry.close();
  t.deepEqual(spans(), []);
});
