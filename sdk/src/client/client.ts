import { randomUUID } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Etcd3 } from "etcd3";
import { AsyncQueue } from "../async-queue.ts";
import { splitBySize } from "../batch.ts";
import { Code, ConnectError, dsatError, toDsatError } from "../errors.ts";
import { connectEtcd, defaultEtcdEndpoints } from "../etcd.ts";
import type { Member } from "../gen/dsat/v1/member_pb.js";
import {
  type ListPipelinesResponse,
  type Pipeline,
  PipelineSchema,
  PipelineService,
} from "../gen/dsat/v1/pipeline_pb.js";
import {
  type ListWorkersResponse,
  RouterService,
  type SubmitAck,
  type SubmitRequest,
  SubmitRequestSchema,
  type SubmitStreamRequest,
  SubmitStreamRequestSchema,
  type TaskResult,
} from "../gen/dsat/v1/router_pb.js";
import { type ListRequestSchema, type ListResponse, StatusService } from "../gen/dsat/v1/status_pb.js";
import { State, type TaskError, type TaskState, type Transition } from "../gen/dsat/v1/task_pb.js";
import { isTaskTerminal } from "../fsm.ts";
import { Keys } from "../keys.ts";
import { listMembers, MemberWatcher } from "../membership.ts";
import { encodePayload, Payload } from "../payload.ts";
import { traceHeaders, withTraceContext } from "../telemetry/trace-context.ts";
import { clientTo } from "../transport.ts";

/** Options of {@link createClient}. */
export interface ClientOptions {
  /**
   * etcd endpoints or a client, to find routers and status servers. Default DSAT_ETCD,
   * else 127.0.0.1:2379; not used when both `routers` and `status` are given.
   */
  etcd: string | Etcd3;
  /** Router addresses (host:port). Default: the routers registered in etcd. */
  routers: string[];
  /** StatusService addresses (host:port). Default: the status servers registered in etcd. */
  status: string[];
  /** etcd key prefix. Default "/dsat/v1/". */
  prefix: string;
  /** Deadline of one unary call, in milliseconds. Default 30000. */
  timeoutMs: number;
}

/** Per-task options of submit and run. */
export interface SubmitOptions {
  /** Your own task id: submitting the same id again does not run the task twice. */
  taskId?: string;
  /**
   * `taskId` was made up for this submission (a new UUID of yours) and names no task yet, so
   * that `run` may start the task before it is stored, and store it once with its end under
   * load, as it does with an id it makes up itself. Leave it unset for an id that you reuse
   * as an idempotency key: with it set, a task that exists already could have stages run
   * again before the router learns that it exists. Default: true without `taskId`.
   */
  freshId?: boolean;
  /**
   * The task's headers, seen by every stage's handler. Unless they carry a `traceparent`,
   * the trace context of the active OpenTelemetry span (if any) is added to them.
   */
  headers?: Record<string, string>;
  /** Deadline of the whole pipeline: a Date, or milliseconds from now. */
  deadline?: Date | number;
}

/** Options of `watch`. */
export interface WatchOptions {
  /** Resume after this seq. Default 0: from the start. */
  afterSeq?: bigint;
  /** Wait for a task that does not exist yet (an id you are about to submit). Default false. */
  waitForTask?: boolean;
  signal?: AbortSignal;
}

/** The end of a task, as `run` returns it. */
export interface RunResult {
  readonly taskId: string;
  readonly state: State;
  /** True when the task SUCCEEDED. */
  readonly ok: boolean;
  readonly output: Payload;
  readonly error: TaskError | undefined;
}

/** A client of a dsat mesh. */
export interface DsatClient {
  /** Submits a task; resolves with its id once it is stored durably. */
  submit(pipeline: string, payload?: unknown, options?: SubmitOptions): Promise<string>;
  /** Submits a task and resolves when it ends. */
  run(pipeline: string, payload?: unknown, options?: SubmitOptions): Promise<RunResult>;
  /** The task's transitions: its history, then live ones, ending at its end. */
  watch(taskId: string, options?: WatchOptions): AsyncIterable<Transition>;
  /** A snapshot of a task. */
  getState(taskId: string, options?: { history?: boolean }): Promise<TaskState>;
  /** Cancels a task wherever it runs. */
  cancel(taskId: string, reason?: string): Promise<void>;
  /** Task states matching a filter, a page at a time. */
  list(filter?: MessageInitShape<typeof ListRequestSchema>): Promise<ListResponse>;
  /** Validates and stores a pipeline definition as its next version. */
  applyPipeline(pipeline: MessageInitShape<typeof PipelineSchema>): Promise<{ pipeline: Pipeline; changed: boolean }>;
  getPipeline(name: string, version?: bigint): Promise<Pipeline>;
  listPipelines(): Promise<ListPipelinesResponse["pipelines"]>;
  /** How each router sees its workers. */
  listWorkers(): Promise<ListWorkersResponse[]>;
  /** Every member registered in etcd now. */
  members(): Promise<Member[]>;
  close(): Promise<void>;
}

