import { create, type MessageShape } from "@bufbuild/protobuf";
import {
  type Assignment,
  AsyncQueue,
  type Cancel,
  Code,
  type ConnectError,
  type Load,
  dsatError,
  splitBySize,
  type Member,
  type ProcessRequest,
  ProcessRequestSchema,
  type Transition,
  toDsatError,
} from "@dsat/sdk";
import { processRequestWith } from "./assignment-encoding.ts";
import { decodeWorkerResponse, type ProcessResponseWireSchema, processClient } from "./worker-responses.ts";
import type { BatchHop } from "./router-telemetry.ts";

/** What a link tells its router. */
export interface WorkerLinkEvents {
  /** A transition came up from the worker. */
  onTransition(link: WorkerLink, t: Transition): void;
  /** The worker said hello (it is ready for tasks) or reported load: a slot may be free. */
  onReady(link: WorkerLink): void;
  /** The stream ended; `inFlight` holds what the worker had not finished. */
  onClosed(link: WorkerLink, err: ConnectError | undefined): void;
  /** A message went to the worker with this many assignments, or came with this many transitions (for metrics). */
  onMessage?(direction: Exclude<BatchHop, "client">, items: number): void;
}

/**
 * WorkerLink is the one bidirectional Process stream a router keeps to one worker.
 * Assignments and cancels are batched per turn of the event loop; the link counts what
 * the worker runs so that the router never sends more than its capacity.
 */
export class WorkerLink {
  readonly member: Member;
  /** Assignments sent and not yet ended, by "task\0stage\0attempt". */
  readonly inFlight = new Map<string, Assignment>();
  /** True once the worker said hello. */
  ready = false;
  /** True when the worker left etcd: no new task goes to it, the stream stays for what runs. */
  leaving = false;
  /** True for a link to a router of another satellite, standing in for its workers of a stage. */
  gateway = false;
  closed = false;
  dispatched = 0n;
  /** The last Load the worker reported (undefined until it reports one). */
  load: Load | undefined;
  #requests = new AsyncQueue<ProcessRequest>();
  #abort = new AbortController();
  #assignments: Assignment[] = [];
  #cancels: Cancel[] = [];
  #scheduled = false;
  readonly #events: WorkerLinkEvents;

  constructor(member: Member, routerId: string, version: string, events: WorkerLinkEvents) {
    this.member = member;
    this.#events = events;
    const responses = processClient(member.address)(this.#requests, {
      headers: { "dsat-version": version, "dsat-router-id": routerId },
      signal: this.#abort.signal,
    });
    void this.#read(responses);
  }

  /** Key of one attempt. */
  static key(taskId: string, stage: string, attempt: number): string {
    return `${taskId}\u0000${stage}\u0000${attempt}`;
  }

  get capacity(): number {
    return Math.max(1, this.member.capacity);
  }

  /** True when the link may take one more task. */
  get available(): boolean {
    return this.ready && !this.leaving && !this.closed && this.inFlight.size < this.capacity;
  }

  assign(a: Assignment): void {
    const t = a.task;
    if (!t) return;
    this.inFlight.set(WorkerLink.key(t.id, a.stage, a.attempt), a);
    this.dispatched++;
    this.#assignments.push(a);
    this.#schedule();
  }

  cancel(c: Cancel): void {
    this.#cancels.push(c);
    this.#schedule();
  }

  /** Forgets an attempt that ended (or was given up). */
  settle(taskId: string, stage: string, attempt: number): Assignment | undefined {
    const k = WorkerLink.key(taskId, stage, attempt);
    const a = this.inFlight.get(k);
    this.inFlight.delete(k);
    if (this.leaving && this.inFlight.size === 0) this.close();
    return a;
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => this.#flush());
  }

  #flush(): void {
    this.#scheduled = false;
    if (this.closed) return;
    if (this.#assignments.length === 0 && this.#cancels.length === 0) return;
    // Many assignments share a message, but no message may pass the gRPC limit.
    const batches = splitBySize(this.#assignments, (a) => (a.task?.payload.length ?? 0) + 512);
    batches.forEach((assignments, i) => {
      const cancels = i === batches.length - 1 ? this.#cancels : [];
      // The assignments go in already encoded (assignment-encoding.ts).
      this.#requests.push(processRequestWith(create(ProcessRequestSchema, { cancels }), assignments));
      this.#events.onMessage?.("to_worker", assignments.length);
    });
    if (batches.length === 0) this.#requests.push(create(ProcessRequestSchema, { cancels: this.#cancels }));
    this.#assignments = [];
    this.#cancels = [];
  }

  async #read(responses: AsyncIterable<MessageShape<typeof ProcessResponseWireSchema>>): Promise<void> {
    let error: ConnectError | undefined;
    try {
      for await (const wire of responses) {
        const res = decodeWorkerResponse(wire);
        if (res.hello && !this.ready) {
          this.ready = true;
          this.#events.onReady(this);
        }
        if (res.load) this.load = res.load;
        for (const t of res.transitions) this.#events.onTransition(this, t);
        if (res.transitions.length > 0) {
          this.#events.onMessage?.("from_worker", res.transitions.length);
          this.#events.onReady(this);
        }
      }
    } catch (err) {
      error = toDsatError(err);
    }
    this.closed = true;
    this.ready = false;
    if (!error && this.inFlight.size > 0) {
      error = dsatError(Code.Unavailable, `worker ${this.member.id} ended its stream with tasks in flight`);
    }
    this.#events.onClosed(this, error);
  }

  /** Ends the stream politely: the worker sees the end and aborts what still runs. */
  close(): void {
    if (this.closed) return;
    this.#flush();
    this.#requests.end();
  }

  /** Cuts the stream at once. */
  abort(): void {
    this.#abort.abort();
  }
}
