import { create } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import {
  Code,
  clientTo,
  dsatError,
  type Logger,
  type Member,
  ReportRequestSchema,
  StatusService,
  type Task,
  type Transition,
  toDsatError,
} from "@dsat/sdk";
import { withDeadline } from "../common/deadline.ts";
import type { LocalStatus, ReportOutcomes } from "../common/embedded-status.ts";
import { laneOf } from "../common/lanes.ts";
import { encodeTransitionField } from "../common/transition-encoding.ts";

/** ReportRequest.transitions (proto/dsat/v1/status.proto): a one-byte tag. */
const TRANSITIONS_FIELD = 3;

interface Item {
  readonly task?: Task;
  /** For a task: told whether status created it (false: a task with that id existed). */
  readonly onCreated?: (isNew: boolean) => void;
  readonly transition?: Transition;
  readonly done?: { resolve(): void; reject(err: unknown): void };
  /** The task a marker (an item with only `done`) belongs to, when it belongs to one. */
  readonly taskId?: string;
}

/** Options of {@link StatusReporter}. */
export interface StatusReporterOptions {
  /** Items in one Report call at most. Default 20000. */
  maxBatch: number;
  /**
   * Bytes of payloads and outputs in one Report call at most (a single larger item goes
   * alone): a Report must stay under StatusService's message limit (4 MiB + 64 KiB).
   * Default 3 MiB.
   */
  maxBatchBytes: number;
  /**
   * Refuse the tasks a Report creates after this long without a status server taking it, in
   * milliseconds (their Submit fails; default 60000). The steps of tasks accepted before are
   * never given up: they are sent again, every second at most, until a status server stores
   * them or the reporter closes (a task whose end is lost would never end in StatusService).
   */
  giveUpAfterMs: number;
  /**
   * Reports in flight at once at most (default 1). Tasks are spread over that many lanes by
   * their id; each lane sends one Report at a time, so a task's items stay in order.
   */
  lanes: number;
  /**
   * How long a transition that nobody waits for may be held back while the lane is busy,
   * in milliseconds (default 250; 0: never held). A held transition goes with the next
   * item of its task that someone waits for (the task's end, say), or after this long:
   * under load a task's steps share one write in StatusService. When the lane is idle a
   * transition goes at once, so at low load nothing waits.
   */
  lingerMs: number;
  /**
   * A lane that has nothing else to send, and holds the transitions of fewer tasks than
   * this, sends them at once (default 16; 0: never): so few tasks mean low load, where
   * holding would only delay what a Watch sees. Under load the lane holds the steps of
   * hundreds of tasks and keeps holding.
   */
  idleReleaseBelow: number;
  /** Told when StatusService refuses a transition because another router drives the task now. */
  onNotOwner?: (taskId: string, reason: string) => void;
  /** Told of every transition queued by send or sendDurable, in order (for telemetry). Default none. */
  onTransition?: (t: Transition) => void;
  /**
   * Told of every Report call when it ends (for metrics): the tasks and transitions it
   * carried, its round trip in seconds, and whether StatusService answered it. Default none.
   */
  onReport?: (items: number, seconds: number, ok: boolean) => void;
  /**
   * A status server of this process (the router's own, see RouterOptions.embedStatus):
   * Reports go to its task store directly, without encoding or a network hop, while it is
   * open; to the registered status servers otherwise. Default none.
   */
  local?: LocalStatus;
  /** The deadline of a Report, in milliseconds: past it, it is sent again. Default 10000. */
  reportTimeoutMs: number;
}

const DEFAULT_STATUS_REPORTER_OPTIONS: Readonly<StatusReporterOptions> = Object.freeze({
  maxBatch: 20_000,
  maxBatchBytes: 3 * 1024 * 1024,
  giveUpAfterMs: 60_000,
  lanes: 1,
  lingerMs: 250,
  idleReleaseBelow: 16,
  reportTimeoutMs: 10_000,
});

