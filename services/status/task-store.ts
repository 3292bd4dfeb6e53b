import { clone, create } from "@bufbuild/protobuf";
import { type Timestamp, timestampNow } from "@bufbuild/protobuf/wkt";
import {
  Code,
  type ConnectError,
  dsatError,
  isTaskTerminal,
  Keys,
  type Logger,
  splitBySize,
  type ReportRequest,
  ReportRequestSchema,
  stateName,
  type Task,
  type TaskState,
  TaskStateSchema,
  toDsatError,
  type Transition,
} from "@dsat/sdk";
import { CompareResult, CompareTarget, type Etcd3, type ICompare, type IKeyValue, type IRequestOp } from "etcd3";
import { laneOf } from "../common/lanes.ts";
import { mapLimit } from "../common/map-limit.ts";
import { type Counter, type Histogram, SECONDS_BUCKETS, SIZE_BUCKETS } from "../common/metrics.ts";
import { NO_INDEX_OPS, openIndexOps } from "./open-index.ts";
import { RetentionLeases } from "./retention.ts";
import { applyClaim, applyCreate, applyTransition, type Outcome } from "./apply-transition.ts";
import { decodeStoredState, encodeTaskState, type EncodedParts, workingCopy } from "./state-encoding.ts";
import type { StatusOptions } from "./options.ts";

/** The options a TaskStore uses. */
export type TaskStoreOptions = Pick<
  StatusOptions,
  "prefix" | "cacheSize" | "maxTxnOps" | "maxTxnBytes" | "maxConflictRetries" | "lanes" | "taskRetentionMs" | "metrics"
>;

/** A task claimed: its state after the claim, and whether the claimer drove it already. */
export interface ClaimResult {
  readonly state: TaskState;
  readonly alreadyOwned: boolean;
}

/** The answer to one Report: an outcome per created task and per transition, in request order. */
export interface ReportResult {
  created: Outcome[];
  transitions: Outcome[];
}

/** A task state as stored, with the revisions that fence writes and start watches. */
export interface StoredTaskState {
  readonly state: TaskState;
  /** mod_revision of the key: the fencing token of the next write. */
  readonly modRevision: string;
  /** Revision of the store when it was read. */
  readonly revision: string;
}

/** Transactions of one batch in flight at once, at most. */
const TXN_CONCURRENCY = 8;

/**
 * TaskStore keeps task states in etcd (binary dsat.v1.TaskState with its history, at
 * keys.task(id)) and applies reports to them.
 *
 * Tasks are spread over `lanes` lanes by id (the hash the routers use), and a report is
 * split between the lanes of its tasks. Within a lane, reports are serialized and batched:
 * every report queued while the lane's previous batch was being written forms the next
 * batch, so lanes write at the same time and a task is only ever in one batch at a time.
 * A batch is grouped by task, applied in arrival order, and written by transactions of at most maxTxnOps keys and maxTxnBytes, each put
 * fenced by a compare on the key's mod_revision (create_revision 0 for a new key), so
 * that another StatusService writing the same task can never have its write lost: the
 * loser re-reads, re-applies and tries again. A report resolves once every write it
 * caused is committed.
 */
export class TaskStore {
  readonly #etcd: Etcd3;
  readonly #keys: Keys;
  readonly #opts: TaskStoreOptions;
  readonly #log: Logger;
  readonly #cache: StateCache;
  readonly #retention: RetentionLeases;
  readonly #lanes: Lane[];
  #closed = false;
  readonly #txns: Counter | undefined;
  readonly #txnKeys: Histogram | undefined;
  readonly #txnSeconds: Histogram | undefined;
  readonly #reportSeconds: Histogram | undefined;
  /**
   * Write task states compact: their history's entries without the task id (see
   * state-encoding.ts). Only while every status server reads them; the StatusServer keeps
   * this up to date from the status members' versions. Default false.
   */
  compactHistory = false;

