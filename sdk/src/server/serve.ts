import type { DescService } from "@bufbuild/protobuf";
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
}

const DEFAULT_GRPC_SERVER_OPTIONS: Readonly<GrpcServerOptions> = Object.freeze({
  host: "127.0.0.1",
  port: 0,
  maxMessageBytes: 4 * 1024 * 1024 + 64 * 1024,
});

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
  const bindHost = opts.host.includes(":") ? `[${opts.host}]` : opts.host;
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${bindHost}:${opts.port}`, grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    );
  });
  const advertised = opts.host === "0.0.0.0" || opts.host === "::" ? "127.0.0.1" : opts.host;
  const address = `${advertised.includes(":") ? `[${advertised}]` : advertised}:${port}`;
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
