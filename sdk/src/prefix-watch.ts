import type { Etcd3, IKeyValue, Watcher } from "etcd3";

/** What a {@link PrefixWatch} tells its owner. */
export interface PrefixWatchHandlers {
  /** Everything under the prefix, read at the start and again after the watch was away. */
  onSnapshot(kvs: readonly IKeyValue[]): void;
  onPut(kv: IKeyValue): void;
  onDelete(kv: IKeyValue): void;
  /** Something went wrong and is being retried (for logs). */
  onTrouble?(err: unknown): void;
}

/**
 * PrefixWatch follows the keys under a prefix: a read, then an etcd watch from the
 * revision after it, so that nothing in between is missed. It never polls, and it mends
 * itself: after a reconnection (etcd restarted, a network cut) it reads the prefix again,
 * and when etcd cancels the watch (its revision was compacted away) it reads again and
 * watches from there. Nothing here throws or emits an unhandled error.
 */
export class PrefixWatch {
  readonly #etcd: Etcd3;
  readonly #prefix: string;
  readonly #h: PrefixWatchHandlers;
  #watcher: Watcher | undefined;
  #closed = false;
  #stale = false;

  constructor(etcd: Etcd3, prefix: string, handlers: PrefixWatchHandlers) {
    this.#etcd = etcd;
    this.#prefix = prefix;
    this.#h = handlers;
  }

  /** Reads the prefix and starts watching; rejects when etcd cannot be reached. */
  async start(): Promise<void> {
    const revision = await this.#read();
    await this.#watch(revision);
  }

  async #read(): Promise<string> {
    const res = await this.#etcd.getAll().prefix(this.#prefix).exec();
    this.#h.onSnapshot(res.kvs);
    return (BigInt(res.header.revision) + 1n).toString();
  }

  async #watch(fromRevision: string): Promise<void> {
    const w = await this.#etcd.watch().prefix(this.#prefix).startRevision(fromRevision).create();
    if (this.#closed) {
      await w.cancel().catch(() => {});
      return;
    }
    this.#watcher = w;
    w.on("put", (kv) => this.#h.onPut(kv));
    w.on("delete", (kv) => this.#h.onDelete(kv));
    w.on("disconnected", () => {
      this.#stale = true;
    });
    w.on("connected", () => {
      if (!this.#stale) return;
      this.#stale = false;
      this.#read().catch((err: unknown) => {
        this.#stale = true;
        this.#h.onTrouble?.(err);
      });
    });
    w.on("error", (err) => {
      // etcd cancelled the watch (compaction): read again and watch from there.
      this.#h.onTrouble?.(err);
      if (this.#watcher !== w) return;
      this.#watcher = undefined;
      void w.cancel().catch(() => {});
      void this.#restart();
    });
  }

  async #restart(): Promise<void> {
    for (let delay = 100; !this.#closed; delay = Math.min(delay * 2, 2_000)) {
      try {
        await this.#watch(await this.#read());
        return;
      } catch (err) {
        this.#h.onTrouble?.(err);
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#watcher?.cancel().catch(() => {});
  }
}
