import { hostname } from "node:os";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
import type * as grpc from "@grpc/grpc-js";
import type { Etcd3 } from "etcd3";
import { codeName, Code, dsatError, toDsatError } from "../errors.ts";
import { connectEtcd, defaultEtcdEndpoints } from "../etcd.ts";
import { type LoadSchema, type Member, MemberKind, MemberSchema } from "../gen/dsat/v1/member_pb.js";
import { State, type TaskError, TaskErrorSchema, type Transition, TransitionSchema } from "../gen/dsat/v1/task_pb.js";
import {
  type Assignment,
  type Cancel,
  type ProcessRequest,
  type ProcessResponseSchema,
  WorkerService,
} from "../gen/dsat/v1/worker_pb.js";
import { createLogger, type Logger } from "../logger.ts";
import { addService } from "../server/add-service.ts";
import { Registration } from "../membership.ts";
import { encodePayload, Payload } from "../payload.ts";
import { ServingStatus } from "../server/health.ts";
import { type RunningGrpcServer, startGrpcServer } from "../server/serve.ts";
import { AttemptSpan } from "../telemetry/spans.ts";
import { activeTracer } from "../telemetry/telemetry.ts";
import { DSAT_VERSION, isCompatible, parseVersion } from "../version.ts";

/** What a handler is told about the task it runs. */
export interface TaskContext {
  readonly taskId: string;
  readonly pipeline: string;
  readonly stage: string;
  /** Attempt number at this stage, from 1. */
  readonly attempt: number;
  readonly headers: Readonly<Record<string, string>>;
  /** Aborted on timeout, cancel, or when the router's stream closes. */
  readonly signal: AbortSignal;
  /** When this attempt must end (the stage timeout or the task deadline, the earlier). */
  readonly deadline: Date;
  readonly workerId: string;
  /**
   * Reports progress of this attempt: a RUNNING → RUNNING transition with `detail` (at most
   * 1,024 characters), which StatusService keeps (the latest one per attempt) and Watch
   * streams. Sent at most every 100 ms; what comes faster is coalesced into the latest, and
   * dropped when the attempt ends first. Does nothing once the attempt has ended.
   */
  progress(detail: string): void;
}

/** Progress of one attempt goes at most this often; faster calls keep only the latest. */
const PROGRESS_INTERVAL_MS = 100;
/** Longest progress detail kept, in characters. */
const MAX_PROGRESS_DETAIL = 1024;

const ROUTE = Symbol("dsat.route");

/** A handler's output sent to a named port: edges that follow that port take it. */
export interface Routed {
  readonly [ROUTE]: string;
  readonly value: unknown;
}

/** Sends `value` out on `port` instead of the default port. */
export function routeTo(port: string, value: unknown): Routed {
  return { [ROUTE]: port, value };
}

/** What a handler returns: bytes, undefined, any JSON value, or routeTo(port, value). */
export type HandlerResult = unknown;

/**
 * A stage's work. It gets the input and a context; it returns the output (see
 * HandlerResult) or throws: a thrown error makes the attempt FAILED with its message
 * (a ConnectError's code is kept, other errors are UNKNOWN).
 */
export type Handler = (input: Payload, ctx: TaskContext) => HandlerResult | Promise<HandlerResult>;

/** Options of {@link createWorker}. */
export interface WorkerOptions {
  /** The stage this worker serves. Required. */
  stage: string;
  /** The work. Required. */
  handler: Handler;
  /** Tasks run at once. Default 1. */
  concurrency: number;
  /** etcd endpoints ("host:port,…") or a client. Default DSAT_ETCD, else 127.0.0.1:2379. */
  etcd: string | Etcd3;
  /** Interface the gRPC server listens on. Default "127.0.0.1". */
  host: string;
  /**
   * The address registered in etcd for routers to dial: "host" or "host:port". Default "":
   * the host listened on, or this machine's first non-internal IPv4 for 0.0.0.0.
   */
  advertise: string;
  /** Port; 0 picks a free one. Default 0. */
  port: number;
  /** Lease time to live, in seconds. Default 5. */
  leaseTtlSeconds: number;
  /** etcd key prefix. Default "/dsat/v1/". */
  prefix: string;
  /** Member id. Default "<stage>-<host>-<pid>-<random>". */
  id: string;
  /** Timeout of an attempt when the router sends none, in milliseconds. Default 30000. */
  defaultTimeoutMs: number;
  /** The protocol version announced. Default DSAT_VERSION; change it only to test refusals. */
  protocolVersion: string;
  /** The satellite this worker belongs to. Default "" (the default satellite). */
  satellite: string;
  /** How long drain waits for running tasks, in milliseconds. Default 30000. */
  drainTimeoutMs: number;
  logger: Logger;
}

