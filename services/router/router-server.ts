import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationMs, type Timestamp, timestampDate, timestampFromMs, timestampNow } from "@bufbuild/protobuf/wkt";
import {
  activeTracer,
  type Assignment,
  CancelSchema,
  Code,
  clientTo,
  type ConnectError,
  codeName,
  connectEtcd,
  createLogger,
  DSAT_VERSION,
  defaultEtcdEndpoints,
  dsatError,
  isCompatible,
  isTaskTerminal,
  Keys,
  type ListWorkersResponseSchema,
  type WorkerViewSchema,
  type Logger,
  type Member,
  MemberKind,
  MemberSchema,
  MemberWatcher,
  encodePayload,
  type Pipeline,
  PipelineSchema,
  PrefixWatch,
  type ProcessRequest,
  type ProcessResponseSchema,
  WorkerService,
  Registration,
  RoundRobin,
  RouterService,
  type RunningGrpcServer,
  ServingStatus,
  type Stage,
  startGrpcServer,
  State,
  StatusService,
  type SubmitRequest,
  type Task,
  type TaskError,
  TaskErrorSchema,
  type TaskResult,
  TaskResultSchema,
  TaskSchema,
  type TaskState,
  type Transition,
  TransitionSchema,
  toDsatError,
  addService,
} from "@dsat/sdk";
import type * as grpc from "@grpc/grpc-js";
import type { Etcd3 } from "etcd3";
import type { EmbeddedStatus } from "../common/embedded-status.ts";
import { encodeTaskBase, rememberTaskBase } from "./assignment-encoding.ts";
import { submitStreamHandler } from "./handlers.ts";
import { checkRouterOptions, DEFAULT_ROUTER_OPTIONS, type RouterOptions } from "./options.ts";
import { ForgottenAttempts } from "./forgotten-attempts.ts";
import { PipelineCache } from "./pipeline-cache.ts";
import { graphOf } from "./pipeline-graph.ts";
import { adoptTraceMetadata, type BatchHop, RouterTelemetry } from "./router-telemetry.ts";
import { StatusReporter } from "./status-reporter.ts";
import type { StageRun, TaskRun } from "./task-run.ts";
import { WorkerLink } from "./worker-link.ts";

/** A stage's output as a value for a join's input: JSON when it is JSON, else its text. */
function decodeOutput(bytes: Uint8Array): unknown {
  const text = new TextDecoder().decode(bytes);
  try {
    return text.length === 0 ? null : JSON.parse(text);
  } catch {
    return text;
  }
}

const TASK_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

/**
 * A stage attempt that failed UNAVAILABLE was lost, not failed: its worker or its router
 * went away, or the worker was draining. It runs again elsewhere, and does not count
 * against the stage's retry policy.
 */
function lost(error: TaskError | undefined): error is TaskError {
  return error?.code === UNAVAILABLE;
}
const UNAVAILABLE = codeName(Code.Unavailable);

/** A task as the router drives it, before any stage starts. */
function newRun(task: Task, pipeline: Pipeline, state: State): TaskRun {
  return {
    task,
    pipeline,
    state,
    stages: new Map(),
    active: 0,
    output: new Uint8Array(0),
    outputs: new Map(),
    joins: new Set(),
    deadlineTimer: undefined,
  };
}

/** How long close waits for what is queued for StatusService to be stored. */
const CLOSE_FLUSH_MS = 10_000;
const EMPTY_BYTES = new Uint8Array(0);

/**
 * The router: accepts tasks, keeps one Process stream per live worker it sees in etcd,
 * picks a worker for each stage round-robin among those with a free slot (a stage queue
 * when none has one), reports every transition to StatusService, and moves each output
 * on to the stages the pipeline graph names.
 */
export class RouterServer {
  readonly id: string;
  readonly address: string;
  readonly #opts: RouterOptions;
  readonly #log: Logger;
  readonly #etcd: Etcd3;
  readonly #ownEtcd: boolean;
  readonly #keys: Keys;
  readonly #server: RunningGrpcServer;
  readonly #registration: Registration;
  readonly #workers: MemberWatcher;
  readonly #statusMembers: MemberWatcher;
  readonly #routers: MemberWatcher;
  readonly #pipelines: PipelineCache;
  readonly #reporter: StatusReporter;
  /** The status server this process serves with the router (embedStatus), before and once it started. */
  readonly #embeddedStatus: EmbeddedStatus | undefined;
  #statusServer: { close(): Promise<void> } | undefined;
  /** Spans and metrics; undefined when both are off. */
  readonly #telemetry: RouterTelemetry | undefined;
  readonly #tasks = new Map<string, TaskRun>();
  /** Tasks that ended here and whose end is not stored yet. */
  readonly #ending = new Set<string>();
  /** The attempts of tasks this router stopped driving: never dispatched again with those numbers. */
  readonly #forgotten = new ForgottenAttempts();
  /** Links by worker member key. */
  readonly #links = new Map<string, WorkerLink>();
  /** Round-robin of links, per stage. */
  readonly #rotation = new Map<string, RoundRobin<WorkerLink>>();
  /** Stage runs waiting for a free worker, per stage. */
  readonly #queues = new Map<string, StageRun[]>();
  /** Workers refused, by member key: why. */
  readonly #refused = new Map<string, { member: Member; error: ConnectError }>();
  /** Assignments from routers of other satellites, by attempt key. */
  readonly #proxied = new Map<string, ProxyItem>();
  /** Of those, the ones waiting for a local worker, per stage. */
  readonly #proxyQueue = new Map<string, ProxyItem[]>();
  /** Streams that broke in a row, by member key: how long to wait before dialling again. */
  readonly #redials = new Map<string, number>();
  readonly #resultListeners = new Map<string, Set<(r: TaskResult) => void>>();
  #cancelWatch: PrefixWatch | undefined;
  #draining = false;
  #closed = false;
  /** Counters, for `ListWorkers`, metrics and benchmarks. */
  readonly counters = { accepted: 0, succeeded: 0, failed: 0, dispatched: 0, redelivered: 0 };

