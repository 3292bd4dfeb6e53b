import type { Tracer } from "@opentelemetry/api";
import { diag, trace } from "@opentelemetry/api";
import { DSAT_VERSION } from "../version.ts";
import type { DsatOtlpTraceExporter } from "./otlp-exporter.ts";

/** Options of {@link startTelemetry}. */
export interface TelemetryOptions {
  /**
   * `service.name` of the spans, used when neither OTEL_SERVICE_NAME nor a service.name in
   * OTEL_RESOURCE_ATTRIBUTES sets one. Default "dsat".
   */
  serviceName: string;
}

const DEFAULT_TELEMETRY_OPTIONS = Object.freeze({ serviceName: "dsat" });

/** Telemetry as started by {@link startTelemetry}. */
export interface Telemetry {
  /** True when spans are recorded and exported. */
  readonly tracing: boolean;
  /** Exports what is buffered and stops (bounded by OTEL_BSP_EXPORT_TIMEOUT, at most 10 s). */
  shutdown(): Promise<void>;
}

const OFF: Telemetry = Object.freeze({ tracing: false, shutdown: async () => {} });

/** The tracer of dsat's own spans while telemetry runs; undefined when tracing is off. */
let tracer: Tracer | undefined;
let running: Promise<Telemetry> | undefined;

/**
 * True when the OTEL_* variables ask for traces: OTEL_TRACES_EXPORTER names an exporter
 * other than "none", or it is unset and an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is given; never when OTEL_SDK_DISABLED is true.
 * Unlike the OpenTelemetry default, tracing is off when nothing is set.
 */
export function tracingConfigured(env: Readonly<Record<string, string | undefined>> = process.env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === "true") return false;
  const exporters = exporterNames(env);
  if (exporters.length > 0) return !exporters.includes("none");
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

function exporterNames(env: Readonly<Record<string, string | undefined>>): string[] {
  return (env.OTEL_TRACES_EXPORTER ?? "")
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== "");
}

/**
 * Starts OpenTelemetry tracing in this process when the OTEL_* variables ask for it (see
 * {@link tracingConfigured}): the Node SDK with a batch span processor and, by default, the
 * OTLP exporter over HTTP/protobuf (OTEL_EXPORTER_OTLP_*; OpenTelemetry's transport, dsat's
 * encoder: {@link DsatOtlpTraceExporter}), the sampler of
 * OTEL_TRACES_SAMPLER(_ARG), the W3C propagators. When tracing is off it loads nothing and
 * returns at once. `@opentelemetry/sdk-node` and `@opentelemetry/exporter-trace-otlp-proto`
 * are then needed (optional peer dependencies of the SDK). Calling it again returns the
 * same telemetry.
 */
export function startTelemetry(options: Partial<TelemetryOptions> = {}): Promise<Telemetry> {
  running ??= start({ ...DEFAULT_TELEMETRY_OPTIONS, ...options }).catch((err: unknown) => {
    running = undefined;
    throw err;
  });
  return running;
}

/** Stops what {@link startTelemetry} started, exporting what is buffered first. */
export async function shutdownTelemetry(): Promise<void> {
  const t = running;
  if (!t) return;
  await (await t).shutdown();
}

/** The tracer of dsat's spans, or undefined when tracing is off: the one check on hot paths. */
export function activeTracer(): Tracer | undefined {
  return tracer;
}

async function start(opts: TelemetryOptions): Promise<Telemetry> {
  // The OpenTelemetry SDK reads process.env itself: so do we, for one truth.
  const env = process.env;
  if (!tracingConfigured(env)) return OFF;
  const [{ NodeSDK }, { DsatOtlpTraceExporter }] = await Promise.all([
    import("@opentelemetry/sdk-node"),
    import("./otlp-exporter.ts"),
  ]).catch((err: unknown) => {
    throw new Error(
      `tracing is on (OTEL_* variables) but the OpenTelemetry Node SDK is missing: npm install @opentelemetry/sdk-node @opentelemetry/exporter-trace-otlp-proto (${(err as Error).message})`,
    );
  });
  const exporters = exporterNames(env);
  const protocol = (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? "http/protobuf").trim();
  // OTLP over HTTP/protobuf is the default; any other exporter or protocol named in
  // OTEL_* is left for the Node SDK to build from the same variables.
  const ownExporter = (exporters.length === 0 || (exporters.length === 1 && exporters[0] === "otlp")) && protocol === "http/protobuf";
  const named = Boolean(env.OTEL_SERVICE_NAME?.trim()) || /(^|,)\s*service\.name\s*=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? "");
  // Traces only: dsat serves its metrics itself (Prometheus text) and writes its logs as JSON lines.
  const common = { metricReaders: [], logRecordProcessors: [], instrumentations: [] };
  let sdk: InstanceType<typeof NodeSDK>;
  // With dsat's exporter and the default resource detectors, dsat's own spans come from its
  // own tracer (dsat-tracer.ts), on the sampler, batch processor, exporter and resource that
  // dsat builds here as the Node SDK would from the same OTEL_* variables, and hands to the
  // Node SDK for every other span of the process. Otherwise the Node SDK builds everything
  // and dsat's spans are the SDK's.
  if (ownExporter && !env.OTEL_NODE_RESOURCE_DETECTORS?.trim()) {
    const parts = await ownTracing(named ? undefined : opts.serviceName, new DsatOtlpTraceExporter());
    sdk = new NodeSDK({ ...common, resource: parts.resource, autoDetectResources: false, sampler: parts.sampler, spanProcessors: [parts.processor] });
    sdk.start();
    tracer = parts.tracer;
  } else {
    sdk = new NodeSDK({ ...common, ...(named ? {} : { serviceName: opts.serviceName }), ...(ownExporter ? { traceExporter: new DsatOtlpTraceExporter() } : {}) });
    sdk.start();
    tracer = trace.getTracer("dsat", DSAT_VERSION);
  }
  let stopped: Promise<void> | undefined;
  return {
    tracing: true,
    shutdown: () => {
      stopped ??= (async () => {
        tracer = undefined;
        let timer: NodeJS.Timeout | undefined;
        const limit = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, 10_000);
          timer.unref();
        });
        try {
          // An export that fails on the way out (the collector is down) loses those spans, as
          // any failed export does; it is not an error of the program that shuts down.
          const done = sdk.shutdown().catch((err: unknown) => diag.error(`dsat telemetry: the last export failed: ${String(err)}`));
          await Promise.race([done, limit]);
        } finally {
          clearTimeout(timer);
        }
      })();
      return stopped;
    },
  };
}

