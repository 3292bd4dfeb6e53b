import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { DEFAULT_PREFIX, defaultEtcdEndpoints } from "@dsat/sdk";
import type { Etcd3 } from "etcd3";
import type { MetricsRegistry } from "../common/metrics.ts";

/** Options of a StatusServer. */
export interface StatusOptions {
  /**
   * etcd: comma-separated host:port endpoints, or a client that the caller owns (and
   * closes). Default: DSAT_ETCD, else "127.0.0.1:2379".
   */
  etcd: string | Etcd3;
  /** Interface the gRPC server listens on. Default "127.0.0.1". */
  host: string;
  /**
   * The address registered in etcd for others to dial: "host" or "host:port". Default "":
   * the host listened on, or this machine's first non-internal IPv4 for 0.0.0.0.
   */
  advertise: string;
  /** Port the gRPC server listens on; 0 picks a free one. Default 0. */
  port: number;
  /** Prefix of every etcd key. Default "/dsat/v1/". */
  prefix: string;
  /** Time to live of the membership lease, in seconds. Default 5. */
  leaseTtlSeconds: number;
  /** Member id. Default "status-<hostname>-<pid>-<4 random hex digits>". */
  id: string;
  /** Task states kept in memory (with their etcd mod revision), in tasks. Default 10000. */
  cacheSize: number;
  /** Keys written by one etcd transaction, at most. Default 100. */
  maxTxnOps: number;
  /** Bytes of values written by one etcd transaction, at most (one larger value goes alone). Default 1 MiB. */
  maxTxnBytes: number;
  /** Times a batch is re-read and re-applied after another writer changed its tasks. Default 5. */
  maxConflictRetries: number;
  /**
   * How long the record of a task that ended stays in etcd, in milliseconds (up to a tenth
   * more): etcd deletes it when its lease runs out (see retention.ts). 0 keeps records
   * forever. Default 3600000 (one hour).
   */
  taskRetentionMs: number;
  /**
   * Batches written at once: tasks are spread over this many lanes by id, each lane writes
   * one batch at a time (routers use the same lanes). Default 1.
   */
  lanes: number;
  /**
   * etcd's quota, its --quota-backend-bytes: past 80% of it the server warns (etcd refuses
   * every write at 100%). 0 does not watch. Default 2 GiB, etcd's own default.
   */
  etcdQuotaBytes: number;
  /** Time between two reads of etcd's database size, in milliseconds. Default 30000. */
  etcdSpaceCheckMs: number;
  /** Deadline of the first etcd call at start, in milliseconds. Default 3000. */
  connectTimeoutMs: number;
  /** Where the server's metrics go (a process serves them, see services/common/metrics.ts). Default none: no metrics. */
  metrics?: MetricsRegistry;
}

/**
 * The defaults. `etcd` and `id` are empty here because their defaults depend on the
 * environment; {@link resolveStatusOptions} fills them in.
 */
export const DEFAULT_STATUS_OPTIONS: Readonly<StatusOptions> = Object.freeze({
  etcd: "",
  host: "127.0.0.1",
  advertise: "",
  port: 0,
  prefix: DEFAULT_PREFIX,
  leaseTtlSeconds: 5,
  id: "",
  cacheSize: 10_000,
  maxTxnOps: 100,
  maxTxnBytes: 1024 * 1024,
  maxConflictRetries: 5,
  lanes: 1,
  taskRetentionMs: 3_600_000,
  etcdQuotaBytes: 2 * 1024 ** 3,
  etcdSpaceCheckMs: 30_000,
  connectTimeoutMs: 3_000,
});

/** Applies the defaults to partial options: the one place where that happens. */
export function resolveStatusOptions(options: Partial<StatusOptions> = {}): StatusOptions {
  const defined = Object.fromEntries(
    Object.entries(options).filter(([, v]) => v !== undefined),
  ) as Partial<StatusOptions>;
  const opts: StatusOptions = { ...DEFAULT_STATUS_OPTIONS, ...defined };
  if (opts.etcd === "") opts.etcd = defaultEtcdEndpoints();
  if (opts.id === "") opts.id = `status-${hostname()}-${process.pid}-${randomBytes(2).toString("hex")}`;
  const check = (name: keyof StatusOptions, value: number, min: number, max: number) => {
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new RangeError(`${name} must be an integer from ${min} to ${max}, not ${value}`);
    }
  };
  check("port", opts.port, 0, 65_535);
  check("leaseTtlSeconds", opts.leaseTtlSeconds, 1, 3_600);
  check("cacheSize", opts.cacheSize, 0, Number.MAX_SAFE_INTEGER);
  check("maxTxnOps", opts.maxTxnOps, 1, Number.MAX_SAFE_INTEGER);
  check("maxTxnBytes", opts.maxTxnBytes, 1, Number.MAX_SAFE_INTEGER);
  check("maxConflictRetries", opts.maxConflictRetries, 0, Number.MAX_SAFE_INTEGER);
  check("lanes", opts.lanes, 1, 64);
  check("taskRetentionMs", opts.taskRetentionMs, 0, 365 * 24 * 3_600_000);
  check("connectTimeoutMs", opts.connectTimeoutMs, 1, Number.MAX_SAFE_INTEGER);
  check("etcdQuotaBytes", opts.etcdQuotaBytes, 0, Number.MAX_SAFE_INTEGER);
  check("etcdSpaceCheckMs", opts.etcdSpaceCheckMs, 10, 24 * 3_600_000);
  return opts;
}

/**
 * The options a status process takes from its flags beyond the common ones (a status server
 * of its own, or one that a router serves with --serve-status): --lanes, --task-retention-ms,
 * --etcd-quota-bytes, --etcd-space-check-ms, each when given.
 */
export const STATUS_FLAGS = ["lanes", "task-retention-ms", "etcd-quota-bytes", "etcd-space-check-ms"] as const;

/** Reads {@link STATUS_FLAGS} from a process's parsed flags (strings; absent ones are left out). */
export function statusOptionsFromFlags(rest: Record<string, string | boolean | undefined>): Partial<StatusOptions> {
  const options: Partial<StatusOptions> = {};
  const num = (name: (typeof STATUS_FLAGS)[number], key: "lanes" | "taskRetentionMs" | "etcdQuotaBytes" | "etcdSpaceCheckMs") => {
    const v = rest[name];
    if (typeof v === "string") options[key] = Number(v);
  };
  num("lanes", "lanes");
  num("task-retention-ms", "taskRetentionMs");
  num("etcd-quota-bytes", "etcdQuotaBytes");
  num("etcd-space-check-ms", "etcdSpaceCheckMs");
  return options;
}
