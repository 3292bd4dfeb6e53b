import { parseArgs } from "node:util";
import { defaultEtcdEndpoints, startTelemetry, type Telemetry, toDsatError } from "@dsat/sdk";
import { withDeadline } from "./deadline.ts";
import { MetricsRegistry, type MetricsServer, serveMetrics } from "./metrics.ts";
import { registerProcessMetrics } from "./process-metrics.ts";

/** Flags every service process takes (each also from an environment variable). */
export interface ServiceFlags {
  /** --etcd, DSAT_ETCD: etcd endpoints. */
  etcd: string;
  /** --host, DSAT_HOST: interface to listen on. */
  host: string;
  /** --advertise, DSAT_ADVERTISE: the address others dial ("host" or "host:port"); "" for the default. */
  advertise: string;
  /** --port, DSAT_PORT: port (0: any free one). */
  port: number;
  /** --prefix, DSAT_PREFIX: etcd key prefix. */
  prefix: string;
  /** --lease-ttl, DSAT_LEASE_TTL: lease time to live in seconds. */
  leaseTtlSeconds: number;
  /** --satellite, DSAT_SATELLITE: the satellite this member belongs to ("" by default). */
  satellite: string;
  /** --id: member id. */
  id: string | undefined;
  /** --max-tasks: routers' task limit. */
  maxTasks: number | undefined;
  /** --metrics-port, DSAT_METRICS_PORT: the registry served at host:port/metrics; undefined when off (port 0, the default). */
  metrics: MetricsRegistry | undefined;
  /** Flags this helper does not know, for the service. */
  rest: Record<string, string | boolean | undefined>;
}

/** What a started service gives back. */
export interface StartedService {
  id: string;
  address: string;
  close(): Promise<void>;
  /** Graceful stop (SIGTERM); close() when absent. */
  drain?(): Promise<void>;
}

/**
 * Runs a service as a process: parses flags, starts tracing when the OTEL_* variables ask
 * for it (service name "dsat-<kind>" unless OTEL_SERVICE_NAME says otherwise), starts the
 * service and its metrics endpoint when --metrics-port is set, prints one line
 * `ready {"kind":…,"id":…,"address":…,"pid":…,"tracing":…[,"metrics":"host:port"]}` on
 * stdout once it serves, drains on SIGTERM, closes on SIGINT (exporting buffered spans
 * either way), and exits 1 with a clear message when it cannot start. `extraFlags` take a
 * value, `switches` none (both land in `flags.rest`).
 */
export async function runService(
  kind: string,
  start: (flags: ServiceFlags) => Promise<StartedService>,
  extraFlags: readonly string[] = [],
  switches: readonly string[] = [],
): Promise<void> {
  const { values } = parseArgs({
    options: {
      ...Object.fromEntries(extraFlags.map((f) => [f, { type: "string" as const }])),
      ...Object.fromEntries(switches.map((f) => [f, { type: "boolean" as const }])),
      etcd: { type: "string" },
      host: { type: "string" },
      advertise: { type: "string" },
      port: { type: "string" },
      prefix: { type: "string" },
      "lease-ttl": { type: "string" },
      id: { type: "string" },
      satellite: { type: "string" },
      "max-tasks": { type: "string" },
      "metrics-port": { type: "string" },
    },
    strict: true,
  });
  const str = (v: unknown) => (typeof v === "string" ? v : undefined);
  const flags: ServiceFlags = {
    etcd: str(values.etcd) ?? defaultEtcdEndpoints(),
    host: str(values.host) ?? process.env.DSAT_HOST ?? "127.0.0.1",
    advertise: str(values.advertise) ?? process.env.DSAT_ADVERTISE ?? "",
    port: Number(str(values.port) ?? process.env.DSAT_PORT ?? 0),
    prefix: str(values.prefix) ?? process.env.DSAT_PREFIX ?? "/dsat/v1/",
    leaseTtlSeconds: Number(str(values["lease-ttl"]) ?? process.env.DSAT_LEASE_TTL ?? 5),
    id: str(values.id),
    satellite: str(values.satellite) ?? process.env.DSAT_SATELLITE ?? "",
    maxTasks: str(values["max-tasks"]) ? Number(values["max-tasks"]) : undefined,
    metrics: undefined,
    rest: values as Record<string, string | boolean | undefined>,
  };
  const metricsPort = Number(str(values["metrics-port"]) ?? process.env.DSAT_METRICS_PORT ?? 0);
  if (!Number.isInteger(metricsPort) || metricsPort < 0 || metricsPort > 65_535) {
    process.stderr.write(`dsat ${kind}: --metrics-port must be a port number (0: no metrics endpoint), not "${values["metrics-port"] ?? process.env.DSAT_METRICS_PORT}"\n`);
    process.exit(1);
  }
  if (metricsPort > 0) {
    flags.metrics = new MetricsRegistry();
    registerProcessMetrics(flags.metrics);
  }
  let telemetry: Telemetry | undefined;
  let metricsServer: MetricsServer | undefined;
  let service: StartedService;
  try {
    telemetry = await startTelemetry({ serviceName: `dsat-${kind}` });
    if (flags.metrics) {
      metricsServer = await serveMetrics(flags.metrics, flags.host, metricsPort).catch((err: unknown) => {
        throw new Error(`cannot serve metrics on ${flags.host}:${metricsPort}: ${(err as Error).message}`);
      });
    }
    service = await withDeadline(start(flags), 15_000, () => new Error(`could not start within 15 s (is etcd at ${flags.etcd} up?)`));
  } catch (err) {
    process.stderr.write(`dsat ${kind}: ${toDsatError(err).rawMessage}\n`);
    await metricsServer?.close().catch(() => {});
    await telemetry?.shutdown().catch(() => {});
    process.exit(1);
  }
  const ready = {
    kind,
    id: service.id,
    address: service.address,
    pid: process.pid,
    tracing: telemetry.tracing,
    ...(metricsServer ? { metrics: metricsServer.address } : {}),
  };
  process.stdout.write(`ready ${JSON.stringify(ready)}\n`);
  let stopping = false;
  const stop = async (graceful: boolean) => {
    if (stopping) return;
    stopping = true;
    try {
      await (graceful && service.drain ? service.drain() : service.close());
    } finally {
      // Spans of what just ended are still buffered: export them before going.
      await metricsServer?.close().catch(() => {});
      await telemetry?.shutdown().catch(() => {});
      process.exit(0);
    }
  };
  process.on("SIGTERM", () => void stop(true));
  process.on("SIGINT", () => void stop(false));
  // Started by a supervisor or a test: go when it goes, even when it was killed with -9.
  if (process.env.DSAT_EXIT_WITH_PARENT === "1") {
    const parent = process.ppid;
    setInterval(() => {
      if (process.ppid !== parent) void stop(false);
    }, 1_000).unref();
  }
}
