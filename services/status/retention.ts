import type { Etcd3 } from "etcd3";

/**
 * Ended tasks leave etcd by themselves: every put of a task that has ended as a whole goes
 * under a lease that nobody keeps alive, so etcd deletes the record when the lease runs out,
 * without a scan or a delete from dsat. One lease serves every ended task of a time bucket
 * (retention / 10, at least a second) and lives retention + one bucket: a record stays
 * between `retentionMs` and `retentionMs` + a tenth after its task's last write.
 *
 * A lease is granted on first use in its bucket (one call to etcd per bucket per status
 * server). A status server that dies leaves its leases to run out on schedule.
 */
export class RetentionLeases {
  readonly #etcd: Etcd3;
  readonly #retentionMs: number;
  readonly #now: () => number;
  #bucket = -1;
  #lease: Promise<string> | undefined;

  /** `retentionMs` 0: nothing expires (no lease). */
  constructor(etcd: Etcd3, retentionMs: number, now: () => number = Date.now) {
    this.#etcd = etcd;
    this.#retentionMs = retentionMs;
    this.#now = now;
  }

  /** True when ended tasks expire. */
  get enabled(): boolean {
    return this.#retentionMs > 0;
  }

  /** The lease of the current bucket (granted now if this bucket has none yet). */
  current(): Promise<string> {
    const { bucket, ttlSeconds } = retentionBucket(this.#now(), this.#retentionMs);
    if (bucket !== this.#bucket || !this.#lease) {
      this.#bucket = bucket;
      const granted = this.#etcd.leaseClient.leaseGrant({ TTL: ttlSeconds }).then((r) => r.ID);
      // A failed grant is not kept: the next batch asks again.
      granted.catch(() => {
        if (this.#lease === granted) this.#lease = undefined;
      });
      this.#lease = granted;
    }
    return this.#lease;
  }

  /** Forgets the current lease (etcd no longer knows it: revoked, or a long pause outlived it). */
  reset(): void {
    this.#lease = undefined;
  }
}

/** The bucket of `nowMs` and the time to live of its lease, for a retention (both > 0). */
export function retentionBucket(nowMs: number, retentionMs: number): { bucket: number; ttlSeconds: number } {
  const widthMs = Math.max(1_000, Math.floor(retentionMs / 10));
  return {
    bucket: Math.floor(nowMs / widthMs),
    ttlSeconds: Math.max(1, Math.ceil((retentionMs + widthMs) / 1_000)),
  };
}