const DEFAULT_WORKER_OPTIONS = Object.freeze({
  concurrency: 1,
  host: "127.0.0.1",
  advertise: "",
  port: 0,
  leaseTtlSeconds: 5,
  prefix: "/dsat/v1/",
  defaultTimeoutMs: 30_000,
  protocolVersion: DSAT_VERSION,
  drainTimeoutMs: 30_000,
});

/** A running worker. */
export interface Worker {
  readonly id: string;
  readonly stage: string;
  /** host:port of its gRPC server. */
  readonly address: string;
  /** Tasks running now. */
  readonly inFlight: number;
  /** Leaves the mesh (no new task comes), waits for running tasks up to drainTimeoutMs, then closes. */
  drain(): Promise<void>;
  /** Closes at once: running tasks are aborted. */
  close(): Promise<void>;
}

interface Running {
  readonly controller: AbortController;
  readonly link: RouterLink;
  finish(to: State, error?: TaskError): void;
}

let nextLinkId = 0;

/** The stream from one router: batches what goes up, once per turn of the event loop. */
class RouterLink {
  /** Tells this stream's attempts from another's (see keyOf). */
  readonly id = ++nextLinkId;
  readonly #call: grpc.ServerDuplexStream<ProcessRequest, MessageInitShape<typeof ProcessResponseSchema>>;
  readonly #load: () => MessageInitShape<typeof LoadSchema>;
  #pending: Transition[] = [];
  #scheduled = false;
  closed = false;

  constructor(
    call: grpc.ServerDuplexStream<ProcessRequest, MessageInitShape<typeof ProcessResponseSchema>>,
    load: () => MessageInitShape<typeof LoadSchema>,
  ) {
    this.#call = call;
    this.#load = load;
  }