  constructor(etcd: Etcd3, options: TaskStoreOptions, logger: Logger) {
    this.#etcd = etcd;
    this.#opts = options;
    this.#keys = new Keys(options.prefix);
    this.#log = logger;
    this.#cache = new StateCache(options.cacheSize);
    this.#retention = new RetentionLeases(etcd, options.taskRetentionMs);
    this.#lanes = Array.from({ length: Math.max(1, Math.floor(options.lanes)) }, () => ({ queue: [], loop: undefined }));
    this.#txns = options.metrics?.counter(
      "dsat_status_etcd_txns_total",
      "etcd transactions that wrote task states, by result (committed, conflict: a compare failed, error).",
      ["result"],
    );
    this.#txnSeconds = options.metrics?.histogram(
      "dsat_status_etcd_txn_seconds",
      "Duration of an etcd transaction that wrote task states (answered; failed ones are not counted).",
      [],
      SECONDS_BUCKETS,
    );
    this.#reportSeconds = options.metrics?.histogram(
      "dsat_status_report_seconds",
      "From a Report's arrival in the store to its answer: waiting for the batch before it, applying, writing to etcd.",
      [],
      SECONDS_BUCKETS,
    );
    options.metrics?.gauge(
      "dsat_status_cached_tasks",
      "Task states this status server holds in memory: tasks that have not ended, at most --cache-size.",
      [],
      () => [[[], this.#cache.size]],
    );
    this.#txnKeys = options.metrics?.histogram(
      "dsat_status_etcd_txn_keys",
      "Task states written by one etcd transaction (the batch size).",
      [],
      SIZE_BUCKETS,
    );
  }

  /** Whether close was called: reports are refused from then on. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Applies a report and resolves once what it changed is durable in etcd. */
  report(request: ReportRequest): Promise<ReportResult> {
    if (this.#closed) {
      return Promise.reject(dsatError(Code.Unavailable, "the status server is shutting down; report to another one"));
    }
    const started = performance.now();
    return new Promise<ReportResult>((resolve, reject) => {
      const answer = (r: ReportResult) => {
        this.#reportSeconds?.observe([], (performance.now() - started) / 1000);
        resolve(r);
      };
      this.#enqueue(newPending(request, [], answer, reject));
    });
  }

  /**
   * Moves tasks to router `to`, each only if router `from` (of that item) still drives it:
   * the same queue and fenced writes as reports. Resolves, once the moves are durable, with
   * each task's state after it (undefined where the claim was refused), and whether `to`
   * drove the task already (another of its claims moved it first).
   */
  claim(items: readonly { taskId: string; from: string }[], to: string): Promise<(ClaimResult | undefined)[]> {
    if (this.#closed) {
      return Promise.reject(dsatError(Code.Unavailable, "the status server is shutting down; claim on another one"));
    }
    return new Promise<(ClaimResult | undefined)[]>((resolve, reject) => {
      const claims = items.map((it) => ({ ...it, to, result: undefined as ClaimResult | undefined }));
      this.#enqueue(
        newPending(create(ReportRequestSchema, { routerId: to }), claims, () => resolve(claims.map((c) => c.result)), reject),
      );
    });
  }

  /** Splits a report between the lanes of its tasks; what has no task id is answered here. */
  #enqueue(p: PendingReport): void {
    const parts = new Map<number, LanePart>();
    const part = (taskId: string): LanePart => {
      const lane = this.#lanes.length === 1 ? 0 : laneOf(taskId, this.#lanes.length);
      let lp = parts.get(lane);
      if (!lp) {
        lp = { report: p, created: [], transitions: [], claims: [] };
        parts.set(lane, lp);
      }
      return lp;
    };
    const now = timestampNow();
    const { created, transitions, routerId } = p.request;
    created.forEach((task, index) => {
      if (!task.id) p.created[index] = applyCreate(undefined, task, routerId, now).outcome;
      else part(task.id).created.push(index);
    });
    transitions.forEach((transition, index) => {
      if (!transition.taskId) p.transitions[index] = applyTransition(undefined, transition, now);
      else part(transition.taskId).transitions.push(index);
    });
    p.claims.forEach((c, index) => {
      part(c.taskId).claims.push(index);
    });
    p.lanesLeft = parts.size;
    if (parts.size === 0) {
      this.#finish(p);
      return;
    }
    for (const [lane, lp] of parts) {
      (this.#lanes[lane] as Lane).queue.push(lp);
      this.#kick(lane);
    }
  }

  /** Reads a task's state from etcd (never from the cache): undefined when there is none. */
  async read(taskId: string): Promise<StoredTaskState | undefined> {
    return (await this.readAt(taskId)).stored;
  }

  /** Reads a task's state, and the etcd revision the read saw (also when there is no task). */
  async readAt(taskId: string): Promise<{ stored: StoredTaskState | undefined; revision: string }> {
    const res = await this.#etcd.kv.range({ key: Buffer.from(this.#keys.task(taskId)) });
    const kv = res.kvs[0];
    if (!kv) return { stored: undefined, revision: res.header.revision };
    return {
      stored: { state: decodeStoredState(kv.value), modRevision: kv.mod_revision, revision: res.header.revision },
      revision: res.header.revision,
    };
  }

  /** Refuses new reports and waits for the batches already taken to be written. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const lane of this.#lanes) {
      for (const lp of lane.queue.splice(0)) {
        const p = lp.report;
        if (p.settled) continue;
        p.settled = true;
        p.reject(dsatError(Code.Unavailable, "the status server is shutting down; report to another one"));
      }
    }
    await Promise.all(this.#lanes.map((l) => l.loop));
  }

  #kick(index: number): void {
    const lane = this.#lanes[index] as Lane;
    if (lane.loop) return;
    lane.loop = this.#run(lane).finally(() => {
      lane.loop = undefined;
      if (lane.queue.length > 0) this.#kick(index);
    });
  }

  async #run(lane: Lane): Promise<void> {
    while (lane.queue.length > 0) {
      // Let the reports that arrived in the same turn of the event loop join this batch.
      await new Promise((resolve) => setImmediate(resolve));
      const batch = lane.queue.splice(0);
      try {
        await this.#process(batch);
      } catch (err) {
        const e = toDsatError(err);
        this.#log.error("a batch of reports failed", { error: e.message });
        for (const lp of batch) {
          const p = lp.report;
          if (p.settled) continue;
          p.settled = true;
          p.reject(e);
        }
      }
    }
  }

  async #process(batch: LanePart[]): Promise<void> {
    const groups = new Map<string, TaskGroup>();
    const group = (taskId: string, report: PendingReport): TaskGroup => {
      let g = groups.get(taskId);
      if (!g) {
        g = newGroup(taskId, this.#keys.task(taskId));
        groups.set(taskId, g);
      }
      if (!g.reports.has(report)) {
        g.reports.add(report);
        report.remaining++;
      }
      return g;
    };
    for (const lp of batch) {
      const p = lp.report;
      const { created, transitions, routerId } = p.request;
      for (const index of lp.created) {
        const task = created[index] as Task;
        group(task.id, p).ops.push({ kind: "create", report: p, index, task, routerId });
      }
      for (const index of lp.transitions) {
        const transition = transitions[index] as Transition;
        group(transition.taskId, p).ops.push({ kind: "transition", report: p, index, transition, routerId });
      }
      for (const index of lp.claims) {
        const c = p.claims[index] as PendingReport["claims"][number];
        group(c.taskId, p).ops.push({ kind: "claim", report: p, index, from: c.from, to: c.to });
      }
      p.lanesLeft--;
      if (p.remaining === 0 && p.lanesLeft === 0) this.#finish(p);
    }
    if (groups.size === 0) return;

    const all = [...groups.values()];
    const misses: TaskGroup[] = [];
    for (const g of all) {
      const cached = this.#cache.get(g.taskId);
      if (cached) g.base = cached;
      // A task that the batch creates is taken to be new without reading etcd first: its put
      // is fenced on the key being absent (create revision 0), and a task that exists after
      // all fails that compare and is read and applied again (a conflict), so that a
      // resubmitted id still gets its duplicate answer. New tasks cost one round trip to etcd
      // instead of two.
      else if (g.ops[0]?.kind === "create") g.base = undefined;
      else misses.push(g);
    }
    await this.#load(misses);

    let todo = all;
    while (todo.length > 0) {
      const stamp = timestampNow();
      for (const g of todo) this.#apply(g, stamp);
      const quiet = todo.filter((g) => !g.write && !g.guard);
      for (const g of quiet) this.#settle(g);
      const writes = todo.filter((g) => g.write || g.guard);
      const chunks = this.#chunk(writes);
      // Ended tasks are put under the retention lease of the moment (see retention.ts).
      const lease =
        this.#retention.enabled && writes.some((g) => g.ended && g.value) ? await this.#retention.current() : undefined;
      const again: TaskGroup[] = [];
      await mapLimit(chunks, TXN_CONCURRENCY, async (chunk) => {
        again.push(...(await this.#commit(chunk, lease)));
      });
      todo = [];
      for (const g of again) {
        if (g.conflicts <= this.#opts.maxConflictRetries) {
          todo.push(g);
          continue;
        }
        this.#fail(
          g,
          dsatError(
            Code.Aborted,
            `task ${g.taskId} kept changing under other writers (${g.conflicts} conflicts in a row); report again`,
          ),
        );
      }
      if (todo.length > 0) this.#log.debug("write conflict; applying again", { tasks: todo.length });
    }
  }

  /**
   * Keeps a task's newest state in the cache, unless the task has ended (or is gone): an
   * ended task is not written again but for a rare replay, which reads it from etcd, and
   * keeping it would only fill the old generation of the heap (and the garbage collector's
   * work) with states that nobody applies to.
   */
  #remember(taskId: string, stored: CachedState | undefined): void {
    if (stored && !isTaskTerminal(stored.state.state)) this.#cache.set(taskId, stored);
    else this.#cache.delete(taskId);
  }

  /** A group's base is what etcd holds of its task now (kv: none when there is no task). */
  #rebase(g: TaskGroup, kv: IKeyValue | undefined): void {
    g.base = kv ? { state: decodeStoredState(kv.value), modRevision: kv.mod_revision } : undefined;
    this.#remember(g.taskId, g.base);
  }

  /** Reads the states of these groups from etcd into g.base and the cache. */
  async #load(groups: TaskGroup[]): Promise<void> {
    const kvs = await this.#readKeys(groups.map((g) => g.keyBytes));
    groups.forEach((g, i) => {
      this.#rebase(g, kvs[i]);
    });
  }

  /** The records of these tasks as etcd holds them now, in order (undefined: no record). */
  readRecords(taskIds: readonly string[]): Promise<(IKeyValue | undefined)[]> {
    return this.#readKeys(taskIds.map((id) => Buffer.from(this.#keys.task(id))));
  }

  /** Reads these keys, in transactions of at most maxTxnOps ranges; in order, undefined where there is none. */
  async #readKeys(keys: readonly Buffer[]): Promise<(IKeyValue | undefined)[]> {
    const out: (IKeyValue | undefined)[] = new Array(keys.length);
    const starts: number[] = [];
    for (let i = 0; i < keys.length; i += this.#opts.maxTxnOps) starts.push(i);
    await mapLimit(starts, TXN_CONCURRENCY, async (start) => {
      const chunk = keys.slice(start, start + this.#opts.maxTxnOps);
      const res = await this.#etcd.kv.txn({ success: chunk.map((key) => ({ request_range: { key } })) });
      chunk.forEach((_, i) => {
        out[start + i] = res.responses[i]?.response_range.kvs[0];
      });
    });
    return out;
  }

  /**
   * Applies a group's operations, in order, to a working copy of its base state (the
   * cached state is never changed: a failed or conflicting write leaves it as it was).
   */
  #apply(g: TaskGroup, now: Timestamp): void {
    let state = g.base ? workingCopy(g.base.state) : undefined;
    g.outcomes = [];
    g.write = false;
    g.guard = false;
    for (const op of g.ops) {
      let outcome: Outcome;
      if (op.kind === "create") {
        const r = applyCreate(state, op.task, op.routerId, now);
        state = r.state;
        outcome = r.outcome;
      } else if (op.kind === "claim") {
        outcome = applyClaim(state, g.taskId, op.from, op.to, now);
        if (!outcome.accepted) g.guard = true;
      } else {
        outcome = applyTransition(state, op.transition, now, op.routerId);
        // A refusal decided on a cached state is only right if that state is still the
        // newest: the compare of the transaction checks it.
        if (!outcome.accepted) g.guard = true;
      }
      if (outcome.accepted && !outcome.duplicate) g.write = true;
      g.outcomes.push(outcome);
    }
    g.next = state;
    g.ended = state !== undefined && isTaskTerminal(state.state);
    g.value = undefined;
    g.parts = undefined;
    g.index = NO_INDEX_OPS;
    if (g.write && state) {
      // The index of unfinished tasks follows the record, in the same fenced transaction.
      g.index = openIndexOps(this.#keys, g.taskId, g.base?.state, state);
      // Only what changed is encoded: the task (with its payload) and the stored history
      // reuse the bytes of the previous put.
      const encoded = encodeTaskState(state, g.base?.parts, this.compactHistory);
      g.value = encoded.value;
      g.parts = encoded.parts;
    }
  }

  /**
   * Splits groups into transactions of at most maxTxnOps operations (a record's put and its
   * index entries) and maxTxnBytes of keys and values.
   */
  #chunk(groups: TaskGroup[]): TaskGroup[][] {
    return splitBySize(
      groups,
      (g) => g.key.length * (1 + g.index.length) + (g.value?.length ?? 0),
      this.#opts.maxTxnBytes,
      this.#opts.maxTxnOps,
      (g) => 1 + g.index.length,
    );
  }

  /**
   * Writes one chunk in one fenced transaction; returns the groups to apply and write
   * again. When a compare fails (rare: another status server wrote one of these tasks),
   * every key of the chunk is read again: the groups whose key changed get the new state
   * as their base (a conflict), the others are written again as they are. (A failure
   * branch reading them in the same transaction would cost an encoded range request per
   * key on every transaction, for the rare one that needs it.)
   */
  async #commit(chunk: TaskGroup[], lease: string | undefined): Promise<TaskGroup[]> {
    const compare: ICompare[] = chunk.map((g) =>
      g.base
        ? { key: g.keyBytes, target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: g.base.modRevision }
        : { key: g.keyBytes, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: 0 },
    );
    const success: IRequestOp[] = [];
    for (const g of chunk) {
      if (!g.value) continue;
      success.push({ request_put: g.ended && lease ? { key: g.keyBytes, value: g.value, lease } : { key: g.keyBytes, value: g.value } });
      for (const op of g.index) success.push(op);
    }
    let res: Awaited<ReturnType<Etcd3["kv"]["txn"]>>;
    let current: (IKeyValue | undefined)[] = [];
    this.#txnKeys?.observe([], chunk.length);
    const started = performance.now();
    try {
      res = await this.#etcd.kv.txn({ compare, success, failure: [] });
      this.#txnSeconds?.observe([], (performance.now() - started) / 1000);
      this.#txns?.inc([res.succeeded ? "committed" : "conflict"]);
      if (!res.succeeded) current = await this.#readKeys(chunk.map((g) => g.keyBytes));
    } catch (err) {
      this.#txns?.inc(["error"]);
      // The transaction may or may not have been applied: forget what we knew, so that
      // the next report re-reads; a report sent again is then a harmless replay.
      const e = toDsatError(err);
      // A retention lease that etcd no longer knows (a pause longer than the retention): take a new one.
      if (/lease not found/i.test(e.message)) this.#retention.reset();
      this.#log.warn("writing task states failed", { tasks: chunk.length, error: e.message });
      for (const g of chunk) {
        this.#cache.delete(g.taskId);
        this.#fail(g, e);
      }
      return [];
    }
    if (!res.succeeded) {
      chunk.forEach((g, i) => {
        const kv = current[i];
        if ((kv?.mod_revision ?? "0") === (g.base?.modRevision ?? "0")) return;
        g.conflicts++;
        this.#rebase(g, kv);
      });
      return chunk;
    }
    for (const g of chunk) {
      g.conflicts = 0;
      if (g.value && g.next) this.#remember(g.taskId, { state: g.next, modRevision: res.header.revision, parts: g.parts });
      this.#settle(g);
    }
    return [];
  }

  /** Hands a group's outcomes to its reports. */
  #settle(g: TaskGroup): void {
    g.ops.forEach((op, i) => {
      const outcome = g.outcomes[i];
      if (!outcome) return;
      if (op.kind === "create") op.report.created[op.index] = outcome;
      else if (op.kind === "claim") {
        const c = op.report.claims[op.index];
        // A claim of a task that `to` drives already (two claims of the same router crossed)
        // is a replay: said so, so that the router does not resume a task it is running.
        if (c && outcome.accepted && g.next) c.result = { state: clone(TaskStateSchema, g.next), alreadyOwned: outcome.duplicate };
      } else {
        op.report.transitions[op.index] = outcome;
        if (!outcome.accepted) {
          const t = op.transition;
          this.#log.warn("transition refused", {
            task: t.taskId,
            stage: t.stage,
            attempt: t.attempt,
            from: stateName(t.from),
            to: stateName(t.to),
            member: t.memberId,
            reason: outcome.reason,
          });
        }
      }
    });
    this.#release(g);
  }

  #fail(g: TaskGroup, err: ConnectError): void {
    for (const p of g.reports) p.error ??= err;
    this.#release(g);
  }

  #release(g: TaskGroup): void {
    for (const p of g.reports) {
      p.remaining--;
      if (p.remaining === 0 && p.lanesLeft === 0) this.#finish(p);
    }
  }

  #finish(p: PendingReport): void {
    if (p.settled) return;
    p.settled = true;
    if (p.error) p.reject(p.error);
    else p.resolve({ created: p.created, transitions: p.transitions });
  }
}

