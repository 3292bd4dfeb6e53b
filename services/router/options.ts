import type { Etcd3 } from "etcd3";
import type { Logger } from "@dsat/sdk";
import type { MetricsRegistry } from "../common/metrics.ts";
import type { EmbedStatus } from "../common/embedded-status.ts";

/** Options of a router. */
export interface RouterOptions {
  /** etcd endpoints ("host:port,…") or a client. Default DSAT_ETCD, else 127.0.0.1:2379. */
  etcd: string | Etcd3;
  /** Interface the gRPC server listens on. Default "127.0.0.1". */
  host: string;
  /**
   * The address registered in etcd for others to dial: "host" or "host:port". Default "":
   * the host listened on, or this machine's first non-internal IPv4 for 0.0.0.0.
   */
  advertise: string;
  /** Port; 0 picks a free one. Default 0. */
  port: number;
  /** etcd key prefix. Default "/dsat/v1/". */
  prefix: string;
  /** Lease time to live, in seconds. Default 5. */
  leaseTtlSeconds: number;
  /** Member id. Default "router-<host>-<pid>-<random>". */
  id: string;
  /** Tasks accepted and not yet ended that this router holds; beyond it Submit gets RESOURCE_EXHAUSTED. Default 10000. */
  maxTasks: number;
  /** Largest payload accepted, in bytes. Default 4 MiB. */
  maxPayloadBytes: number;
  /** Timeout of an attempt when the stage sets none, in milliseconds. Default 30000. */
  defaultStageTimeoutMs: number;
  /** Times a stage is dispatched again after its worker was lost, on top of its retry policy. Default 5. */
  maxLostWorkerRedeliveries: number;
  /** How long drain waits for tasks in flight, in milliseconds. Default 30000. */
  drainTimeoutMs: number;
  /** The protocol version announced. Default DSAT_VERSION; change it only to test refusals. */
  protocolVersion: string;
  /** The satellite this router belongs to. Default "" (the default satellite). */
  satellite: string;
  /**
   * How long a task may wait at a stage that no worker serves (here or in another
   * satellite) before it fails with UNAVAILABLE, in milliseconds. Default 0: it waits,
   * bounded only by maxTasks.
   */
  stageWaitMs: number;
  /**
   * How long a transition that nobody waits for may be held back, under load, so that more
   * of its task's steps share one write in StatusService, in milliseconds (the longest a
   * Watch may see a step late). 0: every transition is sent as soon as it can be. Default 250.
   */
  statusLingerMs: number;
  /** Reports in flight to StatusService at once (tasks spread over lanes by id). Default 1. */
  statusLanes: number;
  /**
   * How long StatusService may fail to store a Report before the tasks it would create are
   * refused (their Submit fails UNAVAILABLE), in milliseconds. The steps of tasks already
   * accepted are never given up: they are sent again until stored. Default 60000.
   */
  statusGiveUpMs: number;
  /**
   * Serve StatusService and PipelineService in this process too, on the router's port, as
   * a status member with the router's id: the router's Reports then go to it in-process
   * (nothing encoded, no network hop), and every other member can use it as any status
   * server. The process entry's --serve-status passes StatusServer.embed here. Default
   * none: the router reports to the status servers registered in etcd.
   */
  embedStatus?: EmbedStatus;
  logger: Logger;
  /** Where the router's metrics go (a process serves them, see services/common/metrics.ts). Default none: no metrics. */
  metrics?: MetricsRegistry;
}

/** Defaults of {@link RouterOptions}; etcd, id, protocolVersion and logger are filled in at start. */
export const DEFAULT_ROUTER_OPTIONS = Object.freeze({
  host: "127.0.0.1",
  advertise: "",
  port: 0,
  prefix: "/dsat/v1/",
  leaseTtlSeconds: 5,
  maxTasks: 10_000,
  maxPayloadBytes: 4 * 1024 * 1024,
  defaultStageTimeoutMs: 30_000,
  maxLostWorkerRedeliveries: 5,
  drainTimeoutMs: 30_000,
  satellite: "",
  stageWaitMs: 0,
  statusLingerMs: 250,
  statusLanes: 1,
  statusGiveUpMs: 60_000,
});

/** Refuses options a router cannot run with, naming the option and the range it takes. */
export function checkRouterOptions(opts: RouterOptions): void {
  const check = (name: keyof RouterOptions, value: number, min: number, max: number) => {
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new RangeError(`${name} must be an integer from ${min} to ${max}, not ${value}`);
    }
  };
  check("port", opts.port, 0, 65_535);
  check("maxTasks", opts.maxTasks, 1, Number.MAX_SAFE_INTEGER);
  check("stageWaitMs", opts.stageWaitMs, 0, Number.MAX_SAFE_INTEGER);
  check("statusLingerMs", opts.statusLingerMs, 0, 60_000);
  check("statusLanes", opts.statusLanes, 1, 64);
  check("statusGiveUpMs", opts.statusGiveUpMs, 100, 24 * 3_600_000);
}
