import { hostname } from "node:os";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import {
  Code,
  connectEtcd,
  DSAT_VERSION,
  dsatError,
  Keys,
  type Logger,
  createLogger,
  MemberKind,
  MemberSchema,
  MemberWatcher,
  PipelineService,
  type Registration,
  type RunningGrpcServer,
  registerMember,
  ServingStatus,
  StatusService,
  startGrpcServer,
  toDsatError,
} from "@dsat/sdk";
import type * as grpc from "@grpc/grpc-js";
import type { Etcd3 } from "etcd3";
import { withDeadline } from "../common/deadline.ts";
import type { EmbeddedStatus } from "../common/embedded-status.ts";
import { DEFAULT_ETCD_SPACE_OPTIONS, EtcdSpaceWatch } from "./etcd-space.ts";
import { PipelineHandlers, StatusHandlers } from "./handlers.ts";
import { OpenIndex } from "./open-index.ts";
import { resolveStatusOptions, type StatusOptions } from "./options.ts";
import { COMPACT_HISTORY_SINCE, readsCompact, writeCompact } from "./state-encoding.ts";
import { TaskStore } from "./task-store.ts";

/** How long close() lets running calls finish before it cuts them, in milliseconds. */
const CLOSE_GRACE_MS = 5_000;

/** The services a status server serves, for health and reflection. */
const STATUS_SERVICES = [StatusService, PipelineService] as const;

/** What a status server is made of, wherever it is served. */
interface StatusParts {
  readonly opts: StatusOptions;
  readonly etcd: Etcd3;
  readonly store: TaskStore;
  readonly index: OpenIndex;
  readonly status: StatusHandlers;
  readonly pipelines: PipelineHandlers;
  readonly log: Logger;
}

/**
 * StatusServer serves StatusService and PipelineService (plus health and reflection)
 * and registers itself in etcd as a STATUS member. Any number of them may run against
 * one etcd: each reads and fences its writes there, so they answer alike. It runs as a
 * process of its own ({@link StatusServer.start}) or inside a router's process, served by the
 * router's gRPC server ({@link StatusServer.embed}).
 */
export class StatusServer {
  /** The member id. */
  readonly id: string;
  /** host:port where the gRPC server listens. */
  readonly address: string;
  /** The options in force, defaults applied. */
  readonly options: Readonly<StatusOptions>;
  readonly #etcd: Etcd3;
  readonly #ownsEtcd: boolean;
  readonly #grpc: RunningGrpcServer;
  /** False when the gRPC server is another's (embedded): close leaves it running. */
  readonly #ownsGrpc: boolean;
  readonly #registration: Registration;
  readonly #store: TaskStore;
  readonly #index: OpenIndex;
  readonly #status: StatusHandlers;
  readonly #space: EtcdSpaceWatch;
  readonly #peers: MemberWatcher;
  readonly #log: Logger;
  #closing: Promise<void> | undefined;

  private constructor(init: {
    parts: StatusParts;
    ownsEtcd: boolean;
    grpc: RunningGrpcServer;
    ownsGrpc: boolean;
    registration: Registration;
    space: EtcdSpaceWatch;
    peers: MemberWatcher;
  }) {
    this.options = Object.freeze(init.parts.opts);
    this.id = init.parts.opts.id;
    this.address = init.grpc.address;
    this.#etcd = init.parts.etcd;
    this.#ownsEtcd = init.ownsEtcd;
    this.#grpc = init.grpc;
    this.#ownsGrpc = init.ownsGrpc;
    this.#registration = init.registration;
    this.#store = init.parts.store;
    this.#index = init.parts.index;
    this.#space = init.space;
    this.#status = init.parts.status;
    this.#peers = init.peers;
    this.#log = init.parts.log;
  }

  /** Whether this server writes compact task states now (see state-encoding.ts). */
  get compactHistory(): boolean {
    return this.#store.compactHistory;
  }

  /** Whether ClaimTasks reads the index of unfinished tasks now (see open-index.ts). */
  get openIndexUsable(): boolean {
    return this.#index.usable;
  }