/**
 * Creates a client. It finds routers and status servers in etcd (or takes their
 * addresses), spreads calls over them round-robin, and moves to the next one when a
 * server is unavailable.
 */
export function createClient(options: Partial<ClientOptions> = {}): DsatClient {
  return new Client(options);
}

class Client implements DsatClient {
  readonly #opts: Partial<ClientOptions>;
  readonly #timeoutMs: number;
  readonly #keys: Keys;
  #etcd: Etcd3 | undefined;
  #ownEtcd = false;
  #routerWatch: MemberWatcher | undefined;
  #statusWatch: MemberWatcher | undefined;
  #started: Promise<void> | undefined;
  #next = 0;
  readonly #streams = new Map<string, RunStream>();

  constructor(options: Partial<ClientOptions>) {
    this.#opts = options;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#keys = new Keys(options.prefix);
  }

  #etcdClient(): Etcd3 {
    if (!this.#etcd) {
      const e = this.#opts.etcd;
      if (typeof e === "object") this.#etcd = e;
      else {
        this.#etcd = connectEtcd({ endpoints: e ?? defaultEtcdEndpoints() });
        this.#ownEtcd = true;
      }
    }
    return this.#etcd;
  }

  #start(): Promise<void> {
    this.#started ??= (async () => {
      try {
        if (!this.#opts.routers?.length) {
          this.#routerWatch = new MemberWatcher(this.#etcdClient(), this.#keys.membersOf("router"));
          await this.#routerWatch.start();
        }
        if (!this.#opts.status?.length) {
          this.#statusWatch = new MemberWatcher(this.#etcdClient(), this.#keys.membersOf("status"));
          await this.#statusWatch.start();
        }
      } catch (err) {
        this.#started = undefined;
        throw toDsatError(err);
      }
    })();
    return this.#started;
  }

  async #addresses(kind: "router" | "status"): Promise<string[]> {
    await this.#start();
    const given = kind === "router" ? this.#opts.routers : this.#opts.status;
    if (given?.length) return given;
    const watch = kind === "router" ? this.#routerWatch : this.#statusWatch;
    let list = [...(watch?.members.values() ?? [])]
      .filter((m) => !m.draining)
      .map((m) => m.address)
      .sort();
    if (list.length === 0) {
      // The watch may be catching up (etcd restarted): ask etcd itself before giving up.
      list = (await listMembers(this.#etcdClient(), this.#keys.membersOf(kind)).catch(() => []))
        .filter((m) => !m.draining)
        .map((m) => m.address)
        .sort();
    }
    if (list.length === 0) {
      const where = typeof this.#opts.etcd === "string" ? this.#opts.etcd : defaultEtcdEndpoints();
      throw dsatError(Code.Unavailable, `no ${kind} is registered in etcd at ${where}; is the mesh up (dsat up)?`);
    }
    return list;
  }

  /** Calls `fn` on one server after another (round-robin start) while they are unavailable. */
  async #call<T>(kind: "router" | "status", fn: (address: string) => Promise<T>): Promise<T> {
    const list = await this.#addresses(kind);
    const start = this.#next++;
    let last: ConnectError | undefined;
    for (let i = 0; i < list.length; i++) {
      const address = list[(start + i) % list.length] as string;
      try {
        return await fn(address);
      } catch (err) {
        last = toDsatError(err);
        if (!serverGone(last)) throw last;
      }
    }
    throw last ?? dsatError(Code.Unavailable, `no ${kind} answered`);
  }

  #request(pipeline: string, payload: unknown, options: SubmitOptions = {}): SubmitRequest {
    const d = options.deadline;
    const deadlineMs = d === undefined ? undefined : d instanceof Date ? d.getTime() : Date.now() + d;
    return create(SubmitRequestSchema, {
      pipeline,
      payload: encodePayload(payload),
      // Chosen here, so that submitting again after a router failed cannot run it twice.
      taskId: options.taskId ?? randomUUID(),
      // Made up here for this submission, it names no task yet: run's router may start the
      // task before it is stored (an id of the caller's is an idempotency key: not fresh,
      // unless the caller says so).
      freshId: options.taskId === undefined || options.freshId === true,
      // The active OpenTelemetry context (if any) becomes the task's parent.
      headers: withTraceContext(options.headers ?? {}),
      deadline: deadlineMs === undefined ? undefined : timestampFromMs(deadlineMs),
    });
  }

  async submit(pipeline: string, payload?: unknown, options?: SubmitOptions): Promise<string> {
    const req = this.#request(pipeline, payload, options);
    const headers = traceHeaders(req.headers);
    const res = await this.#call("router", (a) => clientTo(RouterService, a).submit(req, { timeoutMs: this.#timeoutMs, headers }));
    return res.taskId;
  }

  async run(pipeline: string, payload?: unknown, options?: SubmitOptions & { attempt?: number }): Promise<RunResult> {
    const req = this.#request(pipeline, payload, options);
    const list = await this.#addresses("router");
    const address = list[this.#next++ % list.length] as string;
    let stream = this.#streams.get(address);
    if (!stream || stream.broken) {
      stream = new RunStream(address);
      this.#streams.set(address, stream);
    }
    let ack: SubmitAck;
    let result: Promise<TaskResult>;
    try {
      ({ ack, result } = await stream.submit(req));
    } catch (err) {
      const e = toDsatError(err);
      if (!serverGone(e)) throw e;
      // The router went away before it answered: submit again elsewhere with the same task
      // id (a task it had stored is not run twice), and read the end from StatusService.
      const taskId = await this.#call("router", (a) =>
        clientTo(RouterService, a).submit(req, { timeoutMs: this.#timeoutMs }),
      ).then((res) => res.taskId);
      return toRunResult(await this.#awaitViaStatus(taskId));
    }
    if (ack.code === Code.Unavailable && (options?.attempt ?? 0) < 5) {
      // That router is draining or cannot store tasks: start over on another one.
      stream.close();
      // The id is no longer fresh: the first submission may have been stored.
      return this.run(pipeline, payload, { ...options, taskId: req.taskId, freshId: false, attempt: (options?.attempt ?? 0) + 1 });
    }
    if (ack.code !== 0) throw new ConnectError(ack.message, ack.code as Code);
    let r: TaskResult;
    try {
      r = await result;
    } catch {
      // The router went away after it accepted the task: another router takes it over;
      // its end is read from StatusService.
      r = await this.#awaitViaStatus(ack.taskId);
    }
    // The task moved to another router (a take-over): its end comes from StatusService.
    if (r.state === State.UNSPECIFIED) r = await this.#awaitViaStatus(ack.taskId);
    return toRunResult(r);
  }



  /**
   * Waits for a task's end in StatusService: through a watch, again and again while the
   * status servers are unavailable (etcd restarting) for up to two minutes.
   */
  async #awaitViaStatus(taskId: string): Promise<TaskResult> {
    const deadline = Date.now() + 120_000;
    for (let failures = 0; ; failures++) {
      try {
        let ended = false;
        for await (const t of this.watch(taskId, { waitForTask: true })) {
          if (t.stage === "" && isTaskTerminal(t.to)) ended = true;
        }
        const s = await this.getState(taskId);
        if (ended || isTaskTerminal(s.state)) {
          return { $typeName: "dsat.v1.TaskResult", taskId, state: s.state, output: s.output, error: s.error };
        }
      } catch (err) {
        const e = toDsatError(err);
        if (!serverGone(e) || Date.now() > deadline) throw e;
      }
      await new Promise((r) => setTimeout(r, Math.min(100 * 2 ** failures, 2_000)));
    }
  }

  async *watch(taskId: string, options: WatchOptions = {}): AsyncGenerator<Transition> {
    let after = options.afterSeq ?? 0n;
    let failures = 0;
    for (;;) {
      const list = await this.#addresses("status");
      const address = list[this.#next++ % list.length] as string;
      // The call ends with this generator: also when its user stops early (break, return),
      // which would otherwise leave the stream open and the process alive.
      const call = new AbortController();
      const abort = () => call.abort(options.signal?.reason);
      if (options.signal?.aborted) abort();
      else options.signal?.addEventListener("abort", abort, { once: true });
      try {
        const stream = clientTo(StatusService, address).watch(
          { taskId, afterSeq: after, waitForTask: options.waitForTask ?? false },
          { signal: call.signal },
        );
        for await (const res of stream) {
          const t = res.transition;
          if (!t || t.seq <= after) continue;
          after = t.seq;
          failures = 0;
          yield t;
        }
        return;
      } catch (err) {
        const e = toDsatError(err);
        // A status server that went away (its streams end UNAVAILABLE, or reset as CANCEL
        // when the process dies): resume on another after the last seq seen.
        const gone = e.code === Code.Unavailable || (e.code === Code.Canceled && !options.signal?.aborted);
        if (!gone || ++failures > 5 || options.signal?.aborted) throw e;
        await new Promise((r) => setTimeout(r, 100 * failures));
      } finally {
        options.signal?.removeEventListener("abort", abort);
        call.abort();
      }
    }
  }

  async getState(taskId: string, options: { history?: boolean } = {}): Promise<TaskState> {
    const res = await this.#call("status", (a) =>
      clientTo(StatusService, a).getState({ taskId, includeHistory: options.history ?? false }, { timeoutMs: this.#timeoutMs }),
    );
    if (!res.state) throw dsatError(Code.Internal, `status returned no state for task ${taskId}`);
    return res.state;
  }

  async cancel(taskId: string, reason = ""): Promise<void> {
    await this.#call("router", (a) => clientTo(RouterService, a).cancel({ taskId, reason }, { timeoutMs: this.#timeoutMs }));
  }

  list(filter: MessageInitShape<typeof ListRequestSchema> = {}): Promise<ListResponse> {
    return this.#call("status", (a) => clientTo(StatusService, a).list(filter, { timeoutMs: this.#timeoutMs }));
  }

  async applyPipeline(pipeline: MessageInitShape<typeof PipelineSchema>): Promise<{ pipeline: Pipeline; changed: boolean }> {
    const res = await this.#call("status", (a) =>
      clientTo(PipelineService, a).applyPipeline({ pipeline: create(PipelineSchema, pipeline) }, { timeoutMs: this.#timeoutMs }),
    );
    if (!res.pipeline) throw dsatError(Code.Internal, "status returned no pipeline");
    return { pipeline: res.pipeline, changed: res.changed };
  }

  async getPipeline(name: string, version = 0n): Promise<Pipeline> {
    const res = await this.#call("status", (a) =>
      clientTo(PipelineService, a).getPipeline({ name, version }, { timeoutMs: this.#timeoutMs }),
    );
    if (!res.pipeline) throw dsatError(Code.NotFound, `pipeline "${name}" not found`);
    return res.pipeline;
  }

  async listPipelines(): Promise<Pipeline[]> {
    const res = await this.#call("status", (a) => clientTo(PipelineService, a).listPipelines({}, { timeoutMs: this.#timeoutMs }));
    return res.pipelines;
  }

  async listWorkers(): Promise<ListWorkersResponse[]> {
    const list = await this.#addresses("router");
    return Promise.all(list.map((a) => clientTo(RouterService, a).listWorkers({}, { timeoutMs: this.#timeoutMs })));
  }

  async members(): Promise<Member[]> {
    return listMembers(this.#etcdClient(), this.#keys.members());
  }

  async close(): Promise<void> {
    for (const s of this.#streams.values()) s.close();
    this.#streams.clear();
    await this.#routerWatch?.close().catch(() => {});
    await this.#statusWatch?.close().catch(() => {});
    if (this.#ownEtcd) this.#etcd?.close();
  }
}

interface Waiting {
  resolve(v: { ack: SubmitAck; result: Promise<TaskResult> }): void;
  reject(err: unknown): void;
}

/**
 * True when a call failed because its server went away: UNAVAILABLE, CANCELED from a stream
 * the dying server reset, or ABORTED from a reset connection (ECONNRESET). This client
 * never cancels the calls it retries, and each of them is safe to send again (a submit
 * carries its task id).
 */
function serverGone(e: ConnectError): boolean {
  return e.code === Code.Unavailable || e.code === Code.Canceled || e.code === Code.Aborted;
}

function toRunResult(r: TaskResult): RunResult {
  return {
    taskId: r.taskId,
    state: r.state,
    ok: r.state === State.SUCCEEDED,
    output: new Payload(r.output),
    error: r.error,
  };
}

/**
 * One SubmitStream to one router, shared by every `run` of a client: submissions made in
 * the same turn of the event loop share one request; acks come back in request order and
 * results by task id.
 */
class RunStream {
  broken = false;
  readonly #requests = new AsyncQueue<SubmitStreamRequest>();
  readonly #acks: Waiting[][] = [];
  readonly #results = new Map<string, { resolve(r: TaskResult): void; reject(e: unknown): void }[]>();
  /** Results that arrived before the ack of their task. */
  readonly #early = new Map<string, TaskResult[]>();
  #batch: { req: SubmitRequest; waiting: Waiting }[] = [];
  #scheduled = false;
  readonly #abort = new AbortController();

  constructor(address: string) {
    const responses = clientTo(RouterService, address).submitStream(this.#requests, { signal: this.#abort.signal });
    void this.#read(responses);
  }

  submit(req: SubmitRequest): Promise<{ ack: SubmitAck; result: Promise<TaskResult> }> {
    if (this.broken) return Promise.reject(dsatError(Code.Unavailable, "the submit stream is closed"));
    return new Promise((resolve, reject) => {
      this.#batch.push({ req, waiting: { resolve, reject } });
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => this.#flush());
      }
    });
  }

  #flush(): void {
    this.#scheduled = false;
    const batch = this.#batch;
    this.#batch = [];
    if (batch.length === 0) return;
    if (this.broken) {
      for (const b of batch) b.waiting.reject(dsatError(Code.Unavailable, "the submit stream is closed"));
      return;
    }
    // Many tasks share a request, within the message size limit; each request gets its acks.
    for (const part of splitBySize(batch, (b) => b.req.payload.length + 256)) {
      this.#acks.push(part.map((b) => b.waiting));
      this.#requests.push(create(SubmitStreamRequestSchema, { tasks: part.map((b) => b.req), awaitResults: true }));
    }
  }

  async #read(responses: AsyncIterable<{ acks: SubmitAck[]; results: TaskResult[] }>): Promise<void> {
    let error: unknown = dsatError(Code.Unavailable, "the router ended the submit stream");
    try {
      for await (const res of responses) {
        if (res.acks.length > 0) {
          const waiting = this.#acks.shift() ?? [];
          res.acks.forEach((ack, i) => {
            const w = waiting[i];
            if (!w) return;
            if (ack.code !== 0) {
              const refused = Promise.reject(new ConnectError(ack.message, ack.code as Code));
              refused.catch(() => {});
              w.resolve({ ack, result: refused });
              return;
            }
            // Its result may have come first (the ack of a request waits for all its tasks).
            const early = take(this.#early, ack.taskId);
            const result = early
              ? Promise.resolve(early)
              : new Promise<TaskResult>((resolve, reject) => put(this.#results, ack.taskId, { resolve, reject }));
            result.catch(() => {});
            w.resolve({ ack, result });
          });
        }
        for (const r of res.results) {
          const waiting = take(this.#results, r.taskId);
          if (waiting) waiting.resolve(r);
          else put(this.#early, r.taskId, r);
        }
      }
    } catch (err) {
      error = toDsatError(err);
    }
    this.broken = true;
    for (const ws of this.#acks) for (const w of ws) w.reject(error);
    this.#acks.length = 0;
    for (const rs of this.#results.values()) for (const r of rs) r.reject(error);
    this.#results.clear();
  }

  close(): void {
    this.broken = true;
    this.#requests.end();
    this.#abort.abort();
  }
}

// The same task id may be submitted twice on one stream (the client asked twice): each
// submission gets its ack and its result, in order.
function put<T>(m: Map<string, T[]>, key: string, v: T): void {
  const list = m.get(key);
  if (list) list.push(v);
  else m.set(key, [v]);
}

function take<T>(m: Map<string, T[]>, key: string): T | undefined {
  const list = m.get(key);
  if (!list) return undefined;
  const v = list.shift();
  if (list.length === 0) m.delete(key);
  return v;
}