/**
 * StatusReporter sends tasks and transitions to StatusService, in order per task.
 *
 * Tasks are spread over `lanes` lanes by id. A lane has at most one Report in flight; what
 * arrives meanwhile waits and goes in the next one, so batches grow with the load and
 * nothing waits when the load is low. A failed Report is sent again, to another status
 * server when there is one (Report is replay-safe).
 *
 * Transitions that nobody waits for (`send`) may be held back while the lane is busy (see
 * `lingerMs`), so that a task's steps reach StatusService together: each Report costs
 * StatusService one etcd write per task in it, whatever the number of its transitions.
 */
export class StatusReporter {
  readonly #lanes: Lane[];
  /** Reports sent, for metrics and benchmarks. */
  get reports(): number {
    return this.#lanes.reduce((n, l) => n + l.reports, 0);
  }

  constructor(
    routerId: string,
    servers: () => Member[],
    logger: Logger,
    options: Partial<StatusReporterOptions> = {},
  ) {
    const opts = { ...DEFAULT_STATUS_REPORTER_OPTIONS, ...options };
    const count = Math.max(1, Math.floor(opts.lanes));
    this.#lanes = Array.from({ length: count }, (_, i) => new Lane(i, routerId, servers, logger, opts));
    this.#opts = opts;
  }

  readonly #opts: StatusReporterOptions;

  /** Items waiting to be sent (held ones included). */
  get backlog(): number {
    return this.#lanes.reduce((n, l) => n + l.backlog, 0);
  }

  /** Transitions held back (a part of the backlog). */
  get held(): number {
    return this.#lanes.reduce((n, l) => n + l.held, 0);
  }

  /**
   * Stores a new task and its first transitions; resolves once they are durable, with
   * false when a task with that id already existed (then nothing was stored).
   *
   * `hold`: the create may be held back like a transition sent with `send` (lingerMs, and
   * only while the lane is busy), and the task's next steps join it: a task that ends within
   * that time is stored once, with its end, instead of twice. Whoever waits for the create
   * then waits that long too.
   */
  create(task: Task, transitions: Transition[], hold = false): Promise<boolean> {
    let isNew = true;
    const lane = this.#lane(task.id);
    return new Promise<void>((resolve, reject) => {
      const items: Item[] = [
        {
          task,
          onCreated: (n) => {
            isNew = n;
          },
        },
      ];
      transitions.forEach((t, i) => {
        items.push(i === transitions.length - 1 ? { transition: t, done: { resolve, reject } } : { transition: t });
      });
      if (transitions.length === 0) items.push({ done: { resolve, reject }, taskId: task.id });
      lane.release(task.id);
      if (hold) lane.holdAll(task.id, items);
      else for (const it of items) lane.push(it);
    }).then(() => isNew);
  }

  /** Queues a transition and resolves once it is durable (or rejects when given up). */
  sendDurable(t: Transition): Promise<void> {
    this.#opts.onTransition?.(t);
    const lane = this.#lane(t.taskId);
    return new Promise((resolve, reject) => {
      lane.release(t.taskId);
      lane.push({ transition: t, done: { resolve, reject } });
    });
  }

  /** Queues a transition; it is sent in order with everything else of its task, maybe held back a little. */
  send(t: Transition): void {
    this.#opts.onTransition?.(t);
    this.#lane(t.taskId).hold(t);
  }

  /**
   * Drops what is not sent yet of a task that this router stopped driving (it moved to
   * another router, or came back to this one through a claim, which resumes it from
   * StatusService's record): a forgotten run's steps must not be stored after the claim,
   * when the record is this router's again. Whoever waits for a dropped item is told (ABORTED).
   * What a Report in flight carries is sent already; StatusService's fence decides on it.
   */
  forget(taskId: string): void {
    this.#lane(taskId).forget(taskId);
  }