  private constructor(init: {
    opts: RouterOptions;
    log: Logger;
    etcd: Etcd3;
    ownEtcd: boolean;
    server: RunningGrpcServer;
    embeddedStatus: EmbeddedStatus | undefined;
  }) {
    this.#opts = init.opts;
    this.id = init.opts.id;
    this.#log = init.log;
    this.#etcd = init.etcd;
    this.#ownEtcd = init.ownEtcd;
    this.#server = init.server;
    this.#embeddedStatus = init.embeddedStatus;
    this.address = init.server.address;
    this.#keys = new Keys(init.opts.prefix);
    this.#workers = new MemberWatcher(this.#etcd, this.#keys.membersOf("worker"));
    this.#statusMembers = new MemberWatcher(this.#etcd, this.#keys.membersOf("status"));
    this.#routers = new MemberWatcher(this.#etcd, this.#keys.membersOf("router"));
    this.#pipelines = new PipelineCache(this.#etcd, this.#keys);
    this.#telemetry = RouterTelemetry.create({
      routerId: this.id,
      tracer: activeTracer(),
      metrics: init.opts.metrics,
      queueDepths: () => [...this.#queues].map(([stage, q]) => [stage, q.length] as const),
      stageLoad: () => {
        const load = new Map<string, [string, number, number]>();
        for (const l of this.#links.values()) {
          if (!l.ready || l.closed) continue;
          const s = load.get(l.member.stage) ?? [l.member.stage, 0, 0];
          s[1] += l.inFlight.size;
          s[2] += l.capacity;
          load.set(l.member.stage, s);
        }
        return load.values();
      },
      taskCount: () => this.#tasks.size,
      statusBacklog: () => {
        const held = this.#reporter.held;
        return { queued: this.#reporter.backlog - held, held };
      },
      statusReports: () => this.#reporter.reports,
    });
    const telemetry = this.#telemetry;
    this.#reporter = new StatusReporter(
      this.id,
      () => [...this.#statusMembers.members.values()].sort((a, b) => a.id.localeCompare(b.id)),
      this.#log,
      {
        ...(telemetry
          ? {
              onTransition: (t: Transition) => telemetry.reported(t),
              onReport: (items: number, seconds: number, ok: boolean) => telemetry.statusReport(items, seconds, ok),
            }
          : {}),
        onNotOwner: (taskId: string, reason: string) => this.#drop(taskId, reason),
        lingerMs: init.opts.statusLingerMs,
        lanes: init.opts.statusLanes,
        giveUpAfterMs: init.opts.statusGiveUpMs,
        ...(init.embeddedStatus ? { local: init.embeddedStatus.store } : {}),
      },
    );
    const member = create(MemberSchema, {
      id: this.id,
      kind: MemberKind.ROUTER,
      address: this.address,
      version: init.opts.protocolVersion,
      satellite: init.opts.satellite,
      startedAt: timestampNow(),
      pid: process.pid,
      host: hostname(),
      runtime: `node/${process.versions.node}`,
    });
    this.#registration = new Registration(this.#etcd, member, {
      leaseTtlSeconds: init.opts.leaseTtlSeconds,
      prefix: init.opts.prefix,
    });
    this.#registration.on("lost", (err: unknown) => this.#log.warn("lease lost; registering again", { error: err }));
  }

  /** Starts a router: its gRPC server, its view of etcd, and its registration. */
  static async start(options: Partial<RouterOptions> = {}): Promise<RouterServer> {
    const id = options.id ?? `router-${hostname()}-${process.pid}-${randomUUID().slice(0, 4)}`;
    const opts: RouterOptions = {
      ...DEFAULT_ROUTER_OPTIONS,
      etcd: defaultEtcdEndpoints(),
      protocolVersion: DSAT_VERSION,
      logger: createLogger(),
      ...options,
      id,
    };
    checkRouterOptions(opts);
    const log = opts.logger.child({ member: id });
    const ownEtcd = typeof opts.etcd === "string";
    const etcd = typeof opts.etcd === "string" ? connectEtcd({ endpoints: opts.etcd }) : opts.etcd;
    let router: RouterServer | undefined;
    const embeddedStatus = opts.embedStatus?.(etcd, id, opts.statusLanes);
    const server = await startGrpcServer(
      [RouterService, WorkerService, ...(embeddedStatus?.services ?? [])],
      (s) => {
        embeddedStatus?.addToServer(s);
        // A router is the gateway of its satellite: routers of other satellites reach the
        // stages served here through it, as if it were a worker of each.
        addService(s, WorkerService, { process: (call) => (router as RouterServer).serveGateway(call) });
        addService(s, RouterService, {
          submit: (req, call) => (router as RouterServer).submit(adoptTraceMetadata(req, call.metadata)),
          submitStream: (call) => submitStreamHandler(router as RouterServer, call),
          cancel: async (req) => {
            await (router as RouterServer).cancel(req.taskId, req.reason);
            return {};
          },
          listWorkers: async () => (router as RouterServer).listWorkers(),
        });
      },
      { host: opts.host, port: opts.port, advertise: opts.advertise, maxMessageBytes: opts.maxPayloadBytes + 64 * 1024 },
    );
    router = new RouterServer({ opts, log, etcd, ownEtcd, server, embeddedStatus });
    try {
      await router.#begin();
    } catch (err) {
      await router.close();
      throw toDsatError(err);
    }
    return router;
  }

  async #begin(): Promise<void> {
    if (this.#embeddedStatus) this.#statusServer = await this.#embeddedStatus.start(this.#server);
    await this.#statusMembers.start();
    await this.#pipelines.start();
    this.#workers.on("up", (m: Member) => this.#workerUp(m));
    this.#workers.on("down", (m: Member) => this.#workerDown(m));
    await this.#workers.start();
    const cancels = this.#keys.cancels();
    const onCancel = (key: Buffer, value: Buffer) => {
      const run = this.#tasks.get(key.toString().slice(cancels.length));
      if (!run) return;
      this.#cancelTask(run, value.toString() || "cancelled");
      void this.#etcd.delete().key(key).exec().catch(() => {});
    };
    this.#cancelWatch = new PrefixWatch(this.#etcd, cancels, {
      onSnapshot: (kvs) => {
        for (const kv of kvs) onCancel(kv.key, kv.value);
      },
      onPut: (kv) => onCancel(kv.key, kv.value),
      onDelete: () => {},
      onTrouble: (err) => this.#log.debug("cancel watch mended", { error: err }),
    });
    await this.#cancelWatch.start();
    await this.#registration.start();
    // Routers that leave the mesh leave their unfinished tasks to the others; tasks of
    // routers that were gone before this one started are claimed now.
    this.#routers.on("down", (m: Member) => {
      // A router whose record comes back soon only re-registered (etcd restarted, a lost
      // lease): claim only from one still gone a lease TTL later. Fencing keeps either
      // choice safe; the wait saves moving tasks back and forth.
      if (m.id !== this.id) {
        setTimeout(() => {
          const back = [...this.#routers.members.values()].some((r) => r.id === m.id);
          if (!back) void this.#claimFrom(m.id);
        }, this.#opts.leaseTtlSeconds * 1000).unref();
      }
      if (m.satellite !== this.#opts.satellite) this.#syncGateways();
    });
    this.#routers.on("up", (m: Member) => {
      if (m.satellite !== this.#opts.satellite) this.#syncGateways();
    });
    await this.#routers.start();
    void this.#claimFrom("");
    this.#server.health.setAll(ServingStatus.SERVING);
    this.#log.info("router serving", { address: this.address });
  }

  /** Submissions between the limit check and the task table. */
  #admitting = 0;
  readonly #roomWaiters: (() => void)[] = [];

  /** True when one more task may be accepted. */
  get hasRoom(): boolean {
    return this.#tasks.size + this.#admitting + this.#endedUnstored < this.#opts.maxTasks;
  }

  /**
   * Tasks that started before they were stored and ended before their create was settled:
   * they still count against maxTasks, so that while StatusService stores nothing (an outage)
   * admission stops at the limit instead of running ever more tasks whose ends pile up in
   * the reporter.
   */
  #endedUnstored = 0;

  /** A SubmitStream request came with this many tasks (for metrics). */
  submitBatch(tasks: number): void {
    this.#telemetry?.batch("client", tasks);
  }

  /**
   * Resolves with a slot taken for one more task, once there is one: SubmitStream waits
   * here instead of refusing. Pass `reserved` to submit() with it.
   */
  acquireRoom(): Promise<void> {
    if ((this.hasRoom && this.#roomWaiters.length === 0) || this.#closed) {
      this.#admitting++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#roomWaiters.push(resolve));
  }

  /** Hands free slots to waiting submissions, one each, in order. */
  #wakeRoomWaiters(): void {
    while (this.#roomWaiters.length > 0 && (this.hasRoom || this.#closed)) {
      this.#admitting++;
      this.#roomWaiters.shift()?.();
    }
  }

  /** Tasks held now (accepted, not ended). */
  get taskCount(): number {
    return this.#tasks.size;
  }

  /** The options in force. */
  get options(): Readonly<RouterOptions> {
    return this.#opts;
  }

  // ------------------------------------------------------------------ workers

  #workerUp(m: Member): void {
    if (m.satellite !== this.#opts.satellite) {
      this.#syncGateways();
      return;
    }
    const key = this.#keys.member("worker", m.id);
    const existing = this.#links.get(key);
    if (existing && existing.member.address === m.address && !existing.closed) {
      // Back after its lease lapsed (or registered again): it takes tasks again.
      if (existing.leaving) {
        existing.leaving = false;
        this.#pump(m.stage);
      }
      return;
    }
    if (!isCompatible(m.version, this.#opts.protocolVersion)) {
      const error = dsatError(
        Code.FailedPrecondition,
        `worker ${m.id} (stage "${m.stage}") runs dsat ${m.version} but router ${this.id} runs ${this.#opts.protocolVersion}: their X.Y must match`,
      );
      this.#refused.set(key, { member: m, error });
      this.#log.warn("refused a worker of another version", { worker: m.id, version: m.version });
      return;
    }
    this.#refused.delete(key);
    this.#connect(key, m);
    this.#syncGateways();
  }

  #connect(key: string, m: Member): void {
    const telemetry = this.#telemetry;
    const link = new WorkerLink(m, this.id, this.#opts.protocolVersion, {
      onReady: (l) => {
        this.#redials.delete(key);
        this.#pump(l.member.stage);
      },
      onTransition: (l, t) => this.#onWorkerTransition(l, t),
      onClosed: (l, err) => this.#onLinkClosed(key, l, err),
      ...(telemetry ? { onMessage: (direction: BatchHop, items: number) => telemetry.batch(direction, items) } : {}),
    });
    this.#links.set(key, link);
    let rr = this.#rotation.get(m.stage);
    if (!rr) this.#rotation.set(m.stage, (rr = new RoundRobin()));
    rr.add(link);
  }

  #workerDown(m: Member): void {
    if (m.satellite !== this.#opts.satellite) {
      this.#syncGateways();
      return;
    }
    const key = this.#keys.member("worker", m.id);
    this.#refused.delete(key);
    const link = this.#links.get(key);
    if (!link) return;
    // No new task goes to it; what runs there may still finish (a drain).
    link.leaving = true;
    if (link.inFlight.size === 0) link.close();
  }

  #onLinkClosed(key: string, link: WorkerLink, err: ConnectError | undefined): void {
    if (this.#links.get(key) === link) this.#links.delete(key);
    this.#rotation.get(link.member.stage)?.remove(link);
    if (err?.code === Code.FailedPrecondition) {
      this.#refused.set(key, { member: link.member, error: err });
      this.#log.warn("a worker refused this router", { worker: link.member.id, error: err.rawMessage });
    } else if (err && !this.#closed) {
      this.#log.warn("worker stream broke", { worker: link.member.id, error: err.rawMessage, inFlight: link.inFlight.size });
    }
    // What the worker had not finished goes to another worker of the stage (for an
    // assignment from another satellite, its router decides).
    for (const a of link.inFlight.values()) {
      const px = this.#proxied.get(WorkerLink.key(a.task?.id ?? "", a.stage, a.attempt));
      if (px && px.link === link) this.#proxyLost(px, `worker ${link.member.id} was lost while it ran the task`);
      else this.#lostAttempt(a, link);
    }
    link.inFlight.clear();
    // A gateway whose stream broke is dialled again if the other satellite still needs it.
    if (link.gateway && !this.#closed) setTimeout(() => this.#syncGateways(), 500).unref();
    // A worker still in etcd whose stream broke for another reason is dialled again.
    const m = this.#workers.members.get(key);
    if (m && !this.#closed && err?.code !== Code.FailedPrecondition && !link.leaving) {
      const failures = (this.#redials.get(key) ?? 0) + 1;
      this.#redials.set(key, failures);
      setTimeout(() => {
        const again = this.#workers.members.get(key);
        if (again && !this.#links.has(key) && !this.#closed) this.#connect(key, again);
      }, Math.min(100 * 2 ** failures, 5_000)).unref();
    } else this.#redials.delete(key);
  }

  // ------------------------------------------------------------------ satellites

  /**
   * Keeps one gateway link per router of another satellite and per stage that only that
   * satellite serves: a WorkerLink to that router, whose capacity is the sum of that
   * satellite's workers of the stage. Stages served here never use a gateway.
   */
  #syncGateways(): void {
    if (this.#closed) return;
    const mine = this.#opts.satellite;
    const localStages = new Set<string>();
    const remote = new Map<string, Map<string, number>>(); // satellite -> stage -> capacity
    for (const w of this.#workers.members.values()) {
      if (!isCompatible(w.version, this.#opts.protocolVersion)) continue;
      if (w.satellite === mine) localStages.add(w.stage);
      else {
        let stages = remote.get(w.satellite);
        if (!stages) remote.set(w.satellite, (stages = new Map()));
        stages.set(w.stage, (stages.get(w.stage) ?? 0) + Math.max(1, w.capacity));
      }
    }
    const wanted = new Map<string, Member>();
    for (const r of this.#routers.members.values()) {
      if (r.satellite === mine || r.draining || !isCompatible(r.version, this.#opts.protocolVersion)) continue;
      for (const [stage, capacity] of remote.get(r.satellite) ?? []) {
        if (localStages.has(stage)) continue;
        const m = create(MemberSchema, { ...r, stage, capacity, kind: MemberKind.ROUTER });
        wanted.set(`gateway/${r.id}/${stage}`, m);
      }
    }
    for (const [key, link] of this.#links) {
      if (!link.gateway) continue;
      const w = wanted.get(key);
      if (!w) {
        link.leaving = true;
        if (link.inFlight.size === 0) link.close();
      } else link.member.capacity = w.capacity;
    }
    for (const [key, m] of wanted) {
      const existing = this.#links.get(key);
      if (existing && !existing.closed && !existing.leaving) continue;
      this.#connect(key, m);
      const link = this.#links.get(key);
      if (link) link.gateway = true;
      this.#log.info("gateway to another satellite", { satellite: m.satellite, router: m.id, stage: m.stage });
    }
  }

  /**
   * Serves WorkerService for routers of other satellites: each assignment runs on a local
   * worker of its stage (queued while none has a slot), and that worker's transitions go
   * back up the stream, so the router that drives the task records them as they are.
   */
  serveGateway(call: grpc.ServerDuplexStream<ProcessRequest, MessageInitShape<typeof ProcessResponseSchema>>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const routerVersion = String(call.metadata.get("dsat-version")[0] ?? "");
      const from = String(call.metadata.get("dsat-router-id")[0] ?? "a router");
      if (routerVersion && !isCompatible(routerVersion, this.#opts.protocolVersion)) {
        reject(
          dsatError(
            Code.FailedPrecondition,
            `router ${from} runs dsat ${routerVersion} but router ${this.id} runs ${this.#opts.protocolVersion}: their X.Y must match`,
          ),
        );
        return;
      }
      const up: Upstream = { call, closed: false };
      call.write({ hello: this.#registration.member });
      call.on("data", (req: ProcessRequest) => {
        for (const a of req.assignments) {
          const key = WorkerLink.key(a.task?.id ?? "", a.stage, a.attempt);
          if (this.#proxied.has(key)) continue;
          const item: ProxyItem = { key, a, up, link: undefined, state: State.DISPATCHED };
          this.#proxied.set(key, item);
          let q = this.#proxyQueue.get(a.stage);
          if (!q) this.#proxyQueue.set(a.stage, (q = []));
          q.push(item);
          this.#pump(a.stage);
        }
        for (const c of req.cancels) {
          const px = this.#proxied.get(WorkerLink.key(c.taskId, c.stage, c.attempt));
          if (!px) continue;
          if (px.link) px.link.cancel(c);
          else this.#proxyTransition(px, create(TransitionSchema, {
            taskId: c.taskId, stage: c.stage, attempt: c.attempt, from: px.state, to: State.CANCELLED,
            time: timestampNow(), memberId: this.id,
            error: { code: codeName(Code.Canceled), message: c.reason || "cancelled" },
          }));
        }
      });
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        up.closed = true;
        // The router upstream is gone: what it sent here stops.
        for (const px of [...this.#proxied.values()]) {
          if (px.up !== up) continue;
          this.#proxied.delete(px.key);
          const q = this.#proxyQueue.get(px.a.stage);
          const i = q?.indexOf(px) ?? -1;
          if (q && i >= 0) q.splice(i, 1);
          if (px.link) {
            px.link.cancel(create(CancelSchema, { taskId: px.a.task?.id ?? "", stage: px.a.stage, attempt: px.a.attempt, reason: `router ${from} went away` }));
            px.link.settle(px.a.task?.id ?? "", px.a.stage, px.a.attempt);
            this.#pump(px.a.stage);
          }
        }
        resolve();
      };
      call.on("end", end);
      call.on("cancelled", end);
      call.on("error", end);
    });
  }

  #proxyTo(px: ProxyItem, link: WorkerLink): void {
    px.link = link;
    link.assign(px.a);
  }

  #proxyTransition(px: ProxyItem, t: Transition): void {
    px.state = t.to;
    if (!px.up.closed) px.up.call.write({ transitions: [t] });
    const terminal = t.to === State.SUCCEEDED || t.to === State.FAILED || t.to === State.TIMED_OUT || t.to === State.CANCELLED;
    if (!terminal) return;
    this.#proxied.delete(px.key);
    if (px.link) {
      px.link.settle(t.taskId, t.stage, t.attempt);
      this.#pump(px.a.stage);
    }
  }

  #proxyLost(px: ProxyItem, message: string): void {
    const error = create(TaskErrorSchema, { code: codeName(Code.Unavailable), message, retryable: true });
    this.#proxyTransition(px, create(TransitionSchema, {
      taskId: px.a.task?.id ?? "", stage: px.a.stage, attempt: px.a.attempt, from: px.state, to: State.FAILED,
      time: timestampNow(), memberId: this.id, error,
    }));
  }

  /** Picks links for queued stage runs while there are both. */
  #pump(stage: string): void {
    const rr = this.#rotation.get(stage);
    if (!rr) return;
    const local = (l: WorkerLink) => l.available && !l.gateway;
    // Assignments from routers of other satellites go to local workers only, in order.
    const proxied = this.#proxyQueue.get(stage);
    while (proxied && proxied.length > 0) {
      const link = rr.pick(local);
      if (!link) break;
      this.#proxyTo(proxied.shift() as ProxyItem, link);
    }
    const queue = this.#queues.get(stage);
    if (!queue || queue.length === 0) return;
    const hasLocal = rr.items.some((l) => !l.gateway && !l.leaving && !l.closed);
    while (queue.length > 0) {
      const link = rr.pick((l) => l.available && (!l.gateway || !hasLocal));
      if (!link) return;
      const sr = queue.shift() as StageRun;
      const run = sr.run;
      if (this.#tasks.get(run.task.id) !== run) continue;
      this.#dispatch(run, sr, link);
    }
  }

  // ------------------------------------------------------------------ tasks

  /**
   * Accepts a task: validates it, stores it durably, and starts its entry stages; resolves
   * once it is stored. RESOURCE_EXHAUSTED when the router holds maxTasks already, unless
   * `reserved` (a slot taken with acquireRoom).
   *
   * With `listener` (a client that waits for the result) and a fresh id (`fresh_id`, or
   * none), the task starts at once and its record may be stored with its end, in one write:
   * its create is held back like the steps that nobody waits for (StatusReporter,
   * statusLingerMs), and submit resolves once it is stored, so the client's answer still
   * means the task is durable. When submit resolves,
   * the listener is told exactly once: the result, or UNSPECIFIED when it is to be read from
   * StatusService (a task with that id existed, the task moved to another router); when
   * submit fails, never.
   */
  async submit(req: SubmitRequest, reserved = false, listener?: (r: TaskResult) => void): Promise<{ taskId: string }> {
    if (!reserved) {
      if (!this.hasRoom) {
        throw dsatError(
          Code.ResourceExhausted,
          `router ${this.id} holds ${this.#tasks.size} tasks, its limit; retry later or submit to another router`,
        );
      }
      this.#admitting++;
    }
    // The slot counts until the task is in the task table (or the submission failed).
    let counted = true;
    const tabled = () => {
      if (!counted) return;
      counted = false;
      this.#admitting--;
    };
    try {
      return await this.#admit(req, tabled, listener);
    } finally {
      tabled();
      this.#wakeRoomWaiters();
    }
  }

  async #admit(req: SubmitRequest, tabled: () => void, listener?: (r: TaskResult) => void): Promise<{ taskId: string }> {
    if (this.#draining || this.#closed) {
      throw dsatError(Code.Unavailable, `router ${this.id} is draining; submit to another router`);
    }
    if (!req.pipeline) throw dsatError(Code.InvalidArgument, "pipeline is required");
    if (req.taskId && !TASK_ID_RE.test(req.taskId)) {
      throw dsatError(Code.InvalidArgument, `task id "${req.taskId}" must match ${TASK_ID_RE.source}`);
    }
    if (req.payload.length > this.#opts.maxPayloadBytes) {
      throw dsatError(
        Code.ResourceExhausted,
        `payload of ${req.payload.length} bytes is over the limit of ${this.#opts.maxPayloadBytes} bytes`,
      );
    }
    if (req.deadline && timestampDate(req.deadline).getTime() <= Date.now()) {
      throw dsatError(Code.DeadlineExceeded, "the task's deadline has already passed");
    }
    // Told once at most, whoever tells it first (the task's end, a move, a duplicate).
    let told = false;
    const tell = listener
      ? (r: TaskResult) => {
          if (told) return;
          told = true;
          listener(r);
        }
      : undefined;
    const pipeline = await this.#pipelines.current(req.pipeline);
    if (!pipeline) {
      throw dsatError(Code.NotFound, `pipeline "${req.pipeline}" not found; apply it first (dsat pipeline apply FILE)`);
    }
    // Looked up after the last await before the task is tabled: two submits of one id at once
    // make one task.
    const held = req.taskId ? this.#tasks.get(req.taskId) : undefined;
    if (held) {
      // Submitted again while it runs here: the same task.
      if (tell) {
        if (held.accepted && !(await held.accepted)) {
          tell(this.#readFromStatus(held.task.id, "a task with this id existed already"));
        } else if (!this.onResult(held.task.id, tell)) {
          tell(this.#readFromStatus(held.task.id, "the task ended"));
        }
      }
      return { taskId: held.task.id };
    }
    const task = create(TaskSchema, {
      id: req.taskId || randomUUID(),
      pipeline: pipeline.name,
      pipelineVersion: pipeline.version,
      payload: req.payload,
      headers: req.headers,
      deadline: req.deadline,
      createdAt: timestampNow(),
    });
    const run = newRun(task, pipeline, State.PENDING);
    this.#tasks.set(task.id, run);
    tabled();
    const entries = graphOf(pipeline).entries.map((name) => this.#newStage(run, name, task.payload));
    const first = entries.map((sr) => this.#transition(run, sr, State.UNSPECIFIED, State.PENDING));
    // Started before it is stored only when its id names no task yet: an id reused as an
    // idempotency key must not run anything when its task exists.
    const early = tell !== undefined && (req.freshId || !req.taskId);
    const creating = this.#reporter.create(task, first, early);
    run.accepted = creating;
    if (early) {
      // Started before it is stored: stored with its end when that comes soon enough.
      this.onResult(task.id, tell);
      this.#start(run, entries, first);
    }
    let isNew: boolean;
    try {
      isNew = await creating;
    } catch (err) {
      this.#abandon(run, tell, "its record could not be stored");
      const e = toDsatError(err);
      // Out of space stays RESOURCE_EXHAUSTED (a client should back off, an operator act);
      // anything else is UNAVAILABLE: another router, or later, may store it.
      const code = e.code === Code.ResourceExhausted ? Code.ResourceExhausted : Code.Unavailable;
      throw dsatError(code, `task could not be stored: ${e.rawMessage}`, err);
    }
    if (!isNew) {
      // A task with this id exists already: Submit is idempotent on the client's id.
      this.#abandon(run, tell, "a task with its id existed");
      tell?.(this.#readFromStatus(task.id, "a task with this id existed already"));
      return { taskId: task.id };
    }
    this.counters.accepted++;
    // Accepted: from here on the task is like any other (see TaskRun.accepted).
    run.accepted = undefined;
    if (!early) {
      if (tell) this.onResult(task.id, tell);
      this.#start(run, entries, first);
    }
    return { taskId: task.id };
  }

  /** Starts a new task's entry stages (and its deadline). */
  #start(run: TaskRun, entries: StageRun[], first: Transition[]): void {
    const task = run.task;
    this.#telemetry?.accepted(task, first);
    if (task.deadline) {
      const ms = timestampDate(task.deadline).getTime() - Date.now();
      run.deadlineTimer = setTimeout(() => this.#deadlinePassed(run), Math.max(0, ms));
    }
    for (const sr of entries) this.#enqueue(run, sr);
  }

  /**
   * Gives up a task that was not accepted after all (not stored, or its id taken): what it
   * runs stops, nothing more of it is sent, and `listener` is not told of its end.
   */
  #abandon(run: TaskRun, listener: ((r: TaskResult) => void) | undefined, reason: string): void {
    const id = run.task.id;
    if (listener) this.#resultListeners.get(id)?.delete(listener);
    if (this.#tasks.get(id) === run) this.#forget(id, reason);
  }

  /** The result that tells a client to read the task's end from StatusService. */
  #readFromStatus(taskId: string, why: string): TaskResult {
    return create(TaskResultSchema, {
      taskId,
      state: State.UNSPECIFIED,
      error: { code: codeName(Code.Aborted), message: `${why}; read its end from StatusService` },
    });
  }

  #newStage(run: TaskRun, name: string, input: Uint8Array): StageRun {
    const sr: StageRun = {
      run,
      name,
      state: State.PENDING,
      attempt: 1,
      lost: 0,
      failures: 0,
      input,
      link: undefined,
      lastError: undefined,
      retryTimer: undefined,
    };
    run.stages.set(name, sr);
    run.active++;
    return sr;
  }

  /** The millisecond of {@link #stamp}: see #transition. */
  #stampMs = -1;
  #stamp: Timestamp | undefined;

  #transition(
    run: TaskRun,
    sr: StageRun | undefined,
    from: State,
    to: State,
    extra: { error?: TaskError; output?: Uint8Array; workerId?: string } = {},
  ): Transition {
    // A plain message object with every field, as create() makes it, at a fraction of its cost.
    const ms = Date.now();
    if (ms !== this.#stampMs) {
      // One Timestamp per millisecond, shared by the transitions made in it (nothing changes
      // a message's Timestamp in place; a new time is a new Timestamp).
      this.#stampMs = ms;
      this.#stamp = { $typeName: "google.protobuf.Timestamp", seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
    }
    return {
      $typeName: "dsat.v1.Transition",
      taskId: run.task.id,
      stage: sr?.name ?? "",
      attempt: sr?.attempt ?? 0,
      from,
      to,
      time: this.#stamp,
      memberId: this.id,
      error: extra.error,
      output: extra.output ?? EMPTY_BYTES,
      port: "",
      seq: 0n,
      detail: "",
      workerId: extra.workerId ?? "",
    };
  }

  #stageDef(run: TaskRun, name: string): Stage | undefined {
    return run.pipeline.stages.find((s) => s.name === name);
  }

  #enqueue(run: TaskRun, sr: StageRun): void {
    let q = this.#queues.get(sr.name);
    if (!q) this.#queues.set(sr.name, (q = []));
    q.push(sr);
    this.#telemetry?.enqueued(run.task.id, sr.name);
    this.#pump(sr.name);
    if (this.#opts.stageWaitMs > 0 && sr.state !== State.DISPATCHED) this.#armWait(run, sr);
  }

  /** Fails a task that waited stageWaitMs at a stage that no worker serves (a satellite gone). */
  #armWait(run: TaskRun, sr: StageRun): void {
    if (sr.waitTimer) clearTimeout(sr.waitTimer);
    sr.waitTimer = setTimeout(() => {
      sr.waitTimer = undefined;
      if (this.#tasks.get(run.task.id) !== run || (sr.state !== State.PENDING && sr.state !== State.RETRYING)) return;
      const served = this.#rotation.get(sr.name)?.items.some((l) => !l.closed && !l.leaving);
      if (served) {
        this.#armWait(run, sr); // Workers exist, only busy: back-pressure, not absence.
        return;
      }
      const q = this.#queues.get(sr.name);
      const i = q?.indexOf(sr) ?? -1;
      if (q && i >= 0) q.splice(i, 1);
      const error = create(TaskErrorSchema, {
        code: codeName(Code.Unavailable),
        message: `no worker serves stage "${sr.name}" (waited ${this.#opts.stageWaitMs} ms)`,
        retryable: true,
      });
      this.#reporter.send(this.#transition(run, sr, sr.state, State.FAILED, { error }));
      sr.state = State.FAILED;
      run.active--;
      this.#finish(run, State.FAILED, undefined, error);
    }, this.#opts.stageWaitMs);
    sr.waitTimer.unref();
  }

  #dispatch(run: TaskRun, sr: StageRun, link: WorkerLink): void {
    if (sr.waitTimer) clearTimeout(sr.waitTimer);
    sr.waitTimer = undefined;
    sr.attempt = this.#forgotten.next(run.task.id, sr.name, sr.attempt);
    const from = sr.state;
    sr.state = State.DISPATCHED;
    sr.link = link;
    if (run.state === State.PENDING) {
      run.state = State.RUNNING;
      this.#reporter.send(this.#transition(run, undefined, State.PENDING, State.RUNNING));
    }
    this.#reporter.send(this.#transition(run, sr, from, State.DISPATCHED, { workerId: link.member.id }));
    const def = this.#stageDef(run, sr.name);
    const timeoutMs = def?.timeout ? durationMs(def.timeout) : this.#opts.defaultStageTimeoutMs;
    // Plain message objects rather than create(): the task is a message already, and its
    // copy differs in its payload only (create() would copy it field by field).
    const a: Assignment = {
      $typeName: "dsat.v1.Assignment",
      task: { ...run.task, payload: sr.input },
      stage: sr.name,
      attempt: sr.attempt,
      timeout: { $typeName: "google.protobuf.Duration", seconds: BigInt(Math.floor(timeoutMs / 1000)), nanos: (timeoutMs % 1000) * 1e6 },
    };
    run.taskBase ??= encodeTaskBase(run.task);
    rememberTaskBase(a, run.taskBase);
    this.counters.dispatched++;
    this.#telemetry?.inject(a);
    link.assign(a);
  }

  #onWorkerTransition(link: WorkerLink, t: Transition): void {
    const px = this.#proxied.size > 0 ? this.#proxied.get(WorkerLink.key(t.taskId, t.stage, t.attempt)) : undefined;
    if (px && px.link === link) {
      this.#proxyTransition(px, t);
      return;
    }
    const run = this.#tasks.get(t.taskId);
    const sr = run?.stages.get(t.stage);
    const terminal = t.to === State.SUCCEEDED || t.to === State.FAILED || t.to === State.TIMED_OUT || t.to === State.CANCELLED;
    if (terminal) link.settle(t.taskId, t.stage, t.attempt);
    if (!run || !sr || sr.attempt !== t.attempt || sr.link !== link || sr.state !== t.from) {
      // A late or repeated report (an attempt given up, a task that ended): dropped.
      this.#log.debug("dropped a late transition", { task: t.taskId, stage: t.stage, attempt: t.attempt });
      if (terminal) this.#pump(link.member.stage);
      return;
    }
    sr.state = t.to;
    const output = t.output;
    // Stored with the output: a router that takes the task over starts the next stages from it.
    this.#reporter.send(t);
    if (!terminal) return;
    sr.link = undefined;
    switch (t.to) {
      case State.SUCCEEDED:
        this.#stageSucceeded(run, sr, output, t.port);
        break;
      case State.FAILED:
      case State.TIMED_OUT:
        if (t.to === State.FAILED && lost(t.error)) {
          // The worker could not take it (draining): another worker runs it, and this does
          // not count against the stage's retry policy. The worker takes nothing more.
          link.leaving = true;
          this.#redeliver(run, sr, t.error);
          break;
        }
        this.#attemptFailed(run, sr, t.error ?? create(TaskErrorSchema, { code: "UNKNOWN", message: "failed" }));
        break;
      case State.CANCELLED:
        if (!this.#isTerminal(run)) {
          this.#finish(run, State.CANCELLED, undefined, t.error ?? create(TaskErrorSchema, { code: "CANCELLED", message: `stage "${sr.name}" was cancelled` }));
        }
        break;
    }
    this.#pump(link.member.stage);
  }

  #stageSucceeded(run: TaskRun, sr: StageRun, output: Uint8Array, port: string): void {
    run.active--;
    run.outputs.set(sr.name, { output, port });
    this.#moveOn(run, sr.name);
  }

  /**
   * Moves a succeeded stage's output on: to each stage its edges name for its port (each
   * stage runs once per task), joins once every parent has delivered or can no longer;
   * the task succeeds when nothing is left to run.
   */
  #moveOn(run: TaskRun, stage: string): void {
    const o = run.outputs.get(stage);
    if (!o) return;
    const graph = graphOf(run.pipeline);
    const next = graph.next(stage, o.port);
    if (next.length === 0) run.output = o.output;
    for (const name of next) {
      if (run.stages.has(name)) continue;
      if (graph.parents(name).length > 1) run.joins.add(name);
      else this.#startStage(run, name, o.output);
    }
    this.#startReadyJoins(run);
    if (run.active === 0 && run.joins.size === 0 && !this.#isTerminal(run)) {
      this.#finish(run, State.SUCCEEDED, run.output, undefined);
    }
  }

  #startStage(run: TaskRun, name: string, input: Uint8Array): void {
    const nsr = this.#newStage(run, name, input);
    this.#reporter.send(this.#transition(run, nsr, State.UNSPECIFIED, State.PENDING));
    this.#enqueue(run, nsr);
  }

  /**
   * Starts each waiting join whose parents have all either delivered to it or can no longer
   * run (their branch ended elsewhere). Its input is a JSON object of the delivered outputs
   * by parent name (each parsed as JSON when it is JSON, else its text). A join that no
   * parent delivered to ends its branch.
   */
  #startReadyJoins(run: TaskRun): void {
    if (run.joins.size === 0) return;
    const graph = graphOf(run.pipeline);
    const edges = graph.edges;
    // Stages that may still run: those started and not ended, waiting joins, and all below them.
    const mayRun = new Set<string>();
    const stack: string[] = [...run.joins];
    for (const sr of run.stages.values()) {
      if (sr.state !== State.SUCCEEDED && sr.state !== State.CANCELLED) stack.push(sr.name);
    }
    while (stack.length > 0) {
      const n = stack.pop() as string;
      if (mayRun.has(n)) continue;
      mayRun.add(n);
      for (const e of edges) if (e.from === n) stack.push(e.to);
    }
    for (const join of [...run.joins]) {
      const parents = graph.parents(join);
      const delivered = parents.filter((p) => {
        const o = run.outputs.get(p);
        return o !== undefined && edges.some((e) => e.from === p && e.to === join && e.port === o.port);
      });
      const waiting = parents.filter((p) => !delivered.includes(p) && mayRun.has(p) && !run.outputs.has(p));
      if (waiting.length > 0) continue;
      run.joins.delete(join);
      if (delivered.length === 0) continue;
      const input: Record<string, unknown> = {};
      for (const p of delivered) input[p] = decodeOutput(run.outputs.get(p)?.output ?? new Uint8Array(0));
      this.#startStage(run, join, encodePayload(input));
    }
  }

  #attemptFailed(run: TaskRun, sr: StageRun, error: TaskError): void {
    sr.lastError = error;
    sr.failures++;
    const policy = this.#stageDef(run, sr.name)?.retry;
    const max = policy?.maxAttempts || 1;
    const never = new Set(policy?.nonRetryableCodes ?? []);
    if (sr.failures < max && error.retryable !== false && !never.has(error.code)) {
      const initial = policy?.initialBackoff ? durationMs(policy.initialBackoff) : 100;
      const cap = policy?.maxBackoff ? durationMs(policy.maxBackoff) : 10_000;
      const backoff = Math.min(cap, initial * 2 ** (sr.failures - 1));
      this.#retry(run, sr, backoff * (0.5 + Math.random() / 2));
      return;
    }
    run.active--;
    const to = sr.state === State.TIMED_OUT ? State.TIMED_OUT : State.FAILED;
    const message = `stage "${sr.name}" ${to === State.TIMED_OUT ? "timed out" : "failed"} (attempt ${sr.attempt}): ${error.message}`;
    this.#finish(run, to, undefined, create(TaskErrorSchema, { ...error, message }));
  }

  #retry(run: TaskRun, sr: StageRun, delayMs: number): void {
    this.#reporter.send(this.#transition(run, sr, sr.state, State.RETRYING));
    sr.state = State.RETRYING;
    sr.attempt++;
    sr.retryTimer = setTimeout(() => {
      sr.retryTimer = undefined;
      if (this.#tasks.get(run.task.id) === run && sr.state === State.RETRYING) this.#enqueue(run, sr);
    }, delayMs);
  }

  /** An attempt whose worker went away: it fails as UNAVAILABLE and goes to another worker. */
  #lostAttempt(a: Assignment, link: WorkerLink): void {
    const run = this.#tasks.get(a.task?.id ?? "");
    const sr = run?.stages.get(a.stage);
    if (!run || !sr || sr.link !== link || sr.attempt !== a.attempt) return;
    sr.link = undefined;
    const error = create(TaskErrorSchema, {
      code: codeName(Code.Unavailable),
      message: `worker ${link.member.id} was lost while it ran the task`,
      retryable: true,
    });
    this.#reporter.send(this.#transition(run, sr, sr.state, State.FAILED, { error }));
    sr.state = State.FAILED;
    this.#redeliver(run, sr, error);
  }

  /** Runs a failed attempt again elsewhere at once, bounded by maxLostWorkerRedeliveries. */
  #redeliver(run: TaskRun, sr: StageRun, error: TaskError): void {
    sr.lastError = error;
    if (sr.lost < this.#opts.maxLostWorkerRedeliveries) {
      sr.lost++;
      this.counters.redelivered++;
      this.#retry(run, sr, 0);
    } else {
      run.active--;
      this.#finish(run, State.FAILED, undefined, create(TaskErrorSchema, {
        ...error,
        message: `stage "${sr.name}": ${sr.lost + 1} workers were lost while running it; giving up`,
      }));
    }
  }

  #isTerminal(run: TaskRun): boolean {
    return run.state === State.SUCCEEDED || run.state === State.FAILED || run.state === State.TIMED_OUT || run.state === State.CANCELLED;
  }

  /** Ends a task: stops what still runs, reports the terminal transition, tells listeners. */
  #finish(run: TaskRun, to: State, output: Uint8Array | undefined, error: TaskError | undefined): void {
    if (this.#isTerminal(run)) return;
    const from = run.state;
    run.state = to;
    if (run.deadlineTimer) clearTimeout(run.deadlineTimer);
    this.#stopStages(run, error?.message ?? "the task ended");
    const stored = this.#reporter.sendDurable(this.#transition(run, undefined, from, to, { output, error }));
    this.#tasks.delete(run.task.id);
    this.#forgotten.delete(run.task.id);
    if (run.accepted) {
      // Ended before its create was settled: its room is free once it is (see hasRoom).
      this.#endedUnstored++;
      const freed = () => {
        this.#endedUnstored--;
        this.#wakeRoomWaiters();
      };
      run.accepted.then(freed, freed);
    }
    // Until its end is stored, the record says the task runs: a claim must not resume it here.
    const id = run.task.id;
    this.#ending.add(id);
    const ended = () => this.#ending.delete(id);
    stored.then(ended, ended);
    this.#wakeRoomWaiters();
    const listeners = this.#resultListeners.get(id);
    this.#resultListeners.delete(id);
    const told = () => {
      if (to === State.SUCCEEDED) this.counters.succeeded++;
      else this.counters.failed++;
      if (!listeners) return;
      // A result is told once it is stored, so that GetState agrees with it from then on.
      const result = create(TaskResultSchema, { taskId: id, state: to, output, error });
      stored.then(
        () => {
          for (const l of listeners) l(result);
        },
        (err: unknown) => {
          this.#log.error("a terminal transition could not be stored", { task: id, error: err });
          // The waiting clients read the end from StatusService instead of hanging here.
          const unknown = create(TaskResultSchema, {
            taskId: id,
            state: State.UNSPECIFIED,
            error: { code: codeName(Code.Unavailable), message: "the task's end could not be stored yet" },
          });
          for (const l of listeners) l(unknown);
        },
      );
    };
    // A task that ended before it was accepted counts, and its end is told, only once it is
    // (submit tells its client otherwise).
    if (run.accepted) run.accepted.then((isNew) => isNew && told(), () => {});
    else told();
  }

  /** Cancels every stage of a task that has not ended. */
  #stopStages(run: TaskRun, reason: string): void {
    // Made once a stage needs it: a task that succeeded has none left to cancel.
    let error: TaskError | undefined;
    for (const sr of run.stages.values()) {
      if (sr.retryTimer) clearTimeout(sr.retryTimer);
      if (sr.waitTimer) clearTimeout(sr.waitTimer);
      switch (sr.state) {
        case State.PENDING:
        case State.RETRYING:
        case State.DISPATCHED:
        case State.RUNNING: {
          const link = sr.link;
          if (link) {
            link.cancel(create(CancelSchema, { taskId: run.task.id, stage: sr.name, attempt: sr.attempt, reason }));
            link.settle(run.task.id, sr.name, sr.attempt);
            sr.link = undefined;
            this.#pump(sr.name);
          } else {
            const q = this.#queues.get(sr.name);
            const i = q?.indexOf(sr) ?? -1;
            if (q && i >= 0) q.splice(i, 1);
          }
          error ??= create(TaskErrorSchema, { code: codeName(Code.Canceled), message: reason });
          this.#reporter.send(this.#transition(run, sr, sr.state, State.CANCELLED, { error }));
          sr.state = State.CANCELLED;
          run.active--;
          break;
        }
        default:
      }
    }
  }

  #cancelTask(run: TaskRun, reason: string): void {
    this.#finish(run, State.CANCELLED, undefined, create(TaskErrorSchema, { code: codeName(Code.Canceled), message: reason }));
  }

  #deadlinePassed(run: TaskRun): void {
    this.#finish(
      run,
      State.TIMED_OUT,
      undefined,
      create(TaskErrorSchema, { code: codeName(Code.DeadlineExceeded), message: "the task passed its deadline" }),
    );
  }

  /**
   * Cancels a task wherever it runs: at once when this router drives it, else through
   * etcd (cancels/<id>), which the router that drives it watches.
   */
  async cancel(taskId: string, reason: string): Promise<void> {
    if (!taskId) throw dsatError(Code.InvalidArgument, "task_id is required");
    const why = reason || "cancelled by a client";
    const run = this.#tasks.get(taskId);
    if (run) {
      this.#cancelTask(run, why);
      await this.#reporter.flush();
      return;
    }
    const exists = await this.#etcd.get(this.#keys.task(taskId)).exists();
    if (!exists) throw dsatError(Code.NotFound, `task "${taskId}" not found`);
    const lease = this.#etcd.lease(60, { autoKeepAlive: false });
    await lease.put(this.#keys.cancel(taskId)).value(why);
  }

  /** Registers a listener for a task's result; false when this router does not hold the task. */
  onResult(taskId: string, listener: (r: TaskResult) => void): boolean {
    if (!this.#tasks.has(taskId)) return false;
    let set = this.#resultListeners.get(taskId);
    if (!set) this.#resultListeners.set(taskId, (set = new Set()));
    set.add(listener);
    return true;
  }

  /** Removes a result listener. */
  offResult(taskId: string, listener: (r: TaskResult) => void): void {
    this.#resultListeners.get(taskId)?.delete(listener);
  }

  // ------------------------------------------------------------------ take-over

  /** The claims of this router, one after the other (see #claimFrom). */
  #claims: Promise<void> = Promise.resolve();

  /**
   * Claims the unfinished tasks of a router that left ("" : of every router not registered)
   * and drives them on. StatusService fences each move, so that of several routers that
   * claim at once each task goes to one. This router's own claims run one at a time: two at
   * once could both take a task (of every unregistered router, and of the one that left),
   * and the answer of the one that moved it could come second.
   */
  #claimFrom(routerId: string): Promise<void> {
    const next = this.#claims.then(() => this.#claimNow(routerId));
    // One claim that failed does not stop the next.
    this.#claims = next.catch((err: unknown) => this.#log.error("claiming tasks failed", { from: routerId, error: err }));
    return this.#claims;
  }

  async #claimNow(routerId: string): Promise<void> {
    let token = "";
    let failures = 0;
    while (!this.#closed && !this.#draining) {
      const status = [...this.#statusMembers.members.values()].sort((a, b) => a.id.localeCompare(b.id));
      const target = status[failures % Math.max(1, status.length)];
      try {
        if (!target) throw dsatError(Code.Unavailable, "no status server is registered");
        // After a failed call, whose claims may have been stored without the answer reaching
        // here, this router's own unfinished tasks come back too: it resumes those it lacks.
        const res = await clientTo(StatusService, target.address).claimTasks(
          { fromRouterId: routerId, toRouterId: this.id, pageSize: 200, pageToken: token, includeOwn: failures > 0 },
          { timeoutMs: 30_000 },
        );
        const owned = new Set(res.alreadyOwned);
        for (const state of res.tasks) await this.#resume(state, owned.has(state.task?.id ?? ""));
        if (res.tasks.length > 0) {
          this.#log.info("took over tasks", { from: routerId || "(unregistered routers)", tasks: res.tasks.length });
        }
        token = res.nextPageToken;
        if (!token) return;
      } catch (err) {
        if (++failures > 20) {
          this.#log.error("could not claim the tasks of a router that left", { from: routerId, error: err });
          return;
        }
        await new Promise((r) => setTimeout(r, Math.min(100 * 2 ** failures, 2_000)));
      }
    }
  }

  /** Drives on a task claimed from another router, from where StatusService saw it last. */
  async #resume(state: TaskState, alreadyOwned = false): Promise<void> {
    const task = state.task;
    if (!task || isTaskTerminal(state.state)) return;
    // Ended here, its end not stored yet: nothing to resume.
    if (alreadyOwned && this.#ending.has(task.id)) return;
    if (this.#tasks.has(task.id)) {
      // Another of this router's claims moved it here first, and it runs: go on with it.
      if (alreadyOwned) return;
      // Claimed back while this router still held it (it was claimed away meanwhile, and the
      // other router moved it on): what StatusService says is right, not what is in memory.
      this.#log.warn("a task this router still ran came back through a claim; going on from StatusService's record", {
        task: task.id,
      });
      this.#forget(task.id, "claimed back; going on from StatusService");
    }
    const pipeline = await this.#pipelines.version(task.pipeline, task.pipelineVersion);
    const run = newRun(task, pipeline ?? create(PipelineSchema, { name: task.pipeline }), state.state);
    this.#tasks.set(task.id, run);
    this.#telemetry?.resumed(task);
    if (!pipeline) {
      this.#finish(run, State.FAILED, undefined, create(TaskErrorSchema, {
        code: codeName(Code.FailedPrecondition),
        message: `pipeline "${task.pipeline}" version ${task.pipelineVersion} is gone; the task cannot go on`,
      }));
      return;
    }
    // What each stage that succeeded put out (its last SUCCEEDED), and how many times each
    // failed (a lost attempt does not count, as it does not when it happens: see lost()).
    const outputs = new Map<string, { output: Uint8Array; port: string }>();
    const failures = new Map<string, number>();
    for (const h of state.history) {
      if (!h.stage) continue;
      if (h.to === State.SUCCEEDED) outputs.set(h.stage, { output: h.output, port: h.port });
      if ((h.to === State.FAILED && !lost(h.error)) || h.to === State.TIMED_OUT) {
        failures.set(h.stage, (failures.get(h.stage) ?? 0) + 1);
      }
    }
    const graph = graphOf(pipeline);
    const inputOf = (name: string): Uint8Array => {
      if (graph.entries.includes(name)) return task.payload;
      for (const e of graph.edges) {
        const o = outputs.get(e.from);
        if (e.to === name && o && o.port === e.port) return o.output;
      }
      return new Uint8Array(0);
    };
    const resumed: StageRun[] = [];
    for (const st of state.stages) {
      const sr: StageRun = {
        run,
        name: st.name,
        state: st.state,
        attempt: Math.max(1, st.attempt),
        lost: 0,
        failures: failures.get(st.name) ?? 0,
        input: inputOf(st.name),
        link: undefined,
        lastError: st.error,
        retryTimer: undefined,
      };
      run.stages.set(st.name, sr);
      if (st.state !== State.SUCCEEDED && st.state !== State.CANCELLED) {
        run.active++;
        resumed.push(sr);
      }
    }
    if (task.deadline) {
      const ms = timestampDate(task.deadline).getTime() - Date.now();
      run.deadlineTimer = setTimeout(() => this.#deadlinePassed(run), Math.max(0, ms));
    }
    if ([...run.stages.values()].some((x) => x.state === State.CANCELLED)) {
      this.#finish(run, State.CANCELLED, undefined, create(TaskErrorSchema, { code: codeName(Code.Canceled), message: "cancelled" }));
      return;
    }
    for (const sr of resumed) {
      switch (sr.state) {
        case State.PENDING:
          this.#enqueue(run, sr);
          break;
        case State.RETRYING:
          // RETRYING was stored with the attempt that failed; the next one is one more.
          sr.attempt++;
          this.#enqueue(run, sr);
          break;
        case State.FAILED:
        case State.TIMED_OUT: {
          const error = sr.lastError ?? create(TaskErrorSchema, { code: "UNKNOWN", message: "failed" });
          if (sr.state === State.FAILED && lost(error)) {
            // A lost attempt, stored by a router that died before it stored the retry: run
            // it again, not counted against the stage's retry policy.
            this.#redeliver(run, sr, error);
            break;
          }
          sr.failures = Math.max(0, sr.failures - 1);
          this.#attemptFailed(run, sr, error);
          break;
        }
        case State.DISPATCHED:
        case State.RUNNING: {
          // Its worker ran it for the router that is gone, which cut the stream: run it again.
          const error = create(TaskErrorSchema, {
            code: codeName(Code.Unavailable),
            message: `the router that dispatched it (${state.routerId}) was lost`,
            retryable: true,
          });
          this.#reporter.send(this.#transition(run, sr, sr.state, State.FAILED, { error }));
          sr.state = State.FAILED;
          sr.lost++;
          this.counters.redelivered++;
          this.#retry(run, sr, 0);
          break;
        }
        default:
      }
    }
    // Stages that succeeded but whose next stages (or joins) were not started yet.
    for (const [name, o] of outputs) run.outputs.set(name, o);
    for (const name of outputs.keys()) this.#moveOn(run, name);
    if (this.#isTerminal(run)) return;
    if (run.active === 0 && run.joins.size === 0 && !this.#isTerminal(run)) {
      this.#finish(run, State.SUCCEEDED, run.output, undefined);
      return;
    }
    // A cancel that reached etcd before the old router acted on it is honoured here.
    const cancelled = await this.#etcd.get(this.#keys.cancel(task.id)).string().catch(() => null);
    if (cancelled !== null && this.#tasks.get(task.id) === run) {
      this.#cancelTask(run, cancelled || "cancelled");
      void this.#etcd.delete().key(this.#keys.cancel(task.id)).exec().catch(() => {});
    }
  }

  /** Forgets a task that another router drives now (it was claimed): no report, no result. */
  #drop(taskId: string, reason: string): void {
    if (!this.#tasks.has(taskId)) return;
    this.#log.warn("a task moved to another router; dropping it here", { task: taskId, reason });
    this.#forget(taskId, reason);
    const listeners = this.#resultListeners.get(taskId);
    this.#resultListeners.delete(taskId);
    // The client learns that the result will come from StatusService, not from here.
    const moved = create(TaskResultSchema, {
      taskId,
      state: State.UNSPECIFIED,
      error: { code: codeName(Code.Aborted), message: reason },
    });
    for (const l of listeners ?? []) l(moved);
  }

  /**
   * Stops driving a task here: timers, queues, and what its stages run; no report, and
   * what was not sent of it yet is dropped. Its attempt numbers are not used again here.
   */
  #forget(taskId: string, reason: string): void {
    const run = this.#tasks.get(taskId);
    if (!run) return;
    this.#tasks.delete(taskId);
    this.#reporter.forget(taskId);
    const used: [string, number][] = [];
    for (const sr of run.stages.values()) if (sr.state !== State.PENDING || sr.link) used.push([sr.name, sr.attempt]);
    this.#forgotten.remember(taskId, used);
    this.#wakeRoomWaiters();
    this.#telemetry?.dropped(taskId, reason);
    if (run.deadlineTimer) clearTimeout(run.deadlineTimer);
    for (const sr of run.stages.values()) {
      if (sr.retryTimer) clearTimeout(sr.retryTimer);
      if (sr.waitTimer) clearTimeout(sr.waitTimer);
      const q = this.#queues.get(sr.name);
      const i = q?.indexOf(sr) ?? -1;
      if (q && i >= 0) q.splice(i, 1);
      if (sr.link) {
        sr.link.cancel(create(CancelSchema, { taskId, stage: sr.name, attempt: sr.attempt, reason }));
        sr.link.settle(taskId, sr.name, sr.attempt);
        sr.link = undefined;
      }
    }
  }

  /** How this router sees the workers. */
  listWorkers(): MessageInitShape<typeof ListWorkersResponseSchema> {
    const workers: MessageInitShape<typeof WorkerViewSchema>[] = [];
    for (const l of this.#links.values()) {
      workers.push({
        id: l.member.id,
        stage: l.member.stage,
        address: l.member.address,
        version: l.member.version,
        capacity: l.capacity,
        inFlight: l.inFlight.size,
        connected: l.ready && !l.closed,
        dispatched: l.dispatched,
        avgRunMs: l.load?.avgRunMs ?? 0,
      });
    }
    for (const { member, error } of this.#refused.values()) {
      workers.push({
        id: member.id,
        stage: member.stage,
        address: member.address,
        version: member.version,
        capacity: member.capacity,
        refusedCode: error.code,
        refusedMessage: error.rawMessage,
      });
    }
    const queued: Record<string, number> = {};
    for (const [stage, q] of this.#queues) if (q.length > 0) queued[stage] = q.length;
    return { routerId: this.id, workers, queued };
  }

  /**
   * Drains: leaves etcd and takes no new task, waits up to drainTimeoutMs for the tasks
   * it holds to end, then closes.
   */
  async drain(): Promise<void> {
    this.#draining = true;
    this.#server.health.setAll(ServingStatus.NOT_SERVING);
    // Marked draining, not gone: clients stop choosing it, and the other routers do not take
    // over the tasks it is finishing. It leaves (and anything left is taken over) at the end.
    await this.#registration
      .update(create(MemberSchema, { ...this.#registration.member, draining: true }))
      .catch(() => {});
    const deadline = Date.now() + this.#opts.drainTimeoutMs;
    while (this.#tasks.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    await this.close();
  }

  /** Closes at once. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#wakeRoomWaiters();
    this.#server.health.setAll(ServingStatus.NOT_SERVING);
    await this.#registration.close().catch(() => {});
    // Steps are sent again until stored, so a status outage would hold close forever: wait
    // a bounded time. What is not stored then is lost with this router, and the router that
    // takes its tasks over runs again what was not stored as ended.
    let flushTimer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.#reporter.flush().catch(() => {}),
      new Promise<void>((resolve) => {
        flushTimer = setTimeout(resolve, CLOSE_FLUSH_MS);
      }),
    ]);
    clearTimeout(flushTimer);
    this.#reporter.close();
    // The status server served here goes once this router's own steps are stored.
    await this.#statusServer?.close();
    for (const run of this.#tasks.values()) {
      if (run.deadlineTimer) clearTimeout(run.deadlineTimer);
      for (const sr of run.stages.values()) if (sr.retryTimer) clearTimeout(sr.retryTimer);
    }
    for (const l of this.#links.values()) l.abort();
    this.#telemetry?.close();
    await this.#cancelWatch?.close().catch(() => {});
    await this.#workers.close().catch(() => {});
    await this.#statusMembers.close().catch(() => {});
    await this.#routers.close().catch(() => {});
    await this.#pipelines.close().catch(() => {});
    await this.#server.close(1_000);
    if (this.#ownEtcd) this.#etcd.close();
  }

  /** Options as timestamps, for handlers. */
  static deadlineFrom(ms: number) {
    return timestampFromMs(ms);
  }
}

/** The Process stream of a router of another satellite that this router serves. */
interface Upstream {
  readonly call: grpc.ServerDuplexStream<ProcessRequest, MessageInitShape<typeof ProcessResponseSchema>>;
  closed: boolean;
}

/** One assignment from another satellite's router, run on a local worker. */
interface ProxyItem {
  readonly key: string;
  readonly a: Assignment;
  readonly up: Upstream;
  link: WorkerLink | undefined;
  /** The last state sent up. */
  state: State;
}
