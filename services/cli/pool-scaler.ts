/** One look at a stage's load, as Topology reports it. */
export interface PoolSample {
  /** When it was taken, in milliseconds (any monotonic clock). */
  atMs: number;
  inFlight: number;
  capacity: number;
  queued: number;
}

/** What a pool should do after a sample. */
export type PoolDecision = "up" | "down" | "hold";

/** Options of {@link PoolScaler}. */
export interface PoolScalerOptions {
  /** Fewest worker processes. Default 1. */
  min: number;
  /** Most worker processes. Default 1. */
  max: number;
  /** Utilisation (in_flight / capacity) at or above which the pool is busy. Default 0.8. */
  highUtilisation: number;
  /** Utilisation at or below which the pool is idle. Default 0.2. */
  lowUtilisation: number;
  /** Busy samples in a row before a worker is added. Default 2. */
  upSamples: number;
  /** How long the pool must stay idle (nothing queued) before a worker is removed, in milliseconds. Default 5000. */
  idleMs: number;
  /** No change for this long after a change, in milliseconds, so that the pool does not flap. Default 3000. */
  cooldownMs: number;
}

/** The defaults of {@link PoolScalerOptions}. */
export const DEFAULT_POOL_SCALER_OPTIONS: Readonly<PoolScalerOptions> = Object.freeze({
  min: 1,
  max: 1,
  highUtilisation: 0.8,
  lowUtilisation: 0.2,
  upSamples: 2,
  idleMs: 5_000,
  cooldownMs: 3_000,
});

/**
 * PoolScaler decides, sample after sample, whether a stage's pool of workers grows, shrinks
 * or holds. It is pure: the caller brings the samples and the pool size and acts on the
 * answer. The gap between the two thresholds, the run of busy samples, the idle time and
 * the cooldown keep it from flapping.
 */
export class PoolScaler {
  readonly options: Readonly<PoolScalerOptions>;
  #busyRun = 0;
  #idleSince: number | undefined;
  #lastChangeAt = Number.NEGATIVE_INFINITY;

  constructor(options: Partial<PoolScalerOptions> = {}) {
    const o = { ...DEFAULT_POOL_SCALER_OPTIONS, ...options };
    if (o.min < 0 || o.max < o.min) throw new Error(`pool bounds min ${o.min}, max ${o.max} are not 0 <= min <= max`);
    this.options = Object.freeze(o);
  }

  /** Takes one sample; `size` is the pool's worker processes now. */
  decide(sample: PoolSample, size: number): PoolDecision {
    const o = this.options;
    const utilisation = sample.capacity > 0 ? sample.inFlight / sample.capacity : sample.queued > 0 ? 1 : 0;
    const busy = sample.queued > 0 || utilisation >= o.highUtilisation;
    const idle = sample.queued === 0 && utilisation <= o.lowUtilisation;
    this.#busyRun = busy ? this.#busyRun + 1 : 0;
    if (!idle) this.#idleSince = undefined;
    else this.#idleSince ??= sample.atMs;
    if (sample.atMs - this.#lastChangeAt < o.cooldownMs) return "hold";
    if (this.#busyRun >= o.upSamples && size < o.max) return this.#changed(sample.atMs, "up");
    if (this.#idleSince !== undefined && sample.atMs - this.#idleSince >= o.idleMs && size > o.min) {
      return this.#changed(sample.atMs, "down");
    }
    return "hold";
  }

  #changed(atMs: number, d: PoolDecision): PoolDecision {
    this.#lastChangeAt = atMs;
    this.#busyRun = 0;
    // Another step down needs another full idle period.
    if (this.#idleSince !== undefined) this.#idleSince = atMs;
    return d;
  }
}