  send(t: Transition): void {
    if (this.closed) return;
    this.#pending.push(t);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush(): void {
    this.#scheduled = false;
    if (this.closed || this.#pending.length === 0) return;
    const transitions = this.#pending;
    this.#pending = [];
    this.#call.write({ transitions, load: this.#load() });
  }
}

/**
 * Starts a worker: a WorkerService server whose every task runs inside the FSM wrapper
 * (RUNNING, then SUCCEEDED, FAILED, TIMED_OUT or CANCELLED), registered in etcd under
 * a lease so that routers find it.
 */
export async function createWorker(
  options: Partial<WorkerOptions> & Pick<WorkerOptions, "stage" | "handler">,
): Promise<Worker> {
  const opts = { ...DEFAULT_WORKER_OPTIONS, ...options };
  if (!opts.stage) throw dsatError(Code.InvalidArgument, "createWorker: stage is required");
  if (typeof opts.handler !== "function") throw dsatError(Code.InvalidArgument, "createWorker: handler must be a function");
  if (!Number.isInteger(opts.concurrency) || opts.concurrency < 1) {
    throw dsatError(Code.InvalidArgument, `createWorker: concurrency must be a whole number >= 1, not ${opts.concurrency}`);
  }
  parseVersion(opts.protocolVersion);
  const id = opts.id ?? `${opts.stage}-${hostname()}-${process.pid}-${Math.random().toString(16).slice(2, 6)}`;
  const logger = (opts.logger ?? createLogger()).child({ member: id, stage: opts.stage });
  const ownEtcd = typeof opts.etcd !== "object";
  const etcd = typeof opts.etcd === "object" ? opts.etcd : connectEtcd({ endpoints: opts.etcd ?? defaultEtcdEndpoints() });

  const running = new Map<string, Running>();
  const links = new Set<RouterLink>();
  let draining = false;
  let runMsAvg = 0;
  const load = () => ({ inFlight: running.size, capacity: opts.concurrency, avgRunMs: runMsAvg });
  // An attempt is known by the stream it came on, too: a router cancels only what it gave,
  // and two routers that give the same task, stage and attempt (one took the task over from
  // the other, whose run it could not know) get two runs, each answered on its own stream.
  const keyOf = (link: RouterLink, taskId: string, stage: string, attempt: number) =>
    `${link.id}\u0000${taskId}\u0000${stage}\u0000${attempt}`;

  const transition = (
    a: Assignment,
    from: State,
    to: State,
    extra: { error?: TaskError; output?: Uint8Array; port?: string; detail?: string } = {},
  ) =>
    create(TransitionSchema, {
      taskId: a.task?.id ?? "",
      stage: a.stage,
      attempt: a.attempt,
      from,
      to,
      time: timestampNow(),
      memberId: id,
      workerId: id,
      ...extra,
    });

  /** Assignments beyond the worker's concurrency (several routers share it), in order. */
  const waiting: { a: Assignment; link: RouterLink }[] = [];
  const refuse = (a: Assignment, link: RouterLink, code: Code, message: string) =>
    link.send(
      transition(a, State.DISPATCHED, State.FAILED, {
        error: create(TaskErrorSchema, { code: codeName(code), message, retryable: true }),
      }),
    );
  /** Takes an assignment: runs it now, or once a slot is free. */
  const admit = (a: Assignment, link: RouterLink) => {
    const task = a.task;
    if (!task) return;
    const key = keyOf(link, task.id, a.stage, a.attempt);
    if (running.has(key) || waiting.some((w) => w.a === a || keyOf(w.link, w.a.task?.id ?? "", w.a.stage, w.a.attempt) === key)) return;
    // Draining: the router dispatches it elsewhere at once (UNAVAILABLE is not held against
    // the stage's retry policy).
    if (draining) return refuse(a, link, Code.Unavailable, `worker ${id} is draining`);
    if (running.size >= opts.concurrency) waiting.push({ a, link });
    else run(a, link);
  };
  const startWaiting = () => {
    while (running.size < opts.concurrency && waiting.length > 0) {
      const w = waiting.shift() as { a: Assignment; link: RouterLink };
      if (w.link.closed) continue;
      if (draining) refuse(w.a, w.link, Code.Unavailable, `worker ${id} is draining`);
      else run(w.a, w.link);
    }
  };

  const run = (a: Assignment, link: RouterLink) => {
    const task = a.task;
    if (!task) return;
    const key = keyOf(link, task.id, a.stage, a.attempt);
    if (running.has(key)) return; // the same assignment twice on one stream: it runs once.
    if (a.stage !== opts.stage) {
      link.send(
        transition(a, State.DISPATCHED, State.FAILED, {
          error: create(TaskErrorSchema, {
            code: codeName(Code.FailedPrecondition),
            message: `worker ${id} serves stage "${opts.stage}", not "${a.stage}"`,
            retryable: true,
          }),
        }),
      );
      return;
    }
    const controller = new AbortController();
    const timeoutMs = a.timeout ? Number(a.timeout.seconds) * 1000 + a.timeout.nanos / 1e6 : opts.defaultTimeoutMs;
    let deadlineMs = Date.now() + timeoutMs;
    let byDeadline = false;
    if (task.deadline) {
      const d = timestampDate(task.deadline).getTime();
      if (d < deadlineMs) {
        deadlineMs = d;
        byDeadline = true;
      }
    }
    const started = performance.now();
    // Undefined when tracing is off: then no span object is made.
    const span = AttemptSpan.start(activeTracer(), a, id);
    let done = false;
    let progressAt = 0;
    let progressTimer: NodeJS.Timeout | undefined;
    let progressDetail: string | undefined;
    const sendProgress = () => {
      progressTimer = undefined;
      if (done || progressDetail === undefined) return;
      const t = transition(a, State.RUNNING, State.RUNNING, { detail: progressDetail });
      progressDetail = undefined;
      progressAt = performance.now();
      span?.transition(t);
      link.send(t);
    };
    const progress = (detail: string) => {
      if (done) return;
      progressDetail = String(detail).slice(0, MAX_PROGRESS_DETAIL);
      if (progressTimer) return;
      const wait = progressAt + PROGRESS_INTERVAL_MS - performance.now();
      if (wait <= 0) sendProgress();
      else progressTimer = setTimeout(sendProgress, wait);
    };
    const finish = (to: State, error?: TaskError, output?: Uint8Array, port?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearTimeout(progressTimer);
      running.delete(key);
      const ms = performance.now() - started;
      runMsAvg = runMsAvg === 0 ? ms : runMsAvg * 0.9 + ms * 0.1;
      const end = transition(a, State.RUNNING, to, { error, output, port: port ?? "" });
      span?.end(end);
      link.send(end);
      startWaiting();
      if (draining && running.size === 0) drained?.();
    };
    running.set(key, { controller, link, finish: (to, error) => finish(to, error) });
    const runningT = transition(a, State.DISPATCHED, State.RUNNING);
    span?.transition(runningT);
    link.send(runningT);
    const timer = setTimeout(() => {
      const message = byDeadline
        ? `task ${task.id} passed its deadline at stage "${a.stage}"`
        : `stage "${a.stage}" ran over its timeout of ${timeoutMs} ms (attempt ${a.attempt})`;
      const error = create(TaskErrorSchema, { code: codeName(Code.DeadlineExceeded), message, retryable: !byDeadline });
      finish(State.TIMED_OUT, error);
      controller.abort(dsatError(Code.DeadlineExceeded, message));
    }, Math.max(0, deadlineMs - Date.now()));
    const ctx: TaskContext = {
      taskId: task.id,
      pipeline: task.pipeline,
      stage: a.stage,
      attempt: a.attempt,
      headers: task.headers,
      signal: controller.signal,
      deadline: new Date(deadlineMs),
      workerId: id,
      progress,
    };
    Promise.resolve()
      .then(() => (span ? span.run(() => opts.handler(new Payload(task.payload), ctx)) : opts.handler(new Payload(task.payload), ctx)))
      .then(
        (result) => {
          if (result !== null && typeof result === "object" && ROUTE in result) {
            const r = result as Routed;
            finish(State.SUCCEEDED, undefined, encodePayload(r.value), r[ROUTE]);
          } else finish(State.SUCCEEDED, undefined, encodePayload(result));
        },
        (err: unknown) => {
          const e = toDsatError(err);
          finish(
            State.FAILED,
            create(TaskErrorSchema, {
              code: codeName(e.code),
              message: e.rawMessage || String(err),
              retryable: e.code !== Code.InvalidArgument && e.code !== Code.FailedPrecondition,
            }),
          );
        },
      );
  };

  const cancel = (c: Cancel, link: RouterLink) => {
    const key = keyOf(link, c.taskId, c.stage, c.attempt);
    const i = waiting.findIndex((w) => keyOf(w.link, w.a.task?.id ?? "", w.a.stage, w.a.attempt) === key);
    if (i >= 0) {
      const [w] = waiting.splice(i, 1);
      if (w) {
        const error = create(TaskErrorSchema, { code: codeName(Code.Canceled), message: c.reason || "cancelled" });
        w.link.send(transition(w.a, State.DISPATCHED, State.CANCELLED, { error }));
      }
      return;
    }
    const r = running.get(key);
    if (!r) return;
    const message = c.reason || "cancelled";
    r.finish(State.CANCELLED, create(TaskErrorSchema, { code: codeName(Code.Canceled), message }));
    r.controller.abort(dsatError(Code.Canceled, message));
  };

  let drained: (() => void) | undefined;

  const abortLink = (link: RouterLink, why: string) => {
    link.closed = true;
    links.delete(link);
    for (const [key, r] of running) {
      if (r.link !== link) continue;
      running.delete(key);
      r.controller.abort(dsatError(Code.Unavailable, why));
    }
    for (let i = waiting.length - 1; i >= 0; i--) if (waiting[i]?.link === link) waiting.splice(i, 1);
    startWaiting();
    if (draining && running.size === 0) drained?.();
  };

  const process_ = (call: grpc.ServerDuplexStream<ProcessRequest, MessageInitShape<typeof ProcessResponseSchema>>) =>
    new Promise<void>((resolve, reject) => {
      const routerVersion = String(call.metadata.get("dsat-version")[0] ?? "");
      const routerId = String(call.metadata.get("dsat-router-id")[0] ?? "a router");
      if (routerVersion && !isCompatible(routerVersion, opts.protocolVersion)) {
        const msg = `router ${routerId} runs dsat ${routerVersion} but worker ${id} runs ${opts.protocolVersion}: their X.Y must match`;
        logger.warn("refused a router of another version", { router: routerId, routerVersion });
        reject(dsatError(Code.FailedPrecondition, msg));
        return;
      }
      if (draining) {
        reject(dsatError(Code.Unavailable, `worker ${id} is draining and takes no new stream`));
        return;
      }
      const link = new RouterLink(call, load);
      links.add(link);
      call.write({ hello: member, load: load() });
      call.on("data", (req: ProcessRequest) => {
        for (const a of req.assignments) admit(a, link);
        for (const c of req.cancels) cancel(c, link);
      });
      let ended = false;
      const end = (why: string) => {
        if (ended) return;
        ended = true;
        link.flush();
        abortLink(link, why);
        resolve();
      };
      call.on("end", () => end(`router ${routerId} closed its stream`));
      call.on("cancelled", () => end(`router ${routerId} went away`));
      call.on("error", () => end(`the stream from router ${routerId} broke`));
    });

  let server: RunningGrpcServer;
  try {
    server = await startGrpcServer(
      [WorkerService],
      (s) => addService(s, WorkerService, { process: process_ }),
      { host: opts.host, port: opts.port, advertise: opts.advertise },
    );
  } catch (err) {
    if (ownEtcd) etcd.close();
    throw toDsatError(err);
  }
  const member: Member = create(MemberSchema, {
    id,
    kind: MemberKind.WORKER,
    address: server.address,
    version: opts.protocolVersion,
    satellite: opts.satellite ?? "",
    stage: opts.stage,
    capacity: opts.concurrency,
    startedAt: timestampNow(),
    pid: process.pid,
    host: hostname(),
    runtime: `node/${process.versions.node}`,
  });
  const registration = new Registration(etcd, member, { leaseTtlSeconds: opts.leaseTtlSeconds, prefix: opts.prefix });
  registration.on("lost", (err: unknown) => logger.warn("lease lost; registering again", { error: err }));
  try {
    await registration.start();
  } catch (err) {
    await server.close(0);
    if (ownEtcd) etcd.close();
    throw toDsatError(err);
  }
  server.health.setAll(ServingStatus.SERVING);
  logger.info("worker serving", { address: server.address, concurrency: opts.concurrency });

  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    draining = true;
    server.health.setAll(ServingStatus.NOT_SERVING);
    for (const link of [...links]) abortLink(link, `worker ${id} closed`);
    await registration.close();
    await server.close(0);
    if (ownEtcd) etcd.close();
  };

  return {
    id,
    stage: opts.stage,
    address: server.address,
    get inFlight() {
      return running.size;
    },
    drain: async () => {
      if (closed) return;
      draining = true;
      server.health.setAll(ServingStatus.NOT_SERVING);
      await registration.close();
      if (running.size > 0) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, opts.drainTimeoutMs);
          drained = () => {
            clearTimeout(t);
            resolve();
          };
        });
      }
      for (const link of links) link.flush();
      await close();
    },
    close,
  };
}
