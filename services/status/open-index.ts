// The index of unfinished tasks: open/<router>/<task id>, an empty key beside each task record
// that has not ended, under the router that drives it (docs/etcd-keys.md). ClaimTasks reads a
// dead router's tasks from it, instead of reading every record that the retention keeps.
import { compareVersions, isTaskTerminal, type Keys, type Logger, parseMember, type TaskState, toDsatError } from "@dsat/sdk";
import { CompareResult, CompareTarget, type Etcd3, EtcdLockFailedError, type ICompare, type IRequestOp, type Lock } from "etcd3";
import { keyAfter, prefixEnd } from "../common/etcd-ranges.ts";
import { mapLimit } from "../common/map-limit.ts";
import type { Counter, MetricsRegistry } from "../common/metrics.ts";
import { decodeStoredState } from "./state-encoding.ts";

/** The first dsat version whose status servers keep the index of unfinished tasks. */
export const OPEN_INDEX_SINCE = "0.1.2";

/** Whether a status server of this version keeps the index (an invalid version: no). */
export function keepsOpenIndex(version: string): boolean {
  try {
    return compareVersions(version, OPEN_INDEX_SINCE) >= 0;
  } catch {
    return false;
  }
}

/** The router that drives a task whose record is `state`, or undefined when the task has ended (or has no record). */
export function openOwner(state: TaskState | undefined): string | undefined {
  return state && !isTaskTerminal(state.state) ? state.routerId : undefined;
}

/**
 * The index operations that go with a write of a task's record from `before` to `after`
 * (in the same transaction, fenced by the record's compare): none while the task stays
 * unfinished under the same router; the old router's entry deleted when it ends or moves;
 * the new router's entry put when it is created or moves.
 */
export function openIndexOps(
  keys: Keys,
  taskId: string,
  before: TaskState | undefined,
  after: TaskState | undefined,
): readonly IRequestOp[] {
  const from = openOwner(before);
  const to = openOwner(after);
  if (from === to) return NO_INDEX_OPS;
  const ops: IRequestOp[] = [];
  if (from !== undefined) ops.push({ request_delete_range: { key: Buffer.from(keys.openTask(from, taskId)) } });
  if (to !== undefined) ops.push({ request_put: { key: Buffer.from(keys.openTask(to, taskId)), value: EMPTY } });
  return ops;
}

/** No index operations (shared: never changed). */
export const NO_INDEX_OPS: readonly IRequestOp[] = [];
/**
 * After a failed build of the index, or while another status server builds it, the next
 * look at the marker (and try at the build), in milliseconds.
 */
const RETRY_MS = 5_000;
/**
 * The lease of the build lock, in seconds: kept alive while its holder builds; when the
 * holder dies, the lock goes this long after, and another status server builds.
 */
const BUILD_LOCK_TTL_SECONDS = 10;
const EMPTY = Buffer.alloc(0);
/** Stale entries deleted at once (each in a fenced transaction of its own). */
const STALE_DELETE_CONCURRENCY = 8;

/**
 * Whether ClaimTasks may trust the index, and what makes it so. Every status server of
 * 0.1.2 or later keeps the index on every write; older ones do not, and records written
 * before the upgrade have no entry. So the index is used only while every registered status
 * server keeps it and the index is complete: a status server that finds it incomplete
 * (no meta/open-index marker) once every peer keeps it indexes every unfinished record
 * (each entry fenced on its record's revision) and then writes the marker. A status server
 * that sees an older peer deletes the marker, and ClaimTasks reads every record until the
 * index is complete again. One status server at a time builds, the one that holds the lock
 * meta/open-index-build (under a lease): the others look for the marker every RETRY_MS, so
 * that an upgrade of many status servers (a router each, serving StatusService) reads the
 * records once, not once per server.
 */
export class OpenIndex {
  readonly #etcd: Etcd3;
  readonly #keys: Keys;
  readonly #log: Logger;
  /** Every status server registered keeps the index (as last seen). */
  #peersKeep = false;
  /** The index is complete: the marker was read, or this server wrote it. */
  #complete = false;
  /** Bumped whenever an older peer is seen: a build that started before does not write the marker. */
  #generation = 0;
  /** Another server held the build lock at the last try (said in the log once). */
  #waitingForBuild = false;
  /** A look at the marker under way (and the start of a build after it). */
  #ensuring: Promise<void> | undefined;
  #building: Promise<void> | undefined;
  /** A build tried again after one that failed (etcd unavailable, say). */
  #retry: NodeJS.Timeout | undefined;
  #closed = false;

  /** Records read per etcd range, and entries put per transaction, while the index is built. */
  readonly #chunk: number;
  /** Builds this server ran to the end (wrote the marker). */
  #builds = 0;
  readonly #buildsTotal: Counter | undefined;

