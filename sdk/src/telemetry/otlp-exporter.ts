import { OTLPExporterBase } from "@opentelemetry/otlp-exporter-base";
import { convertLegacyHttpOptions, createOtlpHttpExportDelegate } from "@opentelemetry/otlp-exporter-base/node-http";
import { type ISerializer, type IExportTraceServiceResponse, ProtobufTraceSerializer, TraceExporterMetricsHelper } from "@opentelemetry/otlp-transformer";
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace";
import { serializeSpans } from "./otlp-serializer.ts";

/** The request encoder is dsat's (the same bytes, cheaper); the response decoder is OpenTelemetry's. */
const SERIALIZER: ISerializer<ReadableSpan[], IExportTraceServiceResponse> = {
  serializeRequest: (spans) => serializeSpans(spans),
  deserializeResponse: (bytes) => ProtobufTraceSerializer.deserializeResponse(bytes),
};

/**
 * OTLP over HTTP/protobuf, as @opentelemetry/exporter-trace-otlp-proto's OTLPTraceExporter:
 * the same transport, configured by the same OTEL_EXPORTER_OTLP_* variables (endpoint,
 * headers, timeout, compression, certificates), with the same retries; only the request is
 * encoded by {@link serializeSpans}.
 */
export class DsatOtlpTraceExporter extends OTLPExporterBase<ReadableSpan[]> implements SpanExporter {
  constructor() {
    super(
      createOtlpHttpExportDelegate(
        convertLegacyHttpOptions({}, "TRACES", "v1/traces", { "Content-Type": "application/x-protobuf" }),
        SERIALIZER,
        "otlp_http_span_exporter",
        TraceExporterMetricsHelper,
        undefined,
      ),
    );
  }
}
