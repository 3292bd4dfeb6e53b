/**
 * The attempts of the tasks a router stopped driving (they moved to another router), kept
 * a while so that the router never uses one of those attempt numbers again for the same
 * task and stage, should the task come back to it through a claim.
 *
 * Why: a router resumes a task it claims from StatusService's record, which can lag behind
 * the run it forgot (steps held back, a Report in flight). The next attempt it would then
 * dispatch can carry the number of an attempt the forgotten run had dispatched already; the
 * worker's answers to that one (its CANCELLED after the router cancelled it, say) would be
 * taken for the new attempt's.
 *
 * An entry goes when the task is dispatched again here past it, or after `ttlMs`: by then
 * the forgotten run's messages to and from workers are long settled.
 */
export class ForgottenAttempts {
  readonly #ttlMs: number;
  readonly #entries = new Map<string, { at: number; stages: Map<string, number> }>();

  constructor(ttlMs = 10 * 60_000) {
    this.#ttlMs = ttlMs;
  }

  /** Tasks remembered now. */
  get size(): number {
    return this.#entries.size;
  }

  /** Remembers the highest attempt of each stage of a task that this router stops driving. */
  remember(taskId: string, attempts: Iterable<readonly [stage: string, attempt: number]>, now = Date.now()): void {
    this.#sweep(now);
    const entry = this.#entries.get(taskId) ?? { at: now, stages: new Map<string, number>() };
    entry.at = now;
    for (const [stage, attempt] of attempts) {
      if (attempt > (entry.stages.get(stage) ?? 0)) entry.stages.set(stage, attempt);
    }
    if (entry.stages.size === 0) return;
    // Re-inserted, so that the map stays in the order of `at` and a sweep stops early.
    this.#entries.delete(taskId);
    this.#entries.set(taskId, entry);
  }

  /**
   * The attempt number to dispatch: `attempt`, or one past the highest attempt that a
   * forgotten run of the task dispatched at that stage when that one is not lower.
   */
  next(taskId: string, stage: string, attempt: number, now = Date.now()): number {
    if (this.#entries.size === 0) return attempt;
    const entry = this.#entries.get(taskId);
    if (!entry) return attempt;
    if (now - entry.at > this.#ttlMs) {
      this.#entries.delete(taskId);
      return attempt;
    }
    const forgotten = entry.stages.get(stage);
    if (forgotten === undefined) return attempt;
    entry.stages.delete(stage);
    if (entry.stages.size === 0) this.#entries.delete(taskId);
    return Math.max(attempt, forgotten + 1);
  }

  /** Drops what a task left behind (it ended here). */
  delete(taskId: string): void {
    this.#entries.delete(taskId);
  }

  #sweep(now: number): void {
    for (const [taskId, entry] of this.#entries) {
      if (now - entry.at <= this.#ttlMs) return;
      this.#entries.delete(taskId);
    }
  }
}
