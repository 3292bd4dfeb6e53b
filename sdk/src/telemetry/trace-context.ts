import {
  type Context,
  createContextKey,
  type Span,
  context,
  createTraceState,
  isSpanContextValid,
  ROOT_CONTEXT,
  type SpanContext,
  trace,
} from "@opentelemetry/api";

/** The W3C trace context header that names the parent span. */
export const TRACEPARENT = "traceparent";
/** The W3C trace context header with vendor-specific trace state. */
export const TRACESTATE = "tracestate";

const TRACEPARENT_RE = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/**
 * The span context that a W3C `traceparent` (and `tracestate`) names, or undefined when
 * the header is absent or malformed. Written out here rather than taken from a propagator
 * so that dsat's wire format stays W3C whatever OTEL_PROPAGATORS says.
 */
export function parseTraceparent(traceparent: string | undefined, tracestate?: string): SpanContext | undefined {
  if (!traceparent) return undefined;
  const m = TRACEPARENT_RE.exec(traceparent.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags, rest] = m as unknown as [string, string, string, string, string, string | undefined];
  // Version ff is invalid; version 00 has exactly four fields; later versions may add more.
  if (version === "ff" || (version === "00" && rest !== undefined)) return undefined;
  const sc: SpanContext = {
    traceId,
    spanId,
    traceFlags: Number.parseInt(flags, 16) & 0xff,
    isRemote: true,
    traceState: tracestate ? createTraceState(tracestate) : undefined,
  };
  return isSpanContextValid(sc) ? sc : undefined;
}

/** The W3C `traceparent` of a span context (version 00). */
export function formatTraceparent(sc: SpanContext): string {
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

/**
 * Headers with the trace context of `ctx` (default: the active context) added: `headers`
 * itself when it already has a traceparent or when no valid span is in the context.
 */
export function withTraceContext(
  headers: Readonly<Record<string, string>>,
  ctx: Context = context.active(),
): Record<string, string> {
  if (headers[TRACEPARENT]) return headers as Record<string, string>;
  const sc = trace.getSpanContext(ctx);
  if (!sc || !isSpanContextValid(sc)) return headers as Record<string, string>;
  const out: Record<string, string> = { ...headers, [TRACEPARENT]: formatTraceparent(sc) };
  const state = sc.traceState?.serialize();
  if (state) out[TRACESTATE] = state;
  return out;
}

/** A context whose (remote) parent span is the one the headers name; `base` when they name none. */
export function contextFromHeaders(headers: Readonly<Record<string, string>>, base: Context = ROOT_CONTEXT): Context {
  const sc = parseTraceparent(headers[TRACEPARENT], headers[TRACESTATE]);
  return sc ? withSpan(trace.wrapSpanContext(sc), base) : base;
}

/** `base` with `span` as its span: what `trace.setSpan(base, span)` gives, as a {@link ChainContext}. */
export function withSpan(span: Span, base: Context = ROOT_CONTEXT): Context {
  return new ChainContext(base, SPAN_KEY, span);
}

/** The key under which OpenTelemetry's API keeps a context's span (`trace.setSpan`): a registered symbol. */
const SPAN_KEY = createContextKey("OpenTelemetry Context Key SPAN");

/**
 * A context of one more value than its parent: what `setValue` makes, without the copy of
 * the parent's values into a new Map that OpenTelemetry's BaseContext makes each time.
 * dsat makes a few per task and per attempt (the parent a trace context names, a span's, a
 * task id's); as Maps they were a visible part of what tracing cost a worker, sampled or
 * not.
 */
export class ChainContext implements Context {
  readonly #parent: Context;
  readonly #key: symbol;
  readonly #value: unknown;

  constructor(parent: Context, key: symbol, value: unknown) {
    this.#parent = parent;
    this.#key = key;
    this.#value = value;
  }

  getValue(key: symbol): unknown {
    return key === this.#key ? this.#value : this.#parent.getValue(key);
  }

  setValue(key: symbol, value: unknown): Context {
    return new ChainContext(this, key, value);
  }

  deleteValue(key: symbol): Context {
    return new ChainContext(this, key, undefined);
  }
}

/** Only the trace context headers of a header map (for gRPC metadata). */
export function traceHeaders(headers: Readonly<Record<string, string>>): Record<string, string> | undefined {
  const parent = headers[TRACEPARENT];
  if (!parent) return undefined;
  const state = headers[TRACESTATE];
  return state ? { [TRACEPARENT]: parent, [TRACESTATE]: state } : { [TRACEPARENT]: parent };
}