interface PendingReport {
  readonly request: ReportRequest;
  readonly created: Outcome[];
  readonly transitions: Outcome[];
  /** Claims (from ClaimTasks): each gets the task's state once moved. */
  readonly claims: { taskId: string; from: string; to: string; result: ClaimResult | undefined }[];
  /** Task groups of the batches that this report waits for. */
  remaining: number;
  /** Lanes that have not yet taken their part of this report into a batch. */
  lanesLeft: number;
  error: ConnectError | undefined;
  settled: boolean;
  resolve(result: ReportResult): void;
  reject(err: unknown): void;
}

function newPending(
  request: ReportRequest,
  claims: PendingReport["claims"],
  resolve: (r: ReportResult) => void,
  reject: (err: unknown) => void,
): PendingReport {
  return {
    request,
    created: [],
    transitions: [],
    claims,
    remaining: 0,
    lanesLeft: 0,
    error: undefined,
    settled: false,
    resolve,
    reject,
  };
}

/** One lane of the store: its queue of report parts and the loop that writes them. */
interface Lane {
  queue: LanePart[];
  loop: Promise<void> | undefined;
}

/** What of one report falls in one lane: indexes into the report's lists. */
interface LanePart {
  readonly report: PendingReport;
  readonly created: number[];
  readonly transitions: number[];
  readonly claims: number[];
}