  /** Resolves when everything queued so far (held transitions included) is durable, or given up. */
  async flush(): Promise<void> {
    await Promise.all(this.#lanes.map((l) => l.flush()));
  }

  close(): void {
    for (const l of this.#lanes) l.close();
  }

  #lane(taskId: string): Lane {
    if (this.#lanes.length === 1) return this.#lanes[0] as Lane;
    return this.#lanes[laneOf(taskId, this.#lanes.length)] as Lane;
  }
}

/** One lane: its own queue, one Report in flight at a time. */
class Lane {
  readonly #index: number;
  readonly #routerId: string;
  readonly #logger: Logger;
  readonly #opts: StatusReporterOptions;
  readonly #servers: () => Member[];
  /** Ready to send, in order; while a Report is in flight its items are the first ones. */
  #queue: Item[] = [];
  /** Transitions held back, by task, in the order their first one was held. */
  readonly #held = new Map<string, { since: number; items: Item[] }>();
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  /** Items at the head of the queue in the Report in flight (they can no longer be taken back). */
  #sending = 0;
  /** When (ms into the current outage) it was last logged. */
  #lastOutageLog = 0;
  #next: number;
  #closed = false;
  reports = 0;

  constructor(index: number, routerId: string, servers: () => Member[], logger: Logger, opts: StatusReporterOptions) {
    this.#index = index;
    this.#next = index;
    this.#routerId = routerId;
    this.#servers = servers;
    this.#logger = logger;
    this.#opts = opts;
  }

  get backlog(): number {
    return this.#queue.length + this.held;
  }

  /** Transitions held back (counted when asked: metrics and tests ask, the hot path never). */
  get held(): number {
    let n = 0;
    for (const h of this.#held.values()) n += h.items.length;
    return n;
  }

  push(item: Item): void {
    this.#queue.push(item);
    this.#kick();
  }

  /** Holds a transition back while the lane is busy; sends it at once when it is idle. */
  hold(t: Transition): void {
    const item: Item = { transition: t };
    const held = this.#held.get(t.taskId);
    if (held) held.items.push(item);
    else if (this.#holds()) this.#holdNew(t.taskId, [item]);
    else this.push(item);
  }

  /** Holds a task's items back, in order, after those of it held already (see hold). */
  holdAll(taskId: string, items: Item[]): void {
    const held = this.#held.get(taskId);
    if (held) held.items.push(...items);
    else if (this.#holds()) this.#holdNew(taskId, items);
    else for (const it of items) this.push(it);
  }

  /** Whether what comes now is held: the lane is busy, and holding is on. */
  #holds(): boolean {
    return this.#opts.lingerMs > 0 && (this.#busy || this.#queue.length > 0);
  }

  #holdNew(taskId: string, items: Item[]): void {
    this.#held.set(taskId, { since: performance.now(), items });
    this.#arm();
  }

  /** Moves a task's held transitions to the queue (before what comes next of that task). */
  release(taskId: string): void {
    const held = this.#held.get(taskId);
    if (!held) return;
    this.#held.delete(taskId);
    for (const it of held.items) this.#queue.push(it);
  }

  forget(taskId: string): void {
    const held = this.#held.get(taskId);
    this.#held.delete(taskId);
    const dropped: Item[] = held ? [...held.items] : [];
    const kept = this.#queue.slice(0, this.#sending);
    for (let i = this.#sending; i < this.#queue.length; i++) {
      const it = this.#queue[i] as Item;
      if ((it.task?.id ?? it.transition?.taskId ?? it.taskId) === taskId) dropped.push(it);
      else kept.push(it);
    }
    if (kept.length !== this.#queue.length) this.#queue = kept;
    if (dropped.length === 0) return;
    const err = dsatError(Code.Aborted, `task ${taskId} is no longer driven by this run of it; its unsent steps were dropped`);
    for (const it of dropped) it.done?.reject(err);
  }

  flush(): Promise<void> {
    this.#releaseAll();
    if (this.#queue.length === 0 && !this.#busy) return Promise.resolve();
    return new Promise((resolve, reject) => this.push({ done: { resolve, reject } }));
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    // Whoever still waits is told now (a Report in flight may yet store its items).
    const err = dsatError(Code.Unavailable, "the router is closing; these items were not stored");
    this.#releaseAll();
    for (const it of this.#queue) it.done?.reject(err);
  }

  #releaseAll(): void {
    for (const taskId of [...this.#held.keys()]) this.release(taskId);
  }

  /** Releases what was held lingerMs ago or more; arms again for the rest. */
  #arm(): void {
    if (this.#timer || this.#closed) return;
    const oldest = this.#held.values().next().value;
    if (!oldest) return;
    const wait = Math.max(1, oldest.since + this.#opts.lingerMs - performance.now());
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      const limit = performance.now() - this.#opts.lingerMs;
      for (const [taskId, held] of this.#held) {
        if (held.since > limit) break;
        this.release(taskId);
      }
      this.#kick();
      this.#arm();
    }, wait);
    this.#timer.unref();
  }

  #kick(): void {
    if (this.#busy || this.#queue.length === 0) return;
    this.#busy = true;
    setImmediate(() => void this.#loop());
  }

  async #loop(): Promise<void> {
    while (!this.#closed) {
      // Idle, holding the steps of only a few tasks (low load): they go now rather than wait.
      if (this.#queue.length === 0 && this.#held.size > 0 && this.#held.size < this.#opts.idleReleaseBelow) {
        this.#releaseAll();
      }
      if (this.#queue.length === 0) break;
      const batch = this.#queue.slice(0, this.#batchLength());
      const started = Date.now();
      this.#lastOutageLog = 0;
      let backoff = 50;
      for (;;) {
        try {
          // The batch is the queue's head while it is sent, and sent again after a failure.
          this.#sending = batch.length;
          await this.#send(batch);
          break;
        } catch (err) {
          const e = toDsatError(err);
          if (this.#closed) {
            this.#logger.error("closing with items not stored", { error: e.message, items: batch.length });
            this.#queue.splice(0, batch.length);
            for (const it of batch) it.done?.reject(e);
            batch.length = 0;
            break;
          }
          const waited = Date.now() - started;
          if (waited > this.#opts.giveUpAfterMs) {
            // New tasks are refused now; what was accepted stays, and is sent again.
            const refusal = dsatError(
              Code.Unavailable,
              `StatusService has stored nothing of this router's for ${(waited / 1000).toFixed(1)} s (the router's --status-give-up-ms is ${this.#opts.giveUpAfterMs}): the task was not accepted; submit it again once a status server and etcd are back (${e.rawMessage})`,
            );
            if (this.#refuseCreates(batch, refusal) && batch.length === 0) break;
            if (waited - this.#lastOutageLog > 30_000) {
              this.#lastOutageLog = waited;
              this.#logger.error("no status server has stored this lane's items for a while; still sending them", {
                error: e.message,
                items: this.#queue.length,
                seconds: Math.round(waited / 1000),
              });
            }
          }
          // StatusService cannot store anything (etcd out of space): new tasks are refused now,
          // with the cause, rather than after giveUpAfterMs; what was accepted before is sent
          // again until it is stored.
          if (e.code === Code.ResourceExhausted && this.#refuseCreates(batch, e) && batch.length === 0) break;
          this.#logger.warn("status report failed; sending again", { error: e.message });
          await new Promise((r) => setTimeout(r, backoff));
          backoff = Math.min(backoff * 2, 1_000);
        }
      }
      this.#sending = 0;
      if (batch.length === 0) continue;
      this.#queue.splice(0, batch.length);
      for (const it of batch) it.done?.resolve();
    }
    this.#sending = 0;
    this.#busy = false;
  }

  /**
   * Takes the tasks to be created out of the lane's queue (the batch in flight, and what
   * was queued behind it since: a batch of accepted steps is sent again and again during an
   * outage, and a new task behind it must not wait for that), with their first transitions,
   * failing whoever waits for them with `err`. `batch`, a prefix of the queue, keeps what
   * is left of it. True when some were taken.
   */
  #refuseCreates(batch: Item[], err: unknown): boolean {
    const refused = new Set<string>();
    for (const it of this.#queue) if (it.task) refused.add(it.task.id);
    if (refused.size === 0) return false;
    const inBatch = new Set(batch);
    const keptQueue: Item[] = [];
    const keptBatch: Item[] = [];
    for (const it of this.#queue) {
      const id = it.task?.id ?? it.transition?.taskId ?? it.taskId;
      if (id !== undefined && refused.has(id)) {
        it.done?.reject(err);
        continue;
      }
      keptQueue.push(it);
      if (inBatch.has(it)) keptBatch.push(it);
    }
    this.#queue.splice(0, this.#queue.length, ...keptQueue);
    batch.splice(0, batch.length, ...keptBatch);
    this.#sending = batch.length;
    return true;
  }

  /** How many items of the queue the next Report takes: maxBatch, and maxBatchBytes of payloads and outputs. */
  #batchLength(): number {
    const max = Math.min(this.#queue.length, this.#opts.maxBatch);
    let bytes = 0;
    for (let i = 0; i < max; i++) {
      const it = this.#queue[i] as Item;
      // The fixed part of a task or transition is a few hundred bytes at most.
      bytes += 256 + (it.task?.payload.length ?? 0) + (it.transition?.output.length ?? 0);
      if (bytes > this.#opts.maxBatchBytes && i > 0) return i;
    }
    return max;
  }

  /** One Report: to this process's status server while it is open, else to a registered one. */
  async #report(created: Task[], transitions: Transition[]): Promise<ReportOutcomes> {
    const local = this.#opts.local;
    if (local && !local.closed) {
      return withDeadline(
        local.report(create(ReportRequestSchema, { created, transitions, routerId: this.#routerId })),
        this.#opts.reportTimeoutMs,
        () => dsatError(Code.DeadlineExceeded, `this process's status server did not store a Report within ${this.#opts.reportTimeoutMs} ms`),
      );
    }
    const servers = this.#servers();
    if (servers.length === 0) throw dsatError(Code.Unavailable, "no status server is registered in etcd");
    const server = servers[this.#next++ % servers.length] as Member;
    // The transitions go in already encoded by the hand-written encoder (field 3 entries
    // in $unknown, which toBinary writes as they are): the same request for a decoder.
    const req = create(ReportRequestSchema, { created, routerId: this.#routerId });
    req.$unknown = transitions.map((t) => ({
      no: TRANSITIONS_FIELD,
      wireType: WireType.LengthDelimited,
      data: encodeTransitionField(TRANSITIONS_FIELD, t).subarray(1),
    }));
    return clientTo(StatusService, server.address).report(req, { timeoutMs: this.#opts.reportTimeoutMs });
  }

  async #send(batch: Item[]): Promise<void> {
    const createdItems: Item[] = [];
    const created: Task[] = [];
    const transitions: Transition[] = [];
    for (const it of batch) {
      if (it.task) {
        createdItems.push(it);
        created.push(it.task);
      }
      if (it.transition) transitions.push(it.transition);
    }
    if (created.length === 0 && transitions.length === 0) return;
    this.reports++;
    const started = performance.now();
    let res: ReportOutcomes | undefined;
    try {
      res = await this.#report(created, transitions);
    } finally {
      this.#opts.onReport?.(created.length + transitions.length, (performance.now() - started) / 1000, res !== undefined);
    }
    res.transitions.forEach((o, i) => {
      if (o.notOwner) {
        const t = transitions[i];
        if (t) this.#opts.onNotOwner?.(t.taskId, o.reason);
        return;
      }
      if (!o.accepted) {
        const t = transitions[i];
        this.#logger.warn("status refused a transition", {
          task: t?.taskId,
          stage: t?.stage,
          reason: o.reason,
          lane: this.#index,
        });
      }
    });
    res.created.forEach((o, i) => {
      createdItems[i]?.onCreated?.(o.accepted);
      if (!o.accepted && !o.duplicate) {
        this.#logger.warn("status refused a task", { task: created[i]?.id, reason: o.reason });
      }
    });
  }
}
