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
import type { Etcd3 } from "etcd3";
import { DEFAULT_ETCD_SPACE_OPTIONS, EtcdSpaceWatch } from "./etcd-space.ts";
import { PipelineHandlers, StatusHandlers } from "./handlers.ts";
import { resolveStatusOptions, type StatusOptions } from "./options.ts";
import { COMPACT_HISTORY_SINCE, readsCompact, writeCompact } from "./state-encoding.ts";
import { TaskStore } from "./task-store.ts";

/** How long close() lets running calls finish before it cuts them, in milliseconds. */
const CLOSE_GRACE_MS = 5_000;

/**
 * StatusServer serves StatusService and PipelineService (plus health and reflection)
 * and registers itself in etcd as a STATUS member. Any number of them may run against
 * one etcd: each reads and fences its writes there, so they answer alike.
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
  readonly #registration: Registration;
  readonly #store: TaskStore;
  readonly #status: StatusHandlers;
  readonly #space: EtcdSpaceWatch;
  readonly #peers: MemberWatcher;
  readonly #log: Logger;
  #closing: Promise<void> | undefined;

  private constructor(init: {
    options: StatusOptions;
    etcd: Etcd3;
    ownsEtcd: boolean;
    grpc: RunningGrpcServer;
    registration: Registration;
    store: TaskStore;
    status: StatusHandlers;
    space: EtcdSpaceWatch;
    peers: MemberWatcher;
    log: Logger;
  }) {
    this.options = Object.freeze(init.options);
    this.id = init.options.id;
    this.address = init.grpc.address;
    this.#etcd = init.etcd;
    this.#ownsEtcd = init.ownsEtcd;
    this.#grpc = init.grpc;
    this.#registration = init.registration;
    this.#store = init.store;
    this.#space = init.space;
    this.#status = init.status;
    this.#peers = init.peers;
    this.#log = init.log;
  }

  /** Whether this server writes compact task states now (see state-encoding.ts). */
  get compactHistory(): boolean {
    return this.#store.compactHistory;
  }

  /**
   * Starts a StatusServer: checks that etcd answers (UNAVAILABLE within connectTimeoutMs
   * when it does not), listens, registers under a lease, then reports SERVING.
   */
  static async start(options: Partial<StatusOptions> = {}): Promise<StatusServer> {
    const opts = resolveStatusOptions(options);
    const ownsEtcd = typeof opts.etcd === "string";
    const etcd = typeof opts.etcd === "string" ? connectEtcd({ endpoints: opts.etcd }) : opts.etcd;
    const log = createLogger({ service: "status", id: opts.id });
    const keys = new Keys(opts.prefix);
    let grpcServer: RunningGrpcServer | undefined;
    let peers: MemberWatcher | undefined;
    try {
      await checkEtcd(etcd, opts);
      const store = new TaskStore(etcd, opts, log);
      const status = new StatusHandlers(etcd, store, keys, log);
      const pipelines = new PipelineHandlers(etcd, keys, log);
      grpcServer = await startGrpcServer(
        [StatusService, PipelineService],
        (server) => {
          status.addToServer(server);
          pipelines.addToServer(server);
        },
        { host: opts.host, port: opts.port, advertise: opts.advertise },
      );
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
      const registration = await registerMember(etcd, member, {
        leaseTtlSeconds: opts.leaseTtlSeconds,
        prefix: opts.prefix,
      });
      registration.on("lost", (err: unknown) => {
        log.warn("membership lease lost; registering again", { error: toDsatError(err).message });
      });
      peers = await watchStatusPeers(etcd, keys, store, log);
      grpcServer.health.setAll(ServingStatus.SERVING);
      log.info("serving", { address: grpcServer.address });
      const space = new EtcdSpaceWatch(
        etcd,
        { ...DEFAULT_ETCD_SPACE_OPTIONS, quotaBytes: opts.etcdQuotaBytes, checkMs: opts.etcdSpaceCheckMs },
        log,
        opts.metrics,
      );
      return new StatusServer({ options: opts, etcd, ownsEtcd, grpc: grpcServer, registration, store, status, space, peers, log });
    } catch (err) {
      await peers?.close();
      await grpcServer?.close(0);
      if (ownsEtcd) etcd.close();
      throw toDsatError(err);
    }
  }

  /**
   * Leaves the mesh and stops: NOT_SERVING, the registration revoked, open Watches ended
   * (UNAVAILABLE), running reports finished, the server shut down, etcd closed if this
   * server connected it. Safe to call more than once.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#grpc.health.setAll(ServingStatus.NOT_SERVING);
    await this.#registration.close().catch((err: unknown) => {
      this.#log.warn("revoking the registration failed", { error: toDsatError(err).message });
    });
    this.#status.close();
    this.#space.close();
    await this.#peers.close();
    await this.#grpc.close(CLOSE_GRACE_MS);
    await this.#store.close();
    if (this.#ownsEtcd) this.#etcd.close();
  }
}

/**
 * Watches the status servers registered in etcd and keeps `store.compactHistory` true
 * while every one of them reads compact task states: during a rolling upgrade from an
 * older dsat the new servers write whole ones until the last old server has left.
 */
async function watchStatusPeers(etcd: Etcd3, keys: Keys, store: TaskStore, log: Logger): Promise<MemberWatcher> {
  const peers = new MemberWatcher(etcd, keys.membersOf("status"));
  let pending = false;
  const decide = () => {
    pending = false;
    const members = [...peers.members.values()];
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
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(dsatError(Code.Unavailable, `cannot reach etcd at ${where} within ${opts.connectTimeoutMs} ms`)),
      opts.connectTimeoutMs,
    );
  });
  try {
    await Promise.race([etcd.kv.range({ key: Buffer.from(new Keys(opts.prefix).members()), limit: 1, keys_only: true }), timeout]);
  } catch (err) {
    const e = toDsatError(err);
    if (e.code === Code.Unavailable && e.rawMessage.startsWith("cannot reach etcd")) throw e;
    throw dsatError(Code.Unavailable, `cannot reach etcd at ${where}: ${e.rawMessage}`, err);
  } finally {
    clearTimeout(timer);
  }
}
