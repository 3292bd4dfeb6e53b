import test from "ava";
import { createContextKey, ROOT_CONTEXT, type SpanContext, TraceFlags, trace } from "@opentelemetry/api";
import { contextFromHeaders, formatTraceparent, parseTraceparent, traceHeaders, withSpan, withTraceContext } from "./trace-context.ts";

const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN = "00f067aa0ba902b7";

test("parses a W3C traceparent with its tracestate, and formats it back", (t) => {
  const sc = parseTraceparent(`00-${TRACE}-${SPAN}-01`, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
  t.is(sc?.traceId, TRACE);
  t.is(sc?.spanId, SPAN);
  t.is(sc?.traceFlags, TraceFlags.SAMPLED);
  t.true(sc?.isRemote);
  t.is(sc?.traceState?.get("congo"), "t61rcWkgMzE");
  t.is(formatTraceparent(sc as SpanContext), `00-${TRACE}-${SPAN}-01`);
  t.is(formatTraceparent({ traceId: TRACE, spanId: SPAN, traceFlags: 0 }), `00-${TRACE}-${SPAN}-00`);
});

test("refuses malformed and invalid traceparents", (t) => {
  for (const bad of [
    undefined,
    "",
    "garbage",
    `ff-${TRACE}-${SPAN}-01`, // version ff is invalid
    `00-${TRACE}-${SPAN}-01-extra`, // version 00 has four fields
    `00-${"0".repeat(32)}-${SPAN}-01`, // all-zero trace id
    `00-${TRACE}-${"0".repeat(16)}-01`, // all-zero span id
    `00-${TRACE.toUpperCase()}-${SPAN}-01`, // hex is lowercase
    `00-${TRACE.slice(1)}-${SPAN}-01`,
  ]) {
    t.is(parseTraceparent(bad), undefined, String(bad));
  }
  // A later version may carry more fields.
  t.is(parseTraceparent(`01-${TRACE}-${SPAN}-01-more`)?.traceId, TRACE);
});

test("withTraceContext adds the context's span, keeps a traceparent already there, and leaves headers alone without a span", (t) => {
  const ctx = trace.setSpanContext(ROOT_CONTEXT, { traceId: TRACE, spanId: SPAN, traceFlags: 1 });
  t.deepEqual(withTraceContext({ a: "1" }, ctx), { a: "1", traceparent: `00-${TRACE}-${SPAN}-01` });
  const own = { traceparent: `00-${TRACE}-${"1".repeat(16)}-01` };
  t.is(withTraceContext(own, ctx), own);
  const none = { a: "1" };
  t.is(withTraceContext(none, ROOT_CONTEXT), none);
});

test("contextFromHeaders gives the remote parent; traceHeaders picks only the trace context", (t) => {
  const ctx = contextFromHeaders({ traceparent: `00-${TRACE}-${SPAN}-01`, tracestate: "k=v", other: "x" });
  t.is(trace.getSpanContext(ctx)?.spanId, SPAN);
  t.is(contextFromHeaders({ traceparent: "bad" }), ROOT_CONTEXT);
  t.deepEqual(traceHeaders({ traceparent: "p", tracestate: "s", other: "x" }), { traceparent: "p", tracestate: "s" });
  t.deepEqual(traceHeaders({ traceparent: "p" }), { traceparent: "p" });
  t.is(traceHeaders({ other: "x" }), undefined);
});

test("ChainContext and withSpan: what OpenTelemetry's API reads of a context, without a Map per value", (t) => {
  const span = trace.wrapSpanContext({ traceId: TRACE, spanId: SPAN, traceFlags: 1 });
  const key = createContextKey("test key");
  const ctx = withSpan(span).setValue(key, 42);
  t.is(trace.getSpan(ctx), span, "the API's trace.getSpan finds it");
  t.is(trace.getSpanContext(ctx)?.spanId, SPAN);
  t.is(ctx.getValue(key), 42);
  t.is(ctx.deleteValue(key).getValue(key), undefined);
  t.is(trace.getSpan(ctx.deleteValue(key)), span, "the other values stay");
  const other = trace.wrapSpanContext({ traceId: TRACE, spanId: "1".repeat(16), traceFlags: 1 });
  t.is(trace.getSpan(trace.setSpan(ctx, other)), other, "a span set over it wins");
  t.is(trace.getSpan(ROOT_CONTEXT), undefined);
  t.is(trace.getSpan(contextFromHeaders({ traceparent: `00-${TRACE}-${SPAN}-01` }))?.spanContext().isRemote, true);
});