  constructor(etcd: Etcd3, keys: Keys, log: Logger, options: { maxTxnOps: number; metrics?: MetricsRegistry | undefined }) {
    this.#etcd = etcd;
    this.#keys = keys;
    this.#log = log;
    this.#chunk = Math.max(1, options.maxTxnOps);
    options.metrics?.gauge(
      "dsat_status_open_index_usable",
      "1 while ClaimTasks reads the index of unfinished tasks; 0 while it reads every task record (an older status server is registered, or the index is being built).",
      [],
      () => [[[], this.usable ? 1 : 0]],
    );
    this.#buildsTotal = options.metrics?.counter(
      "dsat_status_open_index_builds_total",
      "Builds of the index of unfinished tasks that this status server ran to the end (one status server builds at a time).",
    );
  }

  /** Builds of the index that this server ran to the end. */
  get builds(): number {
    return this.#builds;
  }

  /** Whether ClaimTasks reads the index (else every task record). */
  get usable(): boolean {
    return this.#peersKeep && this.#complete;
  }

  /**
   * The revision at which ClaimTasks may trust the index, read now: the marker is there and
   * every status server registered keeps the index, both at that revision (undefined when
   * not). The membership watch that sets `usable` lags etcd by a little: an older status
   * server that registered just now, or a marker just deleted, is seen here first, and the
   * claim reads every record instead. Entries read at this revision are complete for every
   * record written up to it.
   */
  async trustedRevision(): Promise<string | undefined> {
    const members = Buffer.from(this.#keys.membersOf("status"));
    const res = await this.#etcd.kv.txn({
      compare: [],
      success: [
        { request_range: { key: Buffer.from(this.#keys.openIndexMarker()), keys_only: true } },
        { request_range: { key: members, range_end: prefixEnd(members) } },
      ],
      failure: [],
    });
    const marked = (res.responses[0]?.response_range.kvs.length ?? 0) > 0;
    const versions = (res.responses[1]?.response_range.kvs ?? []).map((kv) => parseMember(kv.value)?.version ?? "");
    if (marked && versions.every(keepsOpenIndex)) return res.header.revision;
    if (!marked && this.#complete) {
      // Deleted by another status server (or by hand): built again once every peer keeps it.
      const was = this.usable;
      this.#complete = false;
      this.#set(was);
      if (this.#peersKeep) void this.#ensure();
    }
    return undefined;
  }

  /**
   * Deletes entries whose record ended, moved to another router or is gone (ClaimTasks
   * found them so), each only if its record is still at the revision it was read at.
   */
  async dropStale(entries: readonly { key: Buffer; taskId: string; modRevision: string }[]): Promise<void> {
    await mapLimit(entries, STALE_DELETE_CONCURRENCY, async (e) => {
      await this.#etcd.kv.txn({
        compare: [{ key: Buffer.from(this.#keys.task(e.taskId)), target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: e.modRevision }],
        success: [{ request_delete_range: { key: e.key } }],
        failure: [],
      });
    });
    if (entries.length > 0) this.#log.info("deleted entries of the index of unfinished tasks whose task had ended or moved", { entries: entries.length });
  }

  /** What the status servers registered now announce (no server at all tells nothing). */
  async peers(versions: readonly string[]): Promise<void> {
    if (versions.length === 0 || this.#closed) return;
    const keep = versions.every(keepsOpenIndex);
    const was = this.usable;
    this.#peersKeep = keep;
    if (!keep) {
      this.#generation++;
      this.#complete = false;
      this.#set(was);
      // Its writes will not keep the index: once it has left, the index is built again.
      await this.#etcd.delete().key(this.#keys.openIndexMarker()).catch((err: unknown) => {
        this.#log.warn("could not mark the index of unfinished tasks incomplete", { error: toDsatError(err).message });
      });
      return;
    }
    this.#set(was);
    if (!this.#complete) await this.#ensure();
  }

  /** Waits for a look at the marker, and a build of the index, that are under way (tests, close). */
  async settled(): Promise<void> {
    await this.#ensuring;
    await this.#building;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#retry);
  }

  /** Tries again later, while the index is still wanted and incomplete. */
  #later(): void {
    if (this.#closed || this.#retry) return;
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      if (!this.#closed && this.#peersKeep && !this.#complete) void this.#ensure();
    }, RETRY_MS);
    this.#retry.unref();
  }

  /** The marker is there (read, or written by this server): ClaimTasks may read the index. */
  #markComplete(): void {
    const was = this.usable;
    this.#complete = true;
    this.#waitingForBuild = false;
    this.#set(was);
  }

  #set(was: boolean): void {
    const now = this.usable;
    if (now !== was) {
      this.#log.info(now ? "ClaimTasks reads the index of unfinished tasks" : "ClaimTasks reads every task record: the index of unfinished tasks is incomplete");
    }
  }

  /** Reads the marker; builds the index when there is none (one build at a time). */
  #ensure(): Promise<void> {
    const ensuring = this.#ensureNow().finally(() => {
      if (this.#ensuring === ensuring) this.#ensuring = undefined;
    });
    this.#ensuring = ensuring;
    return ensuring;
  }

  async #ensureNow(): Promise<void> {
    const generation = this.#generation;
    try {
      const marked = await this.#etcd.get(this.#keys.openIndexMarker()).exists();
      // An older peer seen meanwhile: the marker read may be one it has deleted since.
      if (generation !== this.#generation) return;
      if (marked) {
        this.#markComplete();
        return;
      }
    } catch (err) {
      this.#log.warn("could not read the marker of the index of unfinished tasks; trying again", { error: toDsatError(err).message });
      this.#later();
      return;
    }
    this.#building ??= this.#build().finally(() => {
      this.#building = undefined;
    });
  }

  /** Builds the index while it holds the build lock; when another server holds it, looks again later. */
  async #build(): Promise<void> {
    let lock: Lock;
    try {
      lock = await this.#etcd.lock(this.#keys.openIndexBuildLock()).ttl(BUILD_LOCK_TTL_SECONDS).acquire();
    } catch (err) {
      if (err instanceof EtcdLockFailedError) {
        // Said once per wait: a long build would otherwise log it every RETRY_MS.
        if (!this.#waitingForBuild) {
          this.#log.info(`another status server builds the index of unfinished tasks; looking for its marker every ${RETRY_MS / 1000} s`);
        }
        this.#waitingForBuild = true;
      } else {
        this.#log.warn("could not take the lock to build the index of unfinished tasks; trying again", { error: toDsatError(err).message });
      }
      this.#later();
      return;
    }
    try {
      await this.#buildLocked();
    } finally {
      await lock.release().catch((err: unknown) => {
        this.#log.warn("could not release the lock of the index build (its lease ends it)", { error: toDsatError(err).message });
      });
    }
  }

  async #buildLocked(): Promise<void> {
    const generation = this.#generation;
    const started = performance.now();
    let read = 0;
    let indexed = 0;
    try {
      // The server that held the lock before may have finished the build.
      if (await this.#etcd.get(this.#keys.openIndexMarker()).exists()) {
        if (generation === this.#generation) this.#markComplete();
        return;
      }
      this.#log.info("building the index of unfinished tasks: every record is read once (no meta/open-index marker)");
      const prefix = Buffer.from(this.#keys.tasks());
      const end = prefixEnd(prefix);
      let from: Buffer = prefix;
      for (;;) {
        if (this.#closed || generation !== this.#generation) return;
        const res = await this.#etcd.kv.range({ key: from, range_end: end, limit: this.#chunk });
        read += res.kvs.length;
        const open = res.kvs.flatMap((kv) => {
          const state = decodeStoredState(kv.value);
          const owner = openOwner(state);
          return owner === undefined || !state.task ? [] : [{ kv, key: Buffer.from(this.#keys.openTask(owner, state.task.id)) }];
        });
        indexed += await this.#put(open);
        const last = res.kvs[res.kvs.length - 1];
        if (!res.more || !last) break;
        from = keyAfter(last.key);
      }
      if (this.#closed || generation !== this.#generation) return;
      await this.#etcd.put(this.#keys.openIndexMarker()).value(JSON.stringify({ complete: true, at: new Date().toISOString() }));
      if (generation !== this.#generation) {
        // An older peer came while the marker was written: it goes, whichever came first.
        await this.#etcd.delete().key(this.#keys.openIndexMarker());
        return;
      }
      this.#builds++;
      this.#buildsTotal?.inc();
      this.#log.info("the index of unfinished tasks is complete", {
        records: read,
        unfinished: indexed,
        ms: Math.round(performance.now() - started),
      });
      this.#markComplete();
    } catch (err) {
      // Until a build succeeds, ClaimTasks reads every record.
      this.#log.warn("indexing the unfinished tasks failed; trying again", { error: toDsatError(err).message, records: read });
      this.#later();
    }
  }

  /**
   * Puts the index entries of these records, each only if its record is still as read (a
   * record written since then was indexed by its writer). Returns how many were put.
   */
  async #put(entries: { kv: { key: Buffer; mod_revision: string }; key: Buffer }[]): Promise<number> {
    if (entries.length === 0) return 0;
    const guard = (e: (typeof entries)[number]): ICompare => ({
      key: e.kv.key,
      target: CompareTarget.Mod,
      result: CompareResult.Equal,
      mod_revision: e.kv.mod_revision,
    });
    const all = await this.#etcd.kv.txn({
      compare: entries.map(guard),
      success: entries.map((e) => ({ request_put: { key: e.key, value: EMPTY } })),
      failure: [],
    });
    if (all.succeeded) return entries.length;
    // One of them changed: one at a time.
    let n = 0;
    for (const e of entries) {
      const one = await this.#etcd.kv.txn({ compare: [guard(e)], success: [{ request_put: { key: e.key, value: EMPTY } }], failure: [] });
      if (one.succeeded) n++;
    }
    return n;
  }
}
