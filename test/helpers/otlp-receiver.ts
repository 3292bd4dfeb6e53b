import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { gunzipSync } from "node:zlib";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  ExportTraceServiceRequestSchema,
  ExportTraceServiceResponseSchema,
} from "../../sdk/src/gen/opentelemetry/proto/collector/trace/v1/trace_service_pb.js";
import type { AnyValue, KeyValue } from "../../sdk/src/gen/opentelemetry/proto/common/v1/common_pb.js";
import type { Span_SpanKind } from "../../sdk/src/gen/opentelemetry/proto/trace/v1/trace_pb.js";

/** An attribute value as received. */
export type Value = string | number | boolean | bigint | undefined;

/** A span event as received. */
export interface ReceivedEvent {
  readonly name: string;
  readonly timeUnixNano: bigint;
  readonly attributes: Readonly<Record<string, Value>>;
}

/** A span as received, ids in lowercase hex ("" for no parent). */
export interface ReceivedSpan {
  readonly service: string;
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string;
  readonly name: string;
  readonly kind: Span_SpanKind;
  readonly startTimeUnixNano: bigint;
  readonly endTimeUnixNano: bigint;
  readonly attributes: Readonly<Record<string, Value>>;
  readonly events: readonly ReceivedEvent[];
  /** 0 unset, 1 ok, 2 error. */
  readonly statusCode: number;
  readonly statusMessage: string;
}

/** A real OTLP/HTTP receiver (protobuf) on loopback: what an OpenTelemetry exporter sends it, decoded. */
export interface OtlpReceiver {
  /** The base URL, for OTEL_EXPORTER_OTLP_ENDPOINT (the exporter adds /v1/traces). */
  readonly endpoint: string;
  /** Export requests received (on any path). */
  readonly requests: number;
  /** Every span received so far. */
  readonly spans: readonly ReceivedSpan[];
  close(): Promise<void>;
}

/**
 * Starts an OTLP receiver on node:http. It decodes each POST /v1/traces body
 * (application/x-protobuf, gzip or not) as an ExportTraceServiceRequest with protobuf-es
 * and answers an empty ExportTraceServiceResponse. `hosts` are the interfaces to listen
 * on, all on the same port (the first one picks it when port is 0).
 */
export async function startOtlpReceiver(port = 0, hosts: readonly string[] = ["127.0.0.1"]): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  let requests = 0;
  const handle = async (req: IncomingMessage): Promise<void> => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    let body = Buffer.concat(chunks);
    if (req.headers["content-encoding"] === "gzip") body = gunzipSync(body);
    if (req.url !== "/v1/traces") return;
    const msg = fromBinary(ExportTraceServiceRequestSchema, body);
    for (const rs of msg.resourceSpans) {
      const service = String(attributes(rs.resource?.attributes ?? [])["service.name"] ?? "");
      for (const ss of rs.scopeSpans) {
        for (const s of ss.spans) {
          spans.push({
            service,
            traceId: hex(s.traceId),
            spanId: hex(s.spanId),
            parentSpanId: hex(s.parentSpanId),
            name: s.name,
            kind: s.kind,
            startTimeUnixNano: s.startTimeUnixNano,
            endTimeUnixNano: s.endTimeUnixNano,
            attributes: attributes(s.attributes),
            events: s.events.map((e) => ({ name: e.name, timeUnixNano: e.timeUnixNano, attributes: attributes(e.attributes) })),
            statusCode: s.status?.code ?? 0,
            statusMessage: s.status?.message ?? "",
          });
        }
      }
    }
  };
  const servers: Server[] = [];
  let chosen = port;
  for (const host of hosts) {
    const server = createServer((req, res) => {
      requests++;
      handle(req).then(
        () => {
          res.writeHead(200, { "content-type": "application/x-protobuf" });
          res.end(Buffer.from(toBinary(ExportTraceServiceResponseSchema, create(ExportTraceServiceResponseSchema))));
        },
        (err: unknown) => {
          res.writeHead(400, { "content-type": "text/plain" });
          res.end(String(err));
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(chosen, host, () => resolve());
    }).catch(async (err: unknown) => {
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
      throw err;
    });
    chosen = (server.address() as AddressInfo).port;
    servers.push(server);
  }
  const first = hosts[0] ?? "127.0.0.1";
  return {
    endpoint: `http://${first.includes(":") ? `[${first}]` : first}:${chosen}`,
    get requests() {
      return requests;
    },
    spans,
    close: async () => {
      await Promise.all(
        servers.map(
          (s) =>
            new Promise<void>((resolve) => {
              s.close(() => resolve());
              s.closeAllConnections();
            }),
        ),
      );
    },
  };
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

function attributes(kvs: readonly KeyValue[]): Record<string, Value> {
  const out: Record<string, Value> = {};
  for (const kv of kvs) out[kv.key] = value(kv.value);
  return out;
}

function value(v: AnyValue | undefined): Value {
  const x = v?.value;
  switch (x?.case) {
    case "stringValue":
    case "boolValue":
    case "doubleValue":
      return x.value;
    case "intValue":
      return Number(x.value);
    default:
      return undefined;
  }
}
