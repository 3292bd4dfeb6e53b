import {
  type Attributes,
  type AttributeValue,
  type Context,
  context,
  diag,
  type Exception,
  type HrTime,
  INVALID_SPAN_CONTEXT,
  type Link,
  SamplingDecision,
  type Span,
  type SpanContext,
  SpanKind,
  type SpanOptions,
  type SpanStatus,
  SpanStatusCode,
  type TimeInput,
  TraceFlags,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import {
  AddAttributeDecision,
  cleanAttributes,
  cleanSimpleAttributes,
  type InstrumentationScope,
  isTimeInput,
  isTimeInputHrTime,
  isTracingSuppressed,
  maybeAddAttribute,
} from "@opentelemetry/core";
import type { Resource } from "@opentelemetry/resources";
import type { ReadableSpan, Sampler, SpanLimits, SpanProcessor, TimedEvent } from "@opentelemetry/sdk-trace";
import { randomFillSync } from "node:crypto";
import { withSpan } from "./trace-context.ts";

// dsat's own spans (a task's `submit`, its `dispatch`es, a worker's `run`) are made by this
// tracer rather than the OpenTelemetry SDK's when dsat's OTLP exporter is in use (the
// default; see telemetry.ts). They are sampled by the same sampler, go through the same batch
// span processor and exporter, under the same resource, as every span of the SDK in the same
// process (a handler's own spans), and any SpanProcessor or SpanExporter reads them as the
// ReadableSpans they are. What they do not do is what made the SDK's spans cost: a copy and
// check of every attribute set by dsat's own code (plain strings, numbers and booleans), and
// times kept as [seconds, nanoseconds] pairs. Times are milliseconds since the epoch here;
// the HrTime fields are made when something asks for them, and dsat's OTLP encoder
// (otlp-serializer.ts) writes the milliseconds directly. Attributes that user code sets on a
// dsat span (a handler's `trace.getActiveSpan()`) are checked as the SDK checks them.

/** Limits of a span, as the SDK's SpanLimits from OTEL_SPAN_* (every field set). */
export type DsatSpanLimits = Required<SpanLimits>;

/** What the tracer shares with its spans. */
export interface DsatTracerConfig {
  readonly sampler: Sampler;
  readonly processor: SpanProcessor;
  readonly resource: Resource;
  readonly scope: InstrumentationScope;
  readonly limits: DsatSpanLimits;
}

/** Span ids and trace ids as lower-case hex, from a pool of random bytes. */
const ids = (() => {
  const POOL = 4096;
  let pool = Buffer.allocUnsafe(0);
  let at = POOL;
  const take = (n: number): string => {
    if (at + n > pool.length) {
      pool = randomFillSync(Buffer.allocUnsafe(POOL));
      at = 0;
    }
    const s = pool.toString("hex", at, at + n);
    at += n;
    // An all-zero id is invalid (W3C): draw again, as the SDK does in spirit.
    return /^0+$/.test(s) ? take(n) : s;
  };
  return { traceId: () => take(16), spanId: () => take(8) };
})();

/** [seconds, nanoseconds] of a time in milliseconds since the epoch. */
export function msToHrTime(ms: number): HrTime {
  const seconds = Math.floor(ms / 1000);
  let nanos = Math.round((ms - seconds * 1000) * 1e6);
  if (nanos >= 1e9) return [seconds + 1, nanos - 1e9];
  if (nanos < 0) nanos = 0;
  return [seconds, nanos];
}

function hrTimeToMs(t: HrTime): number {
  return t[0] * 1000 + t[1] / 1e6;
}

/** True when every value is a string, a finite number or a boolean (what dsat's own code sets). */
function plain(attrs: Attributes): boolean {
  for (const k in attrs) {
    const v = attrs[k];
    const t = typeof v;
    if (k === "" || !(t === "string" || t === "boolean" || (t === "number" && Number.isFinite(v)))) return false;
  }
  return true;
}

/** An event of a dsat span: its time in milliseconds, its HrTime made on demand. */
export class DsatEvent implements TimedEvent {
  readonly name: string;
  readonly attributes: Attributes | undefined;
  readonly droppedAttributesCount: number;
  readonly timeMs: number;

  constructor(name: string, timeMs: number, attributes: Attributes | undefined, dropped: number) {
    this.name = name;
    this.timeMs = timeMs;
    this.attributes = attributes;
    this.droppedAttributesCount = dropped;
  }

  get time(): HrTime {
    return msToHrTime(this.timeMs);
  }
}

/** A span of dsat's tracer: an API Span while it runs, a ReadableSpan for processors and exporters. */
export class DsatSpan implements Span, ReadableSpan {
  name: string;
  readonly kind: SpanKind;
  readonly parentSpanContext: SpanContext | undefined;
  readonly attributes: Attributes;
  readonly links: Link[];
  readonly events: DsatEvent[] = [];
  status: SpanStatus = { code: SpanStatusCode.UNSET };
  readonly resource: Resource;
  readonly instrumentationScope: InstrumentationScope;
  /** Start and end, in milliseconds since the epoch (endMs is NaN until the span ends). */
  readonly startMs: number;
  endMs = Number.NaN;
  droppedAttributesCount: number;
  droppedEventsCount = 0;
  droppedLinksCount = 0;

  readonly #context: SpanContext;
  readonly #config: DsatTracerConfig;
  /** performance.now() at the start, for times not given (the SDK's way: start + elapsed). */
  readonly #perfStart: number;
  readonly #startGiven: boolean;
  #attributeCount: number;
  #ended = false;

  constructor(
    config: DsatTracerConfig,
    spanContext: SpanContext,
    name: string,
    kind: SpanKind,
    parent: SpanContext | undefined,
    attributes: Attributes,
    droppedAttributes: number,
    links: Link[],
    startTime: TimeInput | undefined,
  ) {
    this.#config = config;
    this.#context = spanContext;
    this.name = name;
    this.kind = kind;
    this.parentSpanContext = parent;
    this.attributes = attributes;
    this.#attributeCount = Object.keys(attributes).length;
    this.droppedAttributesCount = droppedAttributes;
    const { linkCountLimit } = config.limits;
    if (links.length > linkCountLimit) {
      this.droppedLinksCount = links.length - linkCountLimit;
      this.links = links.slice(links.length - linkCountLimit);
    } else {
      this.links = links;
    }
    this.resource = config.resource;
    this.instrumentationScope = config.scope;
    this.#perfStart = performance.now();
    this.#startGiven = startTime != null;
    this.startMs = startTime == null ? Date.now() : this.#ms(startTime);
  }

  /** A time input in milliseconds since the epoch, read as the SDK reads it; now when absent. */
  #ms(t: TimeInput | undefined): number {
    if (typeof t === "number") {
      // A number no later than performance.now() is a performance time, as in the SDK.
      return t <= performance.now() ? t + (Date.now() - performance.now()) : t;
    }
    if (t instanceof Date) return t.getTime();
    if (t !== undefined && isTimeInputHrTime(t)) return hrTimeToMs(t);
    if (this.#startGiven) return Date.now();
    return this.startMs + (performance.now() - this.#perfStart);
  }

  get ended(): boolean {
    return this.#ended;
  }

  get startTime(): HrTime {
    return msToHrTime(this.startMs);
  }

  get endTime(): HrTime {
    return Number.isNaN(this.endMs) ? [0, 0] : msToHrTime(this.endMs);
  }

  /** endTime - startTime, as the SDK computes it from the two. */
  get duration(): HrTime {
    if (Number.isNaN(this.endMs)) return [-1, -1];
    const end = msToHrTime(this.endMs);
    const start = msToHrTime(this.startMs);
    let seconds = end[0] - start[0];
    let nanos = end[1] - start[1];
    if (nanos < 0) {
      seconds -= 1;
      nanos += 1e9;
    }
    return [seconds, nanos];
  }

  spanContext(): SpanContext {
    return this.#context;
  }

  isRecording(): boolean {
    return !this.ended;
  }

  setAttribute(key: string, value: AttributeValue | undefined): this {
    if (this.ended) return this;
    const limits = this.#config.limits;
    const t = typeof value;
    if (
      key !== "" &&
      (t === "boolean" || (t === "number" && Number.isFinite(value)) || (t === "string" && (value as string).length <= limits.attributeValueLengthLimit))
    ) {
      if (key in this.attributes) {
        this.attributes[key] = value;
        return this;
      }
      if (this.#attributeCount < limits.attributeCountLimit) {
        this.attributes[key] = value;
        this.#attributeCount++;
        return this;
      }
    }
    const decision = maybeAddAttribute({
      key,
      value,
      attributes: this.attributes,
      limits,
      currentAttributesCount: this.#attributeCount,
    });
    if (decision === AddAttributeDecision.DROP_LIMIT_REACHED) {
      this.droppedAttributesCount++;
      if (this.droppedAttributesCount === 1) diag.warn("Dropping extra attributes.");
    } else if (decision === AddAttributeDecision.ADD_NEW) {
      this.#attributeCount++;
    }
    return this;
  }

  setAttributes(attributes: Attributes): this {
    for (const key in attributes) {
      if (Object.hasOwn(attributes, key)) this.setAttribute(key, attributes[key]);
    }
    return this;
  }

  addEvent(name: string, attributesOrStartTime?: Attributes | TimeInput, timeStamp?: TimeInput): this {
    if (this.ended) return this;
    const limits = this.#config.limits;
    this.droppedEventsCount += keepLast(this.events, limits.eventCountLimit, () => {
      let attrs: Attributes | undefined;
      let at = timeStamp;
      if (isTimeInput(attributesOrStartTime)) {
        if (!isTimeInput(at)) at = attributesOrStartTime as TimeInput;
      } else {
        attrs = attributesOrStartTime as Attributes | undefined;
      }
      let dropped = 0;
      if (attrs && !(plain(attrs) && Object.keys(attrs).length <= limits.attributePerEventCountLimit && shortEnough(attrs, limits))) {
        const cleaned = cleanSimpleAttributes(attrs, {
          attributeCountLimit: limits.attributePerEventCountLimit,
          attributeValueLengthLimit: limits.attributeValueLengthLimit,
        });
        attrs = cleaned.attributes;
        dropped = cleaned.droppedAttributesCount ?? 0;
      }
      return new DsatEvent(name, this.#ms(at), attrs, dropped);
    });
    return this;
  }

  addLink(link: Link): this {
    if (this.ended) return this;
    const limits = this.#config.limits;
    this.droppedLinksCount += keepLast(this.links, limits.linkCountLimit, () => cleanLink(link, limits));
    return this;
  }

  addLinks(links: Link[]): this {
    for (const link of links) this.addLink(link);
    return this;
  }

  setStatus(status: SpanStatus): this {
    if (this.ended || status.code === SpanStatusCode.UNSET || this.status.code === SpanStatusCode.OK) return this;
    this.status =
      status.code === SpanStatusCode.ERROR && typeof status.message === "string"
        ? { code: status.code, message: status.message }
        : { code: status.code };
    return this;
  }

  updateName(name: string): this {
    if (!this.ended) this.name = name;
    return this;
  }

  end(endTime?: TimeInput): void {
    if (this.ended) {
      diag.error(`${this.name} ${this.#context.traceId}-${this.#context.spanId} - You can only call end() on a span once.`);
      return;
    }
    let end = this.#ms(endTime);
    if (end < this.startMs) {
      diag.warn("Inconsistent start and end time, startTime > endTime. Setting span duration to 0ms.");
      end = this.startMs;
    }
    // As in the SDK: the end time is set when onEnding sees the span, which is still open to
    // changes then; onEnd sees it ended.
    this.endMs = end;
    const processor = this.#config.processor;
    processor.onEnding?.(this);
    this.#ended = true;
    processor.onEnd(this);
  }

  recordException(exception: Exception, time?: TimeInput): void {
    const attributes: Attributes = {};
    if (typeof exception === "string") {
      attributes["exception.message"] = exception;
    } else if (exception) {
      if (exception.code) attributes["exception.type"] = String(exception.code);
      else if (exception.name) attributes["exception.type"] = exception.name;
      if (exception.message) attributes["exception.message"] = exception.message;
      if (exception.stack) attributes["exception.stacktrace"] = exception.stack;
    }
    if (attributes["exception.type"] || attributes["exception.message"]) this.addEvent("exception", attributes, time);
    else diag.warn(`Failed to record an exception ${exception}`);
  }
}

/**
 * Adds make() to a list kept to its last `limit` items, as the SDK keeps events and links:
 * the oldest goes when it is full, nothing is kept when the limit is 0. Returns how many
 * were dropped (0 or 1).
 */
function keepLast<T>(list: T[], limit: number, make: () => T): number {
  if (limit === 0) return 1;
  let dropped = 0;
  if (list.length >= limit) {
    list.shift();
    dropped = 1;
  }
  list.push(make());
  return dropped;
}

function shortEnough(attrs: Attributes, limits: DsatSpanLimits): boolean {
  if (limits.attributeValueLengthLimit === Number.POSITIVE_INFINITY) return true;
  for (const k in attrs) {
    const v = attrs[k];
    if (typeof v === "string" && v.length > limits.attributeValueLengthLimit) return false;
  }
  return true;
}

function cleanLink(link: Link, limits: DsatSpanLimits): Link {
  const cleaned = cleanAttributes(link.attributes, {
    attributeCountLimit: limits.attributePerLinkCountLimit,
    attributeValueLengthLimit: limits.attributeValueLengthLimit,
  });
  return { context: link.context, ...cleaned };
}

/**
 * The tracer of dsat's own spans (see the top of this file): the SDK's sampling rules and
 * processor, spans of {@link DsatSpan}.
 */
export class DsatTracer implements Tracer {
  readonly #config: DsatTracerConfig;

  constructor(config: DsatTracerConfig) {
    this.#config = config;
  }

  startSpan(name: string, options: SpanOptions = {}, ctx: Context = context.active()): Span {
    if (options.root) ctx = trace.deleteSpan(ctx);
    if (isTracingSuppressed(ctx)) return trace.wrapSpanContext(INVALID_SPAN_CONTEXT);
    const parent = trace.getSpanContext(ctx);
    const spanId = ids.spanId();
    let traceId: string;
    let traceState = undefined as SpanContext["traceState"];
    let validParent: SpanContext | undefined;
    if (parent && trace.isSpanContextValid(parent)) {
      traceId = parent.traceId;
      traceState = parent.traceState;
      validParent = parent;
    } else {
      traceId = ids.traceId();
    }
    const kind = options.kind ?? SpanKind.INTERNAL;
    const limits = this.#config.limits;
    const links = (options.links ?? []).map((l) => cleanLink(l, limits));
    // The sampler sees the attributes as given (samplers read them, never change them); they
    // are copied only for a span that records.
    const given = options.attributes ?? {};
    const result = this.#config.sampler.shouldSample(ctx, traceId, name, kind, given, links);
    traceState = result.traceState ?? traceState;
    const spanContext: SpanContext = {
      traceId,
      spanId,
      traceFlags: result.decision === SamplingDecision.RECORD_AND_SAMPLED ? TraceFlags.SAMPLED : TraceFlags.NONE,
      traceState,
    };
    if (result.decision === SamplingDecision.NOT_RECORD) return trace.wrapSpanContext(spanContext);
    let attributes: Attributes;
    let dropped = 0;
    if (plain(given) && shortEnough(given, limits)) {
      attributes = { ...given };
    } else {
      const cleaned = cleanAttributes(given, { attributeCountLimit: Number.POSITIVE_INFINITY, attributeValueLengthLimit: limits.attributeValueLengthLimit });
      attributes = cleaned.attributes ?? {};
    }
    if (result.attributes) Object.assign(attributes, result.attributes);
    const count = Object.keys(attributes).length;
    if (count > limits.attributeCountLimit) {
      const cleaned = cleanAttributes(attributes, limits);
      attributes = cleaned.attributes ?? {};
      dropped = cleaned.droppedAttributesCount ?? 0;
    }
    const span = new DsatSpan(this.#config, spanContext, name, kind, validParent, attributes, dropped, links, options.startTime);
    this.#config.processor.onStart(span, ctx);
    return span;
  }

  startActiveSpan<F extends (span: Span) => unknown>(name: string, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, ctx: Context, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(
    name: string,
    a2?: SpanOptions | F,
    a3?: Context | F,
    a4?: F,
  ): ReturnType<F> | undefined {
    let options: SpanOptions | undefined;
    let ctx: Context | undefined;
    let fn: F | undefined;
    if (typeof a2 === "function") fn = a2;
    else if (typeof a3 === "function") {
      options = a2;
      fn = a3;
    } else {
      options = a2;
      ctx = a3;
      fn = a4;
    }
    if (!fn) return undefined;
    const parent = ctx ?? context.active();
    const span = this.startSpan(name, options, parent);
    return context.with(withSpan(span, parent), fn as (s: Span) => ReturnType<F>, undefined, span);
  }
}
