import { create } from "@bufbuild/protobuf";
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

interface Item {
  readonly task?: Task;
  /** For a task: told whether status created it (false: a task with that id existed). */
  readonly onCreated?: (isNew: boolean) => void;
  readonly transition?: Transition;
  readonly done?: { resolve(): void; reject(err: unknown): void };
}

/** Options of {@link StatusReporter}. */
export interface StatusReporterOptions {
  /** Items in one Report call at most. Default 2000. */
  maxBatch: number;
  /** Give up on an item after this long without a status server taking it, in milliseconds. Default 60000. */
  giveUpAfterMs: number;
  /** Told when StatusService refuses a transition because another router drives the task now. */
  onNotOwner?: (taskId: string, reason: string) => void;
  /** Told of every transition queued by send or sendDurable, in order (for telemetry). Default none. */
  onTransition?: (t: Transition) => void;
}

const DEFAULT_STATUS_REPORTER_OPTIONS: Readonly<StatusReporterOptions> = Object.freeze({
  maxBatch: 2000,
  giveUpAfterMs: 60_000,
});

/**
 * StatusReporter sends tasks and transitions to StatusService in order. At most one Report
 * is in flight; what arrives meanwhile waits and goes in the next one, so batches grow with
 * the load and nothing waits when the load is low. A failed Report is sent again, to
 * another status server when there is one (Report is replay-safe).
 */
export class StatusReporter {
  readonly #routerId: string;
  readonly #logger: Logger;
  readonly #opts: StatusReporterOptions;
  readonly #servers: () => Member[];
  #queue: Item[] = [];
  #busy = false;
  #next = 0;
  #closed = false;
  /** Reports sent, for metrics and benchmarks. */
  reports = 0;

  constructor(
    routerId: string,
    servers: () => Member[],
    logger: Logger,
    options: Partial<StatusReporterOptions> = {},
  ) {
    this.#routerId = routerId;
    this.#servers = servers;
    this.#logger = logger;
    this.#opts = { ...DEFAULT_STATUS_REPORTER_OPTIONS, ...options };
  }

  /** Items waiting to be sent. */
  get backlog(): number {
    return this.#queue.length;
  }

  /**
   * Stores a new task and its first transitions; resolves once they are durable, with
   * false when a task with that id already existed (then nothing was stored).
   */
  create(task: Task, transitions: Transition[]): Promise<boolean> {
    let isNew = true;
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ task, onCreated: (n) => {
        isNew = n;
      } });
      transitions.forEach((t, i) => {
        this.#queue.push(i === transitions.length - 1 ? { transition: t, done: { resolve, reject } } : { transition: t });
      });
      if (transitions.length === 0) this.#queue.push({ done: { resolve, reject } });
      this.#kick();
    }).then(() => isNew);
  }

  /** Queues a transition and resolves once it is durable (or rejects when given up). */
  sendDurable(t: Transition): Promise<void> {
    this.#opts.onTransition?.(t);
    return new Promise((resolve, reject) => {
      this.#queue.push({ transition: t, done: { resolve, reject } });
      this.#kick();
    });
  }

  /** Queues a transition; it is sent in order with everything else. */
  send(t: Transition): void {
    this.#opts.onTransition?.(t);
    this.#queue.push({ transition: t });
    this.#kick();
  }

  /** Resolves when everything queued so far is durable (or given up). */
  flush(): Promise<void> {
    if (this.#queue.length === 0 && !this.#busy) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#queue.push({ done: { resolve, reject } });
      this.#kick();
    });
  }

  close(): void {
    this.#closed = true;
  }

  #kick(): void {
    if (this.#busy || this.#queue.length === 0) return;
    this.#busy = true;
    setImmediate(() => void this.#loop());
  }

  async #loop(): Promise<void> {
    while (this.#queue.length > 0 && !this.#closed) {
      const batch = this.#queue.slice(0, this.#opts.maxBatch);
      const started = Date.now();
      let backoff = 50;
      for (;;) {
        try {
          await this.#send(batch);
          break;
        } catch (err) {
          const e = toDsatError(err);
          if (Date.now() - started > this.#opts.giveUpAfterMs || this.#closed) {
            this.#logger.error("giving up on a status report", { error: e.message, items: batch.length });
            this.#queue.splice(0, batch.length);
            for (const it of batch) it.done?.reject(e);
            batch.length = 0;
            break;
          }
          this.#logger.warn("status report failed; sending again", { error: e.message });
          await new Promise((r) => setTimeout(r, backoff));
          backoff = Math.min(backoff * 2, 1_000);
        }
      }
      if (batch.length === 0) continue;
      this.#queue.splice(0, batch.length);
      for (const it of batch) it.done?.resolve();
    }
    this.#busy = false;
  }

  async #send(batch: Item[]): Promise<void> {
    const servers = this.#servers();
    if (servers.length === 0) throw dsatError(Code.Unavailable, "no status server is registered in etcd");
    const server = servers[this.#next++ % servers.length] as Member;
    const createdItems = batch.filter((it) => it.task);
    const created = createdItems.map((it) => it.task as Task);
    const transitions = batch.flatMap((it) => (it.transition ? [it.transition] : []));
    if (created.length === 0 && transitions.length === 0) return;
    this.reports++;
    const res = await clientTo(StatusService, server.address).report(
      create(ReportRequestSchema, { created, transitions, routerId: this.#routerId }),
      { timeoutMs: 10_000 },
    );
    res.transitions.forEach((o, i) => {
      if (o.notOwner) {
        const t = transitions[i];
        if (t) this.#opts.onNotOwner?.(t.taskId, o.reason);
        return;
      }
      if (!o.accepted) {
        const t = transitions[i];
        this.#logger.warn("status refused a transition", { task: t?.taskId, stage: t?.stage, reason: o.reason });
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
