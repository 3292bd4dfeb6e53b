import { clone, equals, fromJsonString, type MessageInitShape, toJsonString } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import {
  addService,
  type ClaimTasksRequest,
  type ClaimTasksResponseSchema,
  Code,
  type ConnectError,
  dsatError,
  isTaskTerminal,
  type Keys,
  type ListRequest,
  type ListResponseSchema,
  type Logger,
  type Pipeline,
  PipelineSchema,
  PipelineService,
  type ServiceHandlers,
  StatusService,
  type TaskState,
  toDsatError,
  type Transition,
  validatePipeline,
  type WatchRequest,
  type WatchResponseSchema,
} from "@dsat/sdk";
import * as grpc from "@grpc/grpc-js";
import { CompareResult, CompareTarget, type Etcd3, type ICompare, SortOrder, SortTarget, type Watcher } from "etcd3";
import { keyAfter, prefixEnd } from "../common/etcd-ranges.ts";
import type { OpenIndex } from "./open-index.ts";
import { decodeReportRequest } from "./report-decoding.ts";
import { decodeStoredState } from "./state-encoding.ts";
import type { TaskStore } from "./task-store.ts";
import { Topology } from "./topology.ts";

type MethodsOf<T> = T extends GenService<infer S extends GenServiceMethods> ? S : never;

/** List: tasks per page when the request says 0. */
const DEFAULT_PAGE_SIZE = 100;
/** List: tasks per page, at most. */
const MAX_PAGE_SIZE = 1000;
/** List: keys read per call, at most, so that a rare filter cannot make one call scan everything. */
const MAX_SCAN_KEYS = 5000;
/** ClaimTasks: a page token of the index of unfinished tasks (see #openTasks), not a task key. */
const INDEX_TOKEN = /^[obc]:/;
/** ClaimTasks: index entries (keys only) read per etcd range. */
const OPEN_SCAN_CHUNK_KEYS = 1000;
/** List: keys read per etcd range. */
const SCAN_CHUNK_KEYS = 64;
/** ApplyPipeline: attempts when another writer applies the same pipeline at the same time. */
const APPLY_ATTEMPTS = 10;
/** Watch: times in a row the etcd watch may be lost (compaction) and restarted. */
const WATCH_RESTARTS = 10;

type WatchCall = grpc.ServerWritableStream<WatchRequest, MessageInitShape<typeof WatchResponseSchema>>;

/**
 * The handlers of dsat.v1.StatusService: Report goes through the task store (batched,
 * fenced, durable); GetState, Watch and List read etcd, so any instance answers alike.
 */
export class StatusHandlers {
  readonly #etcd: Etcd3;
  readonly #store: TaskStore;
  readonly #keys: Keys;
  readonly #log: Logger;
  readonly #topology: Topology;
  readonly #index: OpenIndex;
  /** Ends each open Watch, with an error. */
  readonly #watches = new Set<(err: ConnectError) => void>();

  constructor(etcd: Etcd3, store: TaskStore, keys: Keys, logger: Logger, index: OpenIndex) {
    this.#etcd = etcd;
    this.#store = store;
    this.#index = index;
    this.#keys = keys;
    this.#log = logger;
    this.#topology = new Topology(etcd, keys);
  }

