import { type Logger, toDsatError } from "@dsat/sdk";
import type { Etcd3 } from "etcd3";
import type { MetricsRegistry } from "../common/metrics.ts";

// etcd refuses every write once its database outgrows its quota (the NOSPACE alarm): then
// StatusService stores nothing and routers refuse new tasks. This watch reads etcd's database
// size at an interval and says so well before: a warning when it passes a share of the quota,
// a line when it is back under, and the sizes as metrics.

/** Options of {@link EtcdSpaceWatch}. */
export interface EtcdSpaceOptions {
  /** etcd's quota (its --quota-backend-bytes; etcd's default is 2 GiB). 0 turns the watch off. */
  quotaBytes: number;
  /** Time between two reads of etcd's status, in milliseconds. */
  checkMs: number;
  /** Share of the quota past which it warns (0.8). */
  warnAt: number;
  /** It says the warning is over once the database is under this share (0.7): no flapping at the mark. */
  clearAt: number;
}

export const DEFAULT_ETCD_SPACE_OPTIONS: Readonly<EtcdSpaceOptions> = Object.freeze({
  quotaBytes: 2 * 1024 ** 3,
  checkMs: 30_000,
  warnAt: 0.8,
  clearAt: 0.7,
});

/** etcd's sizes as read: physically allocated (what its quota counts) and logically in use. */
export interface EtcdSize {
  dbBytes: number;
  inUseBytes: number;
}

/**
 * Whether the warning stands after a reading: it starts at warnAt of the quota and stops
 * under clearAt. Pure, for the unit tests.
 */
export function spaceWarning(warning: boolean, size: EtcdSize, opts: Pick<EtcdSpaceOptions, "quotaBytes" | "warnAt" | "clearAt">): boolean {
  if (opts.quotaBytes <= 0) return false;
  const share = size.dbBytes / opts.quotaBytes;
  return warning ? share >= opts.clearAt : share >= opts.warnAt;
}

const MB = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

/** The warning's message: how full, what happens at 100%, what to do. */
export function spaceMessage(size: EtcdSize, quotaBytes: number): string {
  const pct = Math.round((100 * size.dbBytes) / quotaBytes);
  const reclaim = size.inUseBytes < size.dbBytes * 0.8 ? ` (${MB(size.dbBytes - size.inUseBytes)} of it free inside the file: defragment etcd to give it back)` : "";
  return (
    `etcd's database is ${pct}% of its quota: ${MB(size.dbBytes)} of ${MB(quotaBytes)}, ${MB(size.inUseBytes)} in use${reclaim}. ` +
    "At 100% etcd refuses every write (NOSPACE): StatusService stores nothing and routers refuse new tasks. " +
    "Shorten --task-retention-ms, compact and defragment etcd, or raise etcd's --quota-backend-bytes (and --etcd-quota-bytes here); see docs/operations.md"
  );
}

/** Reads etcd's database size every checkMs, warns past warnAt of the quota, and serves the sizes as metrics. */
export class EtcdSpaceWatch {
  readonly #etcd: Etcd3;
  readonly #opts: EtcdSpaceOptions;
  readonly #log: Logger;
  #timer: NodeJS.Timeout | undefined;
  #size: EtcdSize | undefined;
  #warning = false;
  #readFailed = false;
  #closed = false;

  constructor(etcd: Etcd3, opts: EtcdSpaceOptions, log: Logger, metrics?: MetricsRegistry) {
    this.#etcd = etcd;
    this.#opts = opts;
    this.#log = log;
    metrics?.gauge(
      "dsat_status_etcd_db_bytes",
      "Size of etcd's database as last read by this server: allocated (what etcd's quota counts) and in_use.",
      ["kind"],
      () =>
        this.#size
          ? [
              [["allocated"], this.#size.dbBytes],
              [["in_use"], this.#size.inUseBytes],
            ]
          : [],
    );
    metrics?.gauge("dsat_status_etcd_quota_bytes", "etcd's quota as this server was told (--etcd-quota-bytes); 0 when not watched.", [], () => [
      [[], opts.quotaBytes],
    ]);
    if (opts.quotaBytes > 0) void this.#check();
  }

  /** The last reading, undefined before the first. */
  get size(): EtcdSize | undefined {
    return this.#size;
  }

  /** True while the database is past warnAt of the quota (and not yet back under clearAt). */
  get warning(): boolean {
    return this.#warning;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
  }

  async #check(): Promise<void> {
    try {
      const s = await this.#etcd.maintenance.status();
      const size = { dbBytes: Number(s.dbSize), inUseBytes: Number(s.dbSizeInUse || s.dbSize) };
      this.#size = size;
      this.#readFailed = false;
      const warning = spaceWarning(this.#warning, size, this.#opts);
      if (warning && !this.#warning) this.#log.warn(spaceMessage(size, this.#opts.quotaBytes), { db_bytes: size.dbBytes, quota_bytes: this.#opts.quotaBytes });
      else if (!warning && this.#warning) {
        this.#log.warn(`etcd's database is back under ${Math.round(this.#opts.clearAt * 100)}% of its quota: ${MB(size.dbBytes)} of ${MB(this.#opts.quotaBytes)}`, {
          db_bytes: size.dbBytes,
          quota_bytes: this.#opts.quotaBytes,
        });
      }
      this.#warning = warning;
    } catch (err) {
      // etcd away: the store says so on every write; one line here, not one per check.
      if (!this.#readFailed) this.#log.debug("reading etcd's size failed", { error: toDsatError(err).message });
      this.#readFailed = true;
    }
    if (this.#closed) return;
    this.#timer = setTimeout(() => void this.#check(), this.#opts.checkMs);
    this.#timer.unref();
  }
}
