import type { DescService } from "@bufbuild/protobuf";
import { type NetworkInterfaceInfo, networkInterfaces } from "node:os";
import * as grpc from "@grpc/grpc-js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { HealthService, ServingStatus } from "./health.ts";
import { ReflectionService } from "./reflection.ts";

/** Options of {@link startGrpcServer}. */
export interface GrpcServerOptions {
  /** Interface to listen on. Default "127.0.0.1". */
  host: string;
  /** Port to listen on; 0 picks a free one. Default 0. */
  port: number;
  /** Largest message accepted, in bytes. Default 4 MiB + 64 KiB of envelope. */
  maxMessageBytes: number;
  /**
   * The address others dial, as registered in etcd: "host" (with the port bound) or
   * "host:port" (a port mapped elsewhere, as in a container). Default: the host listened
   * on, or for a wildcard host (0.0.0.0, ::) this machine's first non-internal IPv4
   * address (127.0.0.1 when it has none); see {@link advertisedAddress}.
   */
  advertise: string;
}

const DEFAULT_GRPC_SERVER_OPTIONS: Readonly<GrpcServerOptions> = Object.freeze({
  host: "127.0.0.1",
  port: 0,
  maxMessageBytes: 4 * 1024 * 1024 + 64 * 1024,
  advertise: "",
});

/**
 * The host:port that a server listening on `host`:`port` tells others to dial: `advertise`
 * when given ("host", or "host:port" as it is), else `host`, else for a wildcard host the
 * first non-internal IPv4 address of `interfaces` (127.0.0.1 when there is none). An IPv6
 * host is put in brackets.
 */
export function advertisedAddress(
  host: string,
  port: number,
  advertise = "",
  interfaces: NodeJS.Dict<NetworkInterfaceInfo[]> = networkInterfaces(),
): string {
  const a = advertise.trim();
  if (a !== "") {
    if (/^\[.*\]:\d+$/.test(a) || /^[^:]+:\d+$/.test(a)) return a;
    return `${a.includes(":") ? `[${a.replace(/^\[|\]$/g, "")}]` : a}:${port}`;
  }
  let chosen = host;
  if (host === "0.0.0.0" || host === "::" || host === "") {
    chosen = "127.0.0.1";
    for (const list of Object.values(interfaces)) {
      const v4 = list?.find((i) => i.family === "IPv4" && !i.internal);
      if (v4) {
        chosen = v4.address;
        break;
      }
    }
  }
  return `${chosen.includes(":") ? `[${chosen}]` : chosen}:${port}`;
}

/**
 * What grpc-js binds for a server listening on `host`:`port`: an empty host is every
 * interface (0.0.0.0, as `advertisedAddress` reads it too, and as a socket bound to "" is),
 * an IPv6 host is put in brackets.
 */
export function bindTarget(host: string, port: number): string {
  const h = host.trim() === "" ? "0.0.0.0" : host;
  return `${h.includes(":") && !h.startsWith("[") ? `[${h}]` : h}:${port}`;
}

/** A running grpc-js server with health and reflection. */
export interface RunningGrpcServer {
  readonly server: grpc.Server;
  readonly health: HealthService;
  /** host:port that others dial. */
  readonly address: string;
  readonly port: number;
  /** Stops accepting calls, waits up to graceMs for running calls, then cuts the rest. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Starts a grpc-js server for the given services. `register` adds their handlers; health
 * (all NOT_SERVING until the caller says otherwise) and reflection are added here.
 */
export async function startGrpcServer(
  services: readonly DescService[],
  register: (server: grpc.Server) => void,
  options: Partial<GrpcServerOptions> = {},
): Promise<RunningGrpcServer> {
  const opts = { ...DEFAULT_GRPC_SERVER_OPTIONS, ...options };
  const server = new grpc.Server({
    "grpc.max_receive_message_length": opts.maxMessageBytes,
    "grpc.max_send_message_length": opts.maxMessageBytes,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 5_000,
  });
  const initial: Record<string, ServingStatus> = { "": ServingStatus.NOT_SERVING };
  for (const s of services) initial[s.typeName] = ServingStatus.NOT_SERVING;
  const health = new HealthService(initial);
  health.addToServer(server);
  new ReflectionService([...services, Health, ServerReflection]).addToServer(server);
  register(server);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(bindTarget(opts.host, opts.port), grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    );
  });
  const address = advertisedAddress(opts.host, port, opts.advertise);
  return {
    server,
    health,
    address,
    port,
    close: (graceMs = 5_000) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        timer.unref();
        health.close();
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}