  /** Serves StatusService on a grpc-js server. */
  addToServer(server: grpc.Server): void {
    const handlers: ServiceHandlers<MethodsOf<typeof StatusService>> = {
      report: async (req) => this.#store.report(req),
      getState: async (req) => ({ state: await this.#getState(req.taskId, req.includeHistory) }),
      watch: (req, call) => this.#watch(req, call),
      list: (req) => this.#list(req),
      claimTasks: (req) => this.#claim(req),
      topology: () => this.#topology.read(),
      watchTopology: (req, call) => this.#topology.watch(req, call),
    };
    // Reports, the hot path, are decoded by hand (report-decoding.ts).
    addService(server, StatusService, handlers, { report: decodeReportRequest });
  }

  /**
   * ClaimTasks: finds the unfinished tasks of the router named (or of any router not
   * registered now), and moves them to the caller through the task store, fenced per task.
   * They are found in the index of unfinished tasks (open-index.ts) while it is complete,
   * else by looking through every task record; either way with bounded work per call.
   */
  async #claim(req: ClaimTasksRequest): Promise<MessageInitShape<typeof ClaimTasksResponseSchema>> {
    const to = req.toRouterId;
    if (!to) throw dsatError(Code.InvalidArgument, "to_router_id is required");
    if (req.fromRouterId === to) throw dsatError(Code.InvalidArgument, "a router cannot claim its own tasks");
    const pageSize = req.pageSize === 0 ? DEFAULT_PAGE_SIZE : Math.min(req.pageSize, MAX_PAGE_SIZE);
    let live: Set<string> | undefined;
    if (!req.fromRouterId) {
      const routers = this.#keys.membersOf("router");
      const keys = await this.#etcd.getAll().prefix(routers).keys();
      live = new Set(keys.map((k) => k.slice(routers.length)));
    }
    const orphan = (owner: string) => (req.fromRouterId ? owner === req.fromRouterId : owner !== to && !live?.has(owner));
    const indexToken = INDEX_TOKEN.test(req.pageToken);
    // A claim that began with a full scan goes on with it; one that began on the index while
    // it was complete starts again from the first record if it is not any more.
    const revision = this.#index.usable && (indexToken || !req.pageToken) ? await this.#index.trustedRevision() : undefined;
    const { matches, nextPageToken: next } =
      revision !== undefined
        ? await this.#openTasks(req, pageSize, orphan, revision)
        : await this.#scanTasks(indexToken ? "" : req.pageToken, "ClaimTasks", pageSize, (s) => {
            const owner = s.routerId;
            return (orphan(owner) || (req.includeOwn && owner === to)) && !isTaskTerminal(s.state) && s.task !== undefined;
          });
    // The caller's own tasks (include_own) are not claimed: they are its already.
    const own = matches.filter((s) => s.routerId === to);
    const candidates = matches.filter((s) => s.routerId !== to).map((s) => ({ taskId: s.task?.id ?? "", from: s.routerId }));
    const claimed = candidates.length > 0 ? await this.#store.claim(candidates, to) : [];
    const moved = claimed.filter((x) => x !== undefined);
    const replayed = moved.filter((x) => x.alreadyOwned).map((x) => x.state);
    const fresh = moved.length - replayed.length;
    if (fresh > 0) this.#log.info("tasks claimed", { to, from: req.fromRouterId || "(unregistered)", tasks: fresh });
    return {
      tasks: [...moved.map((x) => x.state), ...own],
      nextPageToken: next,
      alreadyOwned: [...replayed, ...own].map((s) => s.task?.id ?? ""),
    };
  }

  /** Ends every open Watch with UNAVAILABLE, so that its client resumes on another instance. */
  close(): void {
    const err = dsatError(Code.Unavailable, "the status server is shutting down; watch again with after_seq");
    for (const end of [...this.#watches]) end(err);
  }

  async #getState(taskId: string, includeHistory: boolean): Promise<TaskState> {
    if (!taskId) throw dsatError(Code.InvalidArgument, "task_id is required");
    const stored = await this.#store.read(taskId);
    if (!stored) throw dsatError(Code.NotFound, `task "${taskId}" not found`);
    if (!includeHistory) stored.state.history = [];
    return stored.state;
  }

  async #watch(req: WatchRequest, call: WatchCall): Promise<void> {
    const taskId = req.taskId;
    if (!taskId) throw dsatError(Code.InvalidArgument, "task_id is required");
    const first = await this.#store.readAt(taskId);
    if (!first.stored && !req.waitForTask) throw dsatError(Code.NotFound, `task "${taskId}" not found`);
    const key = this.#keys.task(taskId);
    let lastSeq = req.afterSeq;

    /** Sends what is new in a state; true once the task-level terminal transition is sent (or the call is gone). */
    const sendNew = (state: TaskState): boolean => {
      if (call.cancelled) return true;
      for (const t of state.history) {
        if (t.seq > lastSeq) {
          call.write({ transition: t });
          lastSeq = t.seq;
        }
        if (endsTask(t)) return true;
      }
      return false;
    };
    if ((first.stored && sendNew(first.stored.state)) || call.cancelled) return;
    // Headers now: a client that waits for a task it is about to submit knows the watch is on.
    call.sendMetadata(new grpc.Metadata());

    await new Promise<void>((resolve, reject) => {
      let watcher: Watcher | undefined;
      let finished = false;
      let restarts = 0;
      const finish = (err?: ConnectError) => {
        if (finished) return;
        finished = true;
        this.#watches.delete(finish);
        const w = watcher;
        watcher = undefined;
        w?.cancel().catch(() => {});
        if (err) reject(err);
        else resolve();
      };
      this.#watches.add(finish);
      call.on("cancelled", () => finish());

      const start = async (fromRevision: string): Promise<void> => {
        const w = await this.#etcd.watch().key(key).startRevision(fromRevision).create();
        if (finished) {
          await w.cancel().catch(() => {});
          return;
        }
        watcher = w;
        w.on("put", (kv) => {
          if (finished || watcher !== w) return;
          restarts = 0;
          if (sendNew(decodeStoredState(kv.value))) finish();
        });
        // etcd3 resumes a watch after a reconnection from the store's revision at the time the
        // watch was created, not from its last event: a change between the revision it asked
        // for and its creation that had not arrived yet is lost. Read the state again once it
        // is back (the history has whatever was missed).
        let reconnecting = false;
        w.on("disconnected", () => {
          reconnecting = true;
        });
        w.on("connected", () => {
          if (!reconnecting || finished || watcher !== w) return;
          reconnecting = false;
          catchUp().catch((err: unknown) => {
            const e = toDsatError(err);
            if (e.code === Code.NotFound) finish(e);
            else this.#log.debug("task watch: reading again after a reconnection failed", { task: taskId, error: e.message });
          });
        });
        w.on("delete", () => {
          if (watcher === w) finish(dsatError(Code.NotFound, `task "${taskId}" was deleted`));
        });
        // etcd cancels a watch whose revision was compacted away: read the state again
        // and watch on from there (what was missed is in the history).
        w.on("error", (err) => {
          if (finished || watcher !== w) return;
          watcher = undefined;
          w.cancel().catch(() => {});
          this.#log.info("task watch lost; re-reading", { task: taskId, error: err.message });
          restart().catch((e: unknown) => finish(toDsatError(e)));
        });
      };

      /**
       * Reads the task again and sends what is new in it: the revision read, to watch on
       * from, or undefined when the Watch is over. NOT_FOUND once a task seen is deleted.
       */
      const catchUp = async (): Promise<string | undefined> => {
        const { stored, revision } = await this.#store.readAt(taskId);
        if (finished) return undefined;
        if (!stored && lastSeq > 0n) throw dsatError(Code.NotFound, `task "${taskId}" was deleted`);
        if (stored && sendNew(stored.state)) {
          finish();
          return undefined;
        }
        return revision;
      };

      const restart = async (): Promise<void> => {
        if (++restarts > WATCH_RESTARTS) {
          throw dsatError(Code.Unavailable, `the etcd watch of task "${taskId}" failed ${WATCH_RESTARTS} times`);
        }
        const revision = await catchUp();
        if (revision !== undefined) await start(nextRevision(revision));
      };

      start(nextRevision(first.revision)).catch((e: unknown) => finish(toDsatError(e)));
    });
  }

  async #list(req: ListRequest): Promise<MessageInitShape<typeof ListResponseSchema>> {
    const pageSize = req.pageSize === 0 ? DEFAULT_PAGE_SIZE : Math.min(req.pageSize, MAX_PAGE_SIZE);
    const states = new Set(req.states);
    const { matches, nextPageToken } = await this.#scanTasks(req.pageToken, "List", pageSize, (s) =>
      (!req.pipeline || s.task?.pipeline === req.pipeline) && (states.size === 0 || states.has(s.state)),
    );
    for (const s of matches) s.history = [];
    return { tasks: matches, nextPageToken };
  }

  /**
   * ClaimTasks from the index of unfinished tasks. With include_own, first the caller's own
   * entries (from the first of them, whatever the token: tasks that a claim whose answer was
   * lost moved there are among them), then the entries of the routers claimed from, in key
   * order from after the token. At most pageSize tasks and MAX_SCAN_KEYS entries per call.
   * The records are the truth: an entry whose record has ended, moved or gone (an older
   * status server wrote it) is not a match, and is deleted, fenced on the record.
   */
  async #openTasks(
    req: ClaimTasksRequest,
    pageSize: number,
    orphan: (owner: string) => boolean,
    revision: string,
  ): Promise<{ matches: TaskState[]; nextPageToken: string }> {
    const to = req.toRouterId;
    const ranges = {
      own: this.#keys.openTasksOf(to),
      claim: req.fromRouterId ? this.#keys.openTasksOf(req.fromRouterId) : this.#keys.openTasks(),
    };
    // A token is where the last call stopped and the key it read last ("" for none): "o:" in
    // the own entries, "b:" in the others' after the own ones, "c:" in the others' without
    // them. Own entries are read from the first unless the token is in them; the others'
    // from the first after own ones.
    const tag = req.pageToken.slice(0, 2);
    let phase: "own" | "claim";
    let resume: boolean;
    if (req.includeOwn) {
      phase = tag === "b:" ? "claim" : "own";
      resume = tag === "b:" || tag === "o:";
    } else {
      phase = "claim";
      resume = tag === "b:" || tag === "c:";
    }
    let after: Buffer | undefined;
    if (resume && req.pageToken.length > 2) {
      after = Buffer.from(req.pageToken.slice(2), "base64url");
      if (!after.toString().startsWith(ranges[phase]) || after.length <= ranges[phase].length) {
        throw dsatError(Code.InvalidArgument, "page_token is not one that ClaimTasks returned for these routers");
      }
    }
    const tokenAt = (key: Buffer | undefined) => `${phase === "own" ? "o" : req.includeOwn ? "b" : "c"}:${key?.toString("base64url") ?? ""}`;
    const entries: { owner: string; taskId: string; key: Buffer }[] = [];
    let scanned = 0;
    let next = "";
    scan: for (;;) {
      if (scanned >= MAX_SCAN_KEYS) {
        next = tokenAt(after);
        break;
      }
      const prefix = Buffer.from(ranges[phase]);
      const res = await this.#etcd.kv.range({
        key: after ? keyAfter(after) : prefix,
        range_end: prefixEnd(prefix),
        limit: Math.min(OPEN_SCAN_CHUNK_KEYS, MAX_SCAN_KEYS - scanned),
        keys_only: true,
        // At the revision the index was trusted at (OpenIndex.trustedRevision).
        revision,
      });
      for (const [i, kv] of res.kvs.entries()) {
        scanned++;
        const entry = this.#keys.parseOpenTask(kv.key.toString());
        if (!entry || !(phase === "own" ? entry.routerId === to : orphan(entry.routerId))) continue;
        entries.push({ owner: entry.routerId, taskId: entry.taskId, key: kv.key });
        if (entries.length === pageSize) {
          const more = i < res.kvs.length - 1 || res.more || phase === "own";
          next = more ? tokenAt(kv.key) : "";
          break scan;
        }
      }
      const last = res.kvs[res.kvs.length - 1];
      if (res.more && last) {
        after = last.key;
        continue;
      }
      if (phase === "claim") break;
      phase = "claim";
      after = undefined;
    }

    // An entry was taken for its router; its record must still be that router's, unfinished.
    const records = await this.#store.readRecords(entries.map((e) => e.taskId));
    const matches: TaskState[] = [];
    const stale: { key: Buffer; taskId: string; modRevision: string }[] = [];
    entries.forEach((entry, i) => {
      const kv = records[i];
      const s = kv ? decodeStoredState(kv.value) : undefined;
      if (s?.task && !isTaskTerminal(s.state) && s.routerId === entry.owner) matches.push(s);
      else stale.push({ key: entry.key, taskId: entry.taskId, modRevision: kv?.mod_revision ?? "0" });
    });
    await this.#index.dropStale(stale);
    return { matches, nextPageToken: next };
  }

  /**
   * Reads task records in key order from after `token`, keeping those `pick` wants, until
   * `pageSize` are kept or the records end. Bounded work per call: after MAX_SCAN_KEYS records
   * it stops with a token even if the page is short (a short page with a token is a right answer).
   */
  async #scanTasks(
    token: string,
    method: string,
    pageSize: number,
    pick: (s: TaskState) => boolean,
  ): Promise<{ matches: TaskState[]; nextPageToken: string }> {
    const prefix = this.#keys.tasks();
    const end = prefixEnd(Buffer.from(prefix));
    let from: Buffer = Buffer.from(prefix);
    if (token) {
      const after = Buffer.from(token, "base64url");
      if (!after.toString().startsWith(prefix) || after.length <= prefix.length) {
        throw dsatError(Code.InvalidArgument, `page_token is not one that ${method} returned`);
      }
      from = keyAfter(after);
    }
    const matches: TaskState[] = [];
    let scanned = 0;
    for (;;) {
      const res = await this.#etcd.kv.range({
        key: from,
        range_end: end,
        limit: Math.min(SCAN_CHUNK_KEYS, MAX_SCAN_KEYS - scanned),
      });
      for (const [i, kv] of res.kvs.entries()) {
        scanned++;
        const s = decodeStoredState(kv.value);
        if (!pick(s)) continue;
        matches.push(s);
        if (matches.length === pageSize) {
          const more = i < res.kvs.length - 1 || res.more;
          return { matches, nextPageToken: more ? pageToken(kv.key) : "" };
        }
      }
      const last = res.kvs[res.kvs.length - 1];
      if (!res.more || !last) return { matches, nextPageToken: "" };
      if (scanned >= MAX_SCAN_KEYS) return { matches, nextPageToken: pageToken(last.key) };
      from = keyAfter(last.key);
    }
  }
}