/**
 * dsat's tracer and what it shares with the Node SDK, made from the OTEL_* variables as the
 * Node SDK makes them (sdk-node's create-from-env): the resource of the default detectors
 * (service instance id, process, host, os, OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME),
 * then `service.name` when given; the sampler of OTEL_TRACES_SAMPLER(_ARG), parent-based
 * always-on by default; a batch span processor with OTEL_BSP_*; span limits of OTEL_*_LIMIT.
 */
async function ownTracing(serviceName: string | undefined, exporter: import("@opentelemetry/sdk-trace").SpanExporter) {
  const [sdkTrace, res, core, { DsatTracer }] = await Promise.all([
    import("@opentelemetry/sdk-trace"),
    import("@opentelemetry/resources"),
    import("@opentelemetry/core"),
    import("./dsat-tracer.ts"),
  ]);
  let resource = res.defaultResource().merge(
    res.detectResources({
      detectors: [res.serviceInstanceIdDetector, res.processDetector, res.hostDetector, res.osDetector, res.envDetector],
    }),
  );
  if (serviceName !== undefined) resource = resource.merge(res.resourceFromAttributes({ "service.name": serviceName }));
  const num = (name: string) => core.getNumberFromEnv(name);
  const ratio = () => {
    const r = num("OTEL_TRACES_SAMPLER_ARG");
    return r === undefined || r < 0 || r > 1 ? 1 : r;
  };
  const samplers: Record<string, () => import("@opentelemetry/sdk-trace").Sampler> = {
    always_on: () => new sdkTrace.AlwaysOnSampler(),
    always_off: () => new sdkTrace.AlwaysOffSampler(),
    traceidratio: () => new sdkTrace.TraceIdRatioBasedSampler(ratio()),
    parentbased_always_on: () => new sdkTrace.ParentBasedSampler({ root: new sdkTrace.AlwaysOnSampler() }),
    parentbased_always_off: () => new sdkTrace.ParentBasedSampler({ root: new sdkTrace.AlwaysOffSampler() }),
    parentbased_traceidratio: () => new sdkTrace.ParentBasedSampler({ root: new sdkTrace.TraceIdRatioBasedSampler(ratio()) }),
  };
  const samplerName = core.getStringFromEnv("OTEL_TRACES_SAMPLER");
  const sampler = (samplerName && samplers[samplerName]?.()) || samplers.parentbased_always_on?.() as import("@opentelemetry/sdk-trace").Sampler;
  const processor = new sdkTrace.BatchSpanProcessor({
    exporter,
    maxQueueSize: nonNegative(num("OTEL_BSP_MAX_QUEUE_SIZE")),
    scheduledDelayMillis: nonNegative(num("OTEL_BSP_SCHEDULE_DELAY")),
    exportTimeoutMillis: nonNegative(num("OTEL_BSP_EXPORT_TIMEOUT")),
    maxExportBatchSize: nonNegative(num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")),
  });
  const limits = {
    attributeCountLimit: num("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT") ?? num("OTEL_ATTRIBUTE_COUNT_LIMIT") ?? 128,
    attributeValueLengthLimit:
      num("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT") ?? num("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT") ?? Number.POSITIVE_INFINITY,
    eventCountLimit: num("OTEL_SPAN_EVENT_COUNT_LIMIT") ?? 128,
    linkCountLimit: num("OTEL_SPAN_LINK_COUNT_LIMIT") ?? 128,
    attributePerEventCountLimit: num("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT") ?? num("OTEL_SPAN_ATTRIBUTE_PER_EVENT_COUNT_LIMIT") ?? 128,
    attributePerLinkCountLimit: num("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT") ?? num("OTEL_SPAN_ATTRIBUTE_PER_LINK_COUNT_LIMIT") ?? 128,
  };
  const tracer = new DsatTracer({ sampler, processor, resource, scope: { name: "dsat", version: DSAT_VERSION }, limits });
  return { resource, sampler, processor, tracer };
}

/** A positive number, else undefined (the default): the Node SDK reads OTEL_BSP_* so. */
function nonNegative(n: number | undefined): number | undefined {
  return n !== undefined && n > 0 ? n : undefined;
}