  /** Builds of the index of unfinished tasks that this server ran to the end. */
  get openIndexBuilds(): number {
    return this.#index.builds;
  }

  /** Waits for a build of the index of unfinished tasks that is under way. */
  openIndexSettled(): Promise<void> {
    return this.#index.settled();
  }

  /**
   * Starts a StatusServer: checks that etcd answers (UNAVAILABLE within connectTimeoutMs
   * when it does not), listens, registers under a lease, then reports SERVING.
   */
  static async start(options: Partial<StatusOptions> = {}): Promise<StatusServer> {
    const opts = resolveStatusOptions(options);
    const ownsEtcd = typeof opts.etcd === "string";
    const etcd = typeof opts.etcd === "string" ? connectEtcd({ endpoints: opts.etcd }) : opts.etcd;
    let grpcServer: RunningGrpcServer | undefined;
    try {
      await checkEtcd(etcd, opts);
      const parts = statusParts(opts, etcd);
      grpcServer = await startGrpcServer(STATUS_SERVICES, (server) => addStatusServices(server, parts), {
        host: opts.host,
        port: opts.port,
        advertise: opts.advertise,
      });
      return await StatusServer.#serve(parts, ownsEtcd, grpcServer, true);
    } catch (err) {
      await grpcServer?.close(0);
      if (ownsEtcd) etcd.close();
      throw toDsatError(err);
    }
  }

  /**
   * Makes a status server to serve inside another gRPC server of this process, with the
   * host's etcd client (which the host closes). Its host, port and advertise options are
   * unused: it is reached at the host's address.
   */
  static embed(options: Partial<StatusOptions> & { etcd: Etcd3 }): EmbeddedStatus & { start(server: RunningGrpcServer): Promise<StatusServer> } {
    const opts = resolveStatusOptions(options);
    const parts = statusParts(opts, options.etcd);
    return {
      services: STATUS_SERVICES,
      store: parts.store,
      addToServer: (server) => addStatusServices(server, parts),
      start: async (server) => {
        await checkEtcd(options.etcd, opts);
        return StatusServer.#serve(parts, false, server, false);
      },
    };
  }

  /** Registers a status server that listens now, and reports its services SERVING. */
  static async #serve(parts: StatusParts, ownsEtcd: boolean, grpcServer: RunningGrpcServer, ownsGrpc: boolean) {
    const { opts, etcd, log } = parts;
    const member = create(MemberSchema, {
      id: opts.id,
      kind: MemberKind.STATUS,
      address: grpcServer.address,
      version: DSAT_VERSION,
      pid: process.pid,
      host: hostname(),
      runtime: `node/${process.versions.node}`,
      startedAt: timestampNow(),
    });
    const registration = await registerMember(etcd, member, { leaseTtlSeconds: opts.leaseTtlSeconds, prefix: opts.prefix });
    registration.on("lost", (err: unknown) => {
      log.warn("membership lease lost; registering again", { error: toDsatError(err).message });
    });
    let peers: MemberWatcher;
    try {
      peers = await watchStatusPeers(parts);
    } catch (err) {
      await registration.close().catch(() => {});
      throw err;
    }
    setHealth(grpcServer, ownsGrpc, ServingStatus.SERVING);
    log.info("serving", { address: grpcServer.address, ...(ownsGrpc ? {} : { in: "this process's router" }) });
    const space = new EtcdSpaceWatch(
      etcd,
      { ...DEFAULT_ETCD_SPACE_OPTIONS, quotaBytes: opts.etcdQuotaBytes, checkMs: opts.etcdSpaceCheckMs },
      log,
      opts.metrics,
    );
    return new StatusServer({ parts, ownsEtcd, grpc: grpcServer, ownsGrpc, registration, space, peers });
  }

  /**
   * Leaves the mesh and stops: NOT_SERVING, the registration revoked, open Watches ended
   * (UNAVAILABLE), running reports finished, the server shut down (unless it is another's),
   * etcd closed if this server connected it. Safe to call more than once.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    setHealth(this.#grpc, this.#ownsGrpc, ServingStatus.NOT_SERVING);
    await this.#registration.close().catch((err: unknown) => {
      this.#log.warn("revoking the registration failed", { error: toDsatError(err).message });
    });
    this.#status.close();
    this.#space.close();
    await this.#peers.close();
    this.#index.close();
    await this.#index.settled();
    if (this.#ownsGrpc) await this.#grpc.close(CLOSE_GRACE_MS);
    await this.#store.close();
    if (this.#ownsEtcd) this.#etcd.close();
  }
}

function statusParts(opts: StatusOptions, etcd: Etcd3): StatusParts {
  const log = createLogger({ service: "status", id: opts.id });
  const keys = new Keys(opts.prefix);
  const store = new TaskStore(etcd, opts, log);
  const index = new OpenIndex(etcd, keys, log, opts);
  return {
    opts,
    etcd,
    store,
    index,
    status: new StatusHandlers(etcd, store, keys, log, index),
    pipelines: new PipelineHandlers(etcd, keys, log),
    log,
  };
}

function addStatusServices(server: grpc.Server, parts: StatusParts): void {
  parts.status.addToServer(server);
  parts.pipelines.addToServer(server);
}

/** The health of a status server's services: of the whole server when it owns it, else of its own services only. */
function setHealth(server: RunningGrpcServer, owns: boolean, status: ServingStatus): void {
  if (owns) server.health.setAll(status);
  else for (const s of STATUS_SERVICES) server.health.setStatus(s.typeName, status);
}