/**
 * The handlers of dsat.v1.PipelineService: definitions are validated, versioned and
 * stored in etcd as protobuf JSON, at pipelines/versions/<name>/<version> and
 * pipelines/current/<name>, written together by one fenced transaction.
 */
export class PipelineHandlers {
  readonly #etcd: Etcd3;
  readonly #keys: Keys;
  readonly #log: Logger;

  constructor(etcd: Etcd3, keys: Keys, logger: Logger) {
    this.#etcd = etcd;
    this.#keys = keys;
    this.#log = logger;
  }

  /** Serves PipelineService on a grpc-js server. */
  addToServer(server: grpc.Server): void {
    const handlers: ServiceHandlers<MethodsOf<typeof PipelineService>> = {
      applyPipeline: async (req) => {
        if (!req.pipeline) throw dsatError(Code.InvalidArgument, "pipeline is required");
        return this.#apply(req.pipeline);
      },
      getPipeline: async (req) => ({ pipeline: await this.#get(req.name, req.version) }),
      listPipelines: async () => ({ pipelines: await this.#listCurrent() }),
    };
    addService(server, PipelineService, handlers);
  }

  async #apply(definition: Pipeline): Promise<{ pipeline: Pipeline; changed: boolean }> {
    const problems = validatePipeline(definition);
    if (problems.length > 0) {
      const name = definition.name ? ` "${definition.name}"` : "";
      throw dsatError(Code.InvalidArgument, `invalid pipeline${name}: ${problems.join("; ")}`);
    }
    const name = definition.name;
    const currentKey = Buffer.from(this.#keys.pipelineCurrent(name));
    for (let attempt = 0; attempt < APPLY_ATTEMPTS; attempt++) {
      const res = await this.#etcd.kv.range({ key: currentKey });
      const kv = res.kvs[0];
      let version: bigint;
      const compare: ICompare[] = [];
      if (kv) {
        const current = parsePipeline(kv.value);
        if (sameDefinition(current, definition)) return { pipeline: current, changed: false };
        version = current.version + 1n;
        compare.push({ key: currentKey, target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: kv.mod_revision });
      } else {
        // No current version: start after any version left behind, never over it.
        version = (await this.#lastVersion(name)) + 1n;
        compare.push({ key: currentKey, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: 0 });
      }
      const versionKey = Buffer.from(this.#keys.pipelineVersion(name, version));
      compare.push({ key: versionKey, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: 0 });
      const next = clone(PipelineSchema, definition);
      next.version = version;
      const json = Buffer.from(toJsonString(PipelineSchema, next));
      const txn = await this.#etcd.kv.txn({
        compare,
        success: [{ request_put: { key: versionKey, value: json } }, { request_put: { key: currentKey, value: json } }],
        failure: [],
      });
      if (txn.succeeded) {
        this.#log.info("pipeline applied", { pipeline: name, version });
        return { pipeline: next, changed: true };
      }
    }
    throw dsatError(Code.Aborted, `pipeline "${name}" kept changing under other writers; apply it again`);
  }

  async #lastVersion(name: string): Promise<bigint> {
    const prefix = Buffer.from(`${this.#keys.pipelineVersion(name, 0).replace(/\d+$/, "")}`);
    const res = await this.#etcd.kv.range({
      key: prefix,
      range_end: prefixEnd(prefix),
      limit: 1,
      sort_order: SortOrder.Descend,
      sort_target: SortTarget.Key,
      keys_only: true,
    });
    const kv = res.kvs[0];
    if (!kv) return 0n;
    const digits = /(\d+)$/.exec(kv.key.toString())?.[1];
    return digits ? BigInt(digits) : 0n;
  }

  async #get(name: string, version: bigint): Promise<Pipeline> {
    if (!name) throw dsatError(Code.InvalidArgument, "name is required");
    const key = version === 0n ? this.#keys.pipelineCurrent(name) : this.#keys.pipelineVersion(name, version);
    const res = await this.#etcd.kv.range({ key: Buffer.from(key) });
    const kv = res.kvs[0];
    if (!kv) {
      throw dsatError(
        Code.NotFound,
        version === 0n ? `pipeline "${name}" not found` : `pipeline "${name}" version ${version} not found`,
      );
    }
    return parsePipeline(kv.value);
  }

  async #listCurrent(): Promise<Pipeline[]> {
    const prefix = Buffer.from(this.#keys.pipelinesCurrent());
    const res = await this.#etcd.kv.range({ key: prefix, range_end: prefixEnd(prefix) });
    return res.kvs.map((kv) => parsePipeline(kv.value)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
}

/** True when two definitions differ at most in their version. */
function sameDefinition(a: Pipeline, b: Pipeline): boolean {
  const x = clone(PipelineSchema, a);
  const y = clone(PipelineSchema, b);
  x.version = 0n;
  y.version = 0n;
  return equals(PipelineSchema, x, y);
}

function parsePipeline(value: Buffer): Pipeline {
  return fromJsonString(PipelineSchema, value.toString(), { ignoreUnknownFields: true });
}

/** True for the task-level terminal transition, after which a Watch ends. */
function endsTask(t: Transition): boolean {
  return t.stage === "" && isTaskTerminal(t.to);
}

function nextRevision(revision: string): string {
  return (BigInt(revision) + 1n).toString();
}

function pageToken(key: Buffer): string {
  return key.toString("base64url");
}
