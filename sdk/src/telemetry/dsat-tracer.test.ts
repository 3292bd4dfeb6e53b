import { context, ROOT_CONTEXT, SamplingDecision, type Span, SpanKind, SpanStatusCode, TraceFlags, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { suppressTracing, TraceState } from "@opentelemetry/core";
import { ProtobufTraceSerializer } from "@opentelemetry/otlp-transformer";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  InMemorySpanExporter,
  ParentBasedSampler,
  type ReadableSpan,
  type Sampler,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace";
import test from "ava";
import { DsatSpan, DsatTracer, type DsatSpanLimits, msToHrTime } from "./dsat-tracer.ts";
import { serializeSpans } from "./otlp-serializer.ts";

const LIMITS: DsatSpanLimits = {
  attributeCountLimit: 128,
  attributeValueLengthLimit: Number.POSITIVE_INFINITY,
  eventCountLimit: 128,
  linkCountLimit: 128,
  attributePerEventCountLimit: 128,
  attributePerLinkCountLimit: 128,
};
const PARENT = { traceId: "0af7651916cd43dd8448eb211c80319c", spanId: "b7ad6b7169203331", isRemote: true };

function setup(opts: { sampler?: Sampler; limits?: Partial<DsatSpanLimits> } = {}) {
  const exporter = new InMemorySpanExporter();
  const tracer = new DsatTracer({
    sampler: opts.sampler ?? new ParentBasedSampler({ root: new AlwaysOnSampler() }),
    processor: new SimpleSpanProcessor({ exporter }),
    resource: resourceFromAttributes({ "service.name": "dsat-test" }),
    scope: { name: "dsat", version: "1.2.3" },
    limits: { ...LIMITS, ...opts.limits },
  });
  return { tracer, finished: () => exporter.getFinishedSpans() };
}

const remote = (sampled: boolean, state?: string) =>
  trace.setSpanContext(ROOT_CONTEXT, {
    ...PARENT,
    traceFlags: sampled ? TraceFlags.SAMPLED : TraceFlags.NONE,
    ...(state ? { traceState: new TraceState(state) } : {}),
  });

test("a root span: new ids, sampled, its fields as a ReadableSpan, exported once when it ends", (t) => {
  const { tracer, finished } = setup();
  const before = Date.now();
  const span = tracer.startSpan("submit p", { kind: SpanKind.SERVER, attributes: { "dsat.task.id": "t1", n: 3, ok: true } }, ROOT_CONTEXT);
  t.true(span instanceof DsatSpan);
  t.true(span.isRecording());
  const sc = span.spanContext();
  t.regex(sc.traceId, /^[0-9a-f]{32}$/);
  t.regex(sc.spanId, /^[0-9a-f]{16}$/);
  t.is(sc.traceFlags, TraceFlags.SAMPLED);
  t.deepEqual(finished(), []);
  span.end();
  span.end(); // a second end is ignored
  const [r] = finished() as [ReadableSpan];
  t.is(finished().length, 1);
  t.is(r.name, "submit p");
  t.is(r.kind, SpanKind.SERVER);
  t.is(r.parentSpanContext, undefined);
  t.deepEqual(r.attributes, { "dsat.task.id": "t1", n: 3, ok: true });
  t.true(r.ended);
  t.false(span.isRecording());
  const startMs = r.startTime[0] * 1000 + r.startTime[1] / 1e6;
  t.true(startMs >= before && startMs <= Date.now(), "starts now");
  t.true(r.duration[0] >= 0 && r.duration[1] >= 0);
  t.is(r.resource.attributes["service.name"], "dsat-test");
  t.deepEqual(r.instrumentationScope, { name: "dsat", version: "1.2.3" });
  t.deepEqual(r.status, { code: SpanStatusCode.UNSET });
});

test("a child of a remote parent: the parent's trace and trace state; an unsampled parent gives a non-recording span that still propagates", (t) => {
  const { tracer, finished } = setup();
  const child = tracer.startSpan("run s", {}, remote(true, "vendor=x"));
  t.is(child.spanContext().traceId, PARENT.traceId);
  t.is(child.spanContext().traceState?.get("vendor"), "x");
  t.is((child as DsatSpan).parentSpanContext?.spanId, PARENT.spanId);
  const quiet = tracer.startSpan("run s", {}, remote(false));
  t.false(quiet.isRecording());
  t.is(quiet.spanContext().traceId, PARENT.traceId);
  t.is(quiet.spanContext().traceFlags, TraceFlags.NONE);
  t.not(quiet.spanContext().spanId, PARENT.spanId);
  quiet.end();
  child.end();
  t.is(finished().length, 1);
  // root: true ignores the parent.
  const root = tracer.startSpan("x", { root: true }, remote(true));
  t.not(root.spanContext().traceId, PARENT.traceId);
});

test("samplers and suppression decide as in the SDK", (t) => {
  const off = setup({ sampler: new AlwaysOffSampler() });
  t.false(off.tracer.startSpan("a", {}, ROOT_CONTEXT).isRecording());
  const recordOnly: Sampler = { shouldSample: () => ({ decision: SamplingDecision.RECORD, attributes: { "sampler.attr": 1 } }), toString: () => "r" };
  const rec = setup({ sampler: recordOnly });
  const span = rec.tracer.startSpan("b", { attributes: { a: "1" } }, ROOT_CONTEXT) as DsatSpan;
  t.true(span.isRecording());
  t.is(span.spanContext().traceFlags, TraceFlags.NONE, "recorded, not sampled");
  t.deepEqual(span.attributes, { a: "1", "sampler.attr": 1 });
  const suppressed = setup().tracer.startSpan("c", {}, suppressTracing(ROOT_CONTEXT));
  t.false(trace.isSpanContextValid(suppressed.spanContext()));
});

test("events: times given every way, the oldest dropped past the limit; attributes checked as the SDK checks them", (t) => {
  const { tracer, finished } = setup({ limits: { eventCountLimit: 2, attributeCountLimit: 3, attributeValueLengthLimit: 5 } });
  const span = tracer.startSpan("s", { startTime: new Date(1_700_000_000_000) }, ROOT_CONTEXT) as DsatSpan;
  span.addEvent("first", 1_700_000_000_001.5);
  span.addEvent("second", { "dsat.state": "RUNNING" }, new Date(1_700_000_000_002));
  span.addEvent("third", { list: ["a", "b"], bad: { no: 1 } as never, skipped: undefined }, [1_700_000_000, 3_000_000]);
  span.setAttribute("long", "abcdefgh");
  span.setAttribute("n", 1);
  span.setAttribute("", "empty key");
  span.setAttribute("over", 2);
  span.setAttribute("n", 2); // an existing key is updated, not counted again
  span.setAttributes({ more: "x" });
  span.end(1_700_000_000_010);
  const [r] = finished() as [ReadableSpan];
  t.deepEqual(
    r.events.map((e) => [e.name, e.time, e.attributes]),
    [
      ["second", [1_700_000_000, 2_000_000], { "dsat.state": "RUNNI" }], // values cut at the length limit, as on attributes
      ["third", [1_700_000_000, 3_000_000], { list: ["a", "b"] }],
    ],
  );
  t.is(r.droppedEventsCount, 1);
  t.deepEqual(r.attributes, { long: "abcde", n: 2, over: 2 });
  t.is(r.droppedAttributesCount, 1);
  t.deepEqual(r.startTime, [1_700_000_000, 0]);
  t.deepEqual(r.endTime, [1_700_000_000, 10_000_000]);
  t.deepEqual(r.duration, [0, 10_000_000]);
});

test("status, exceptions, links, a name change, and an end before the start", (t) => {
  const { tracer, finished } = setup();
  const span = tracer.startSpan("s", { startTime: 1_700_000_000_500, links: [{ context: { ...PARENT, traceFlags: 1 }, attributes: { k: "v" } }] }, ROOT_CONTEXT);
  span.setStatus({ code: SpanStatusCode.ERROR, message: "boom" });
  span.recordException(new TypeError("bad input"));
  span.addLink({ context: { ...PARENT, spanId: "00f067aa0ba902b7", traceFlags: 1 } });
  span.updateName("renamed");
  span.end(1_700_000_000_000);
  const [r] = finished() as [ReadableSpan];
  t.is(r.name, "renamed");
  t.deepEqual(r.status, { code: SpanStatusCode.ERROR, message: "boom" });
  t.is(r.events[0]?.name, "exception");
  t.is(r.events[0]?.attributes?.["exception.type"], "TypeError");
  t.is(r.events[0]?.attributes?.["exception.message"], "bad input");
  t.is(r.links.length, 2);
  t.deepEqual(r.links[0]?.attributes, { k: "v" });
  t.deepEqual(r.endTime, r.startTime, "an end before the start is the start");
  t.deepEqual(r.duration, [0, 0]);
  const ok = tracer.startSpan("ok", {}, ROOT_CONTEXT);
  ok.setStatus({ code: SpanStatusCode.OK });
  ok.setStatus({ code: SpanStatusCode.ERROR, message: "ignored after OK" });
  ok.end();
  t.deepEqual(finished()[1]?.status, { code: SpanStatusCode.OK });
});

test("startActiveSpan runs fn with the span active, and returns what fn returns", (t) => {
  const manager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(manager);
  t.teardown(() => {
    context.disable();
    manager.disable();
  });
  const { tracer } = setup();
  const got = tracer.startActiveSpan("active", (span: Span) => {
    t.is(trace.getActiveSpan(), span);
    span.end();
    return 42;
  });
  t.is(got, 42);
  const withCtx = tracer.startActiveSpan("child", {}, remote(true), (span: Span) => {
    span.end();
    return span.spanContext().traceId;
  });
  t.is(withCtx, PARENT.traceId);
  t.is(trace.getSpan(context.active()), undefined);
});

test("dsat's spans encode to the same OTLP bytes as OpenTelemetry's serializer makes of them", (t) => {
  const { tracer, finished } = setup();
  for (let i = 0; i < 20; i++) {
    // Times with sub-millisecond parts, where milliseconds and [seconds, nanoseconds] could disagree.
    const start = 1_700_000_000_000 + i * 1.337;
    const span = tracer.startSpan(`span ${i}`, { kind: i % 5, startTime: start, attributes: { "dsat.attempt": i, "dsat.stage": "s" } }, remote(true, "a=b"));
    span.addEvent("RUNNING", { "dsat.state": "RUNNING" }, start + 0.000_123 * i);
    span.addEvent("SUCCEEDED", { "dsat.state": "SUCCEEDED", "dsat.port": "" }, start + 0.5 + i);
    if (i % 3 === 0) span.setStatus({ code: SpanStatusCode.ERROR, message: "failed" });
    span.end(start + 1 + i * 0.999_999);
  }
  const spans = finished();
  const ours = serializeSpans(spans);
  const theirs = ProtobufTraceSerializer.serializeRequest(spans) as Uint8Array;
  t.true(Buffer.from(ours).equals(Buffer.from(theirs)));
});

test("msToHrTime carries rounding into the seconds", (t) => {
  t.deepEqual(msToHrTime(1_700_000_000_000), [1_700_000_000, 0]);
  t.deepEqual(msToHrTime(1999.9999996), [2, 0]);
  t.deepEqual(msToHrTime(1234.5), [1, 234_500_000]);
});

test("a processor's onEnding sees the end time with the span still open; onEnd sees it ended", (t) => {
  const seen: string[] = [];
  const tracer = new DsatTracer({
    sampler: new AlwaysOnSampler(),
    processor: {
      onStart: () => seen.push("start"),
      onEnding: (s) => {
        seen.push(`ending ended=${s.ended} end=${s.endTime.join(",")}`);
        (s as unknown as Span).setAttribute("added.on.ending", true);
      },
      onEnd: (s) => seen.push(`end ended=${s.ended} attr=${String(s.attributes["added.on.ending"])}`),
      forceFlush: async () => {},
      shutdown: async () => {},
    },
    resource: resourceFromAttributes({}),
    scope: { name: "dsat" },
    limits: LIMITS,
  });
  tracer.startSpan("s", { startTime: 1_700_000_000_000 }, ROOT_CONTEXT).end(1_700_000_000_250);
  t.deepEqual(seen, ["start", "ending ended=false end=1700000000,250000000", "end ended=true attr=true"]);
});
