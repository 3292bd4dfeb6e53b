import { fromBinary } from "@bufbuild/protobuf";
import { type Attributes, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { TraceState } from "@opentelemetry/core";
import { ProtobufTraceSerializer } from "@opentelemetry/otlp-transformer";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor, TracerProvider } from "@opentelemetry/sdk-trace";
import test from "ava";
import { ExportTraceServiceRequestSchema } from "../gen/opentelemetry/proto/collector/trace/v1/trace_service_pb.js";
import { serializeSpans } from "./otlp-serializer.ts";

const TRACE_ID = "0af7651916cd43dd8448eb211c80319c";

/** Finished spans from a real tracer provider, one per resource given. */
async function spansOf(resources: Attributes[], make: (tracers: ReturnType<TracerProvider["getTracer"]>[]) => void): Promise<ReadableSpan[]> {
  const exporter = new InMemorySpanExporter();
  const providers = resources.map(
    (attrs) => new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })], resource: resourceFromAttributes(attrs) }),
  );
  make(providers.flatMap((p) => [p.getTracer("dsat", "1.2.3"), p.getTracer("other")]));
  await Promise.all(providers.map((p) => p.forceFlush()));
  return exporter.getFinishedSpans();
}

function sameAsOpenTelemetry(t: import("ava").ExecutionContext, spans: ReadableSpan[]): Uint8Array {
  const ours = serializeSpans(spans);
  const theirs = ProtobufTraceSerializer.serializeRequest(spans);
  t.truthy(theirs);
  t.true(Buffer.from(ours).equals(Buffer.from(theirs as Uint8Array)), "the same bytes as @opentelemetry/otlp-transformer");
  return ours;
}

test("spans of every shape encode to the same bytes as OpenTelemetry's serializer", async (t) => {
  const long = "ünïcødé ✓ ".repeat(40); // > 127 bytes: lengths of two bytes
  const spans = await spansOf([{ "service.name": "dsat-test", "process.pid": 4242 }, { "service.name": "other" }], (tracers) => {
    const parent = trace.setSpanContext(ROOT_CONTEXT, {
      traceId: TRACE_ID,
      spanId: "b7ad6b7169203331",
      traceFlags: 1,
      isRemote: true,
      traceState: new TraceState("vendor=value,other=x"),
    });
    tracers.forEach((tracer, i) => {
      const root = tracer.startSpan(`root ${i}`);
      const span = tracer.startSpan(
        "run stage",
        {
          kind: SpanKind.CONSUMER,
          startTime: [1_700_000_000, 5],
          attributes: {
            "dsat.task.id": `task-${i}`,
            "dsat.attempt": 3,
            negative: -5,
            big: 2 ** 60,
            float: 1.25,
            nan: Number.NaN,
            yes: true,
            no: false,
            empty: "",
            long,
            list: ["a", "b", long],
            numbers: [1, 2.5, -3],
            flags: [true, false],
          },
          links: [
            { context: { traceId: TRACE_ID, spanId: "00f067aa0ba902b7", traceFlags: 0, isRemote: true }, attributes: { why: "fan-in" } },
            {
              context: { traceId: TRACE_ID, spanId: "00f067aa0ba902b8", traceFlags: 1, traceState: new TraceState("a=b") },
            },
          ],
        },
        i % 2 === 0 ? parent : trace.setSpan(ROOT_CONTEXT, root),
      );
      span.addEvent("RUNNING", { "dsat.state": "RUNNING", "dsat.attempt": 1 });
      span.addEvent("no attributes");
      span.addEvent(long, { detail: long }, [1_700_000_000, 123_456_789]);
      span.setStatus({ code: SpanStatusCode.ERROR, message: `boom: ${long}` });
      span.end([1_700_000_001, 999_999_999]);
      root.setStatus({ code: SpanStatusCode.OK });
      root.end();
    });
    // Many events: a span longer than the first buffer, and lengths of three bytes.
    const big = tracers[0]?.startSpan("big", { kind: SpanKind.INTERNAL });
    for (let i = 0; i < 400; i++) big?.addEvent(`event ${i}`, { i, text: long });
    big?.end();
  });
  t.true(spans.length >= 9);
  const bytes = sameAsOpenTelemetry(t, spans);
  // And it is a valid ExportTraceServiceRequest for an independent decoder.
  const decoded = fromBinary(ExportTraceServiceRequestSchema, bytes);
  t.is(decoded.resourceSpans.length, 2);
  const all = decoded.resourceSpans.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans));
  t.is(all.length, spans.length);
  const run = all.find((s) => s.name === "run stage" && s.traceState !== "");
  t.is(Buffer.from(run?.traceId ?? []).toString("hex"), TRACE_ID);
  t.is(Buffer.from(run?.parentSpanId ?? []).toString("hex"), "b7ad6b7169203331");
  t.is(run?.traceState, "vendor=value,other=x");
  t.is(run?.status?.message, `boom: ${long}`);
  t.is(run?.startTimeUnixNano, 1_700_000_000_000_000_005n);
  t.is(run?.endTimeUnixNano, 1_700_000_001_999_999_999n);
  t.is(run?.events[2]?.timeUnixNano, 1_700_000_000_123_456_789n);
  // The SDK keeps 128 events (its default limit) and counts the others as dropped.
  const big = all.find((s) => s.name === "big");
  t.is(big?.events.length, 128);
  t.is(big?.droppedEventsCount, 272);
});

test("nothing to export is an empty request, as OpenTelemetry's", async (t) => {
  t.is(sameAsOpenTelemetry(t, []).length, 0);
});

test("a large batch of dsat-like spans is the same bytes", async (t) => {
  const spans = await spansOf([{ "service.name": "dsat-worker" }], ([tracer]) => {
    for (let i = 0; i < 600; i++) {
      const parent = trace.setSpanContext(ROOT_CONTEXT, { traceId: TRACE_ID, spanId: "b7ad6b7169203331", traceFlags: 1, isRemote: true });
      const s = tracer?.startSpan(
        "run s1",
        { kind: SpanKind.CONSUMER, attributes: { "dsat.task.id": `t-${i}`, "dsat.stage": "s1", "dsat.attempt": 1 } },
        parent,
      );
      s?.addEvent("RUNNING", { "dsat.task.id": `t-${i}`, "dsat.state": "RUNNING" });
      s?.addEvent("SUCCEEDED", { "dsat.task.id": `t-${i}`, "dsat.state": "SUCCEEDED" });
      s?.end();
    }
  });
  t.is(spans.length, 600);
  sameAsOpenTelemetry(t, spans);
});