type Op =
  | { kind: "create"; report: PendingReport; index: number; task: Task; routerId: string }
  | { kind: "transition"; report: PendingReport; index: number; transition: Transition; routerId: string }
  | { kind: "claim"; report: PendingReport; index: number; from: string; to: string };

interface CachedState {
  readonly state: TaskState;
  readonly modRevision: string;
  /** The encoded pieces of `state` as last put (none when read from etcd). */
  readonly parts?: EncodedParts | undefined;
}

/** Everything a batch does to one task. */
interface TaskGroup {
  readonly taskId: string;
  readonly key: string;
  /** The key as etcd takes it, made once. */
  readonly keyBytes: Buffer;
  readonly ops: Op[];
  readonly reports: Set<PendingReport>;
  /** The state the operations apply to (undefined: no such key). */
  base: CachedState | undefined;
  next: TaskState | undefined;
  outcomes: Outcome[];
  /** The state changed: put it. */
  write: boolean;
  /** The index operations that go with the put (open-index.ts). */
  index: readonly IRequestOp[];
  /** An answer depends on the base state being the newest: compare it. */
  guard: boolean;
  /** The task has ended as a whole: its record is put under the retention lease. */
  ended: boolean;
  value: Buffer | undefined;
  parts: EncodedParts | undefined;
  /** Times in a row that another writer changed the task first. */
  conflicts: number;
}

function newGroup(taskId: string, key: string): TaskGroup {
  return {
    taskId,
    key,
    keyBytes: Buffer.from(key),
    ops: [],
    reports: new Set(),
    base: undefined,
    next: undefined,
    outcomes: [],
    write: false,
    index: NO_INDEX_OPS,
    guard: false,
    ended: false,
    value: undefined,
    parts: undefined,
    conflicts: 0,
  };
}

/** A least-recently-used map of task states, bounded in entries. */
class StateCache {
  readonly #max: number;
  readonly #map = new Map<string, CachedState>();

  constructor(max: number) {
    this.#max = max;
  }

  get(id: string): CachedState | undefined {
    const v = this.#map.get(id);
    if (v) {
      this.#map.delete(id);
      this.#map.set(id, v);
    }
    return v;
  }

  set(id: string, v: CachedState): void {
    if (this.#max === 0) return;
    this.#map.delete(id);
    this.#map.set(id, v);
    while (this.#map.size > this.#max) {
      const oldest = this.#map.keys().next().value;
      if (oldest === undefined) break;
      this.#map.delete(oldest);
    }
  }

  delete(id: string): void {
    this.#map.delete(id);
  }

  get size(): number {
    return this.#map.size;
  }
}
