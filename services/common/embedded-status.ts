// What a router needs of a status server that it serves in its own process (--serve-status).
// The status server provides it (StatusServer.embed in services/status/status-server.ts);
// the process entry (services/router/main.ts) puts the two together, so that the router and
// the status service still never import each other.
import type { DescService } from "@bufbuild/protobuf";
import type { ReportRequest, RunningGrpcServer } from "@dsat/sdk";
import type * as grpc from "@grpc/grpc-js";
import type { Etcd3 } from "etcd3";

/** The outcomes of a Report: one per created task and one per transition, in request order. */
export interface ReportOutcomes {
  readonly created: readonly { readonly accepted: boolean; readonly duplicate: boolean; readonly reason: string }[];
  readonly transitions: readonly { readonly accepted: boolean; readonly reason: string; readonly notOwner?: boolean }[];
}

/** A status server's task store, taking Reports in-process. */
export interface LocalStatus {
  /** True once it refuses reports (it is closing). */
  readonly closed: boolean;
  /** Applies a Report; resolves once what it changed is durable. */
  report(req: ReportRequest): Promise<ReportOutcomes>;
}

/** A status server served by another server of its process: its services are added while that server is built. */
export interface EmbeddedStatus {
  /** The services it adds, for the host server's health and reflection. */
  readonly services: readonly DescService[];
  /** Its task store. */
  readonly store: LocalStatus;
  /** Adds its services to the host's server (before it listens). */
  addToServer(server: grpc.Server): void;
  /** Registers it as a status member at the host's address and reports its services SERVING. */
  start(server: RunningGrpcServer): Promise<{ close(): Promise<void> }>;
}

/** Makes the status server a router serves: with the router's etcd client, member id and status lanes. */
export type EmbedStatus = (etcd: Etcd3, id: string, lanes: number) => EmbeddedStatus;