/**
 * Watches the status servers registered in etcd and keeps `store.compactHistory` true
 * while every one of them reads compact task states: during a rolling upgrade from an
 * older dsat the new servers write whole ones until the last old server has left. Tells
 * the index of unfinished tasks the same versions: it is used only while every server
 * keeps it (open-index.ts).
 */
async function watchStatusPeers(parts: StatusParts): Promise<MemberWatcher> {
  const { etcd, store, index, log } = parts;
  const peers = new MemberWatcher(etcd, new Keys(parts.opts.prefix).membersOf("status"));
  let pending = false;
  const decide = () => {
    pending = false;
    const members = [...peers.members.values()];
    void index.peers(members.map((m) => m.version));
    const compact = writeCompact(store.compactHistory, members.map((m) => m.version));
    if (compact === store.compactHistory) return;
    store.compactHistory = compact;
    if (compact) {
      log.info("every status server reads compact task states: writing them without the task id in each history entry");
    } else {
      const old = members.filter((m) => !readsCompact(m.version)).map((m) => `${m.id} (${m.version})`);
      log.info("writing whole task states: not every status server reads compact ones", {
        [`older than ${COMPACT_HISTORY_SINCE}`]: old.join(", "),
      });
    }
  };
  // A snapshot after a reconnection comes as many events at once: decide after the last.
  const later = () => {
    if (pending) return;
    pending = true;
    queueMicrotask(decide);
  };
  await peers.start();
  decide();
  peers.on("up", later);
  peers.on("down", later);
  return peers;
}

/** The first etcd call, bounded: a clear UNAVAILABLE rather than a long hang. */
async function checkEtcd(etcd: Etcd3, opts: StatusOptions): Promise<void> {
  const where = typeof opts.etcd === "string" ? opts.etcd : "the given client";
  try {
    await withDeadline(
      etcd.kv.range({ key: Buffer.from(new Keys(opts.prefix).members()), limit: 1, keys_only: true }),
      opts.connectTimeoutMs,
      () => dsatError(Code.Unavailable, `cannot reach etcd at ${where} within ${opts.connectTimeoutMs} ms`),
    );
  } catch (err) {
    const e = toDsatError(err);
    if (e.code === Code.Unavailable && e.rawMessage.startsWith("cannot reach etcd")) throw e;
    throw dsatError(Code.Unavailable, `cannot reach etcd at ${where}: ${e.rawMessage}`, err);
  }
}
