// The closed-loop load of every driver process: N lanes, each submits one task and waits
// for its end, again and again; a warm-up, then measured windows, each bounded by a count
// of tasks and by time, whichever comes first.
import { setTimeout as sleep } from "node:timers/promises";
import { quantile } from "./stats.ts";

/** How a driver loads a system. */
export interface LoadPlan {
  /** Tasks in flight at once (lanes). */
  inFlight: number;
  /** Warm-up: ends after this many tasks… */
  warmupTasks: number;
  /** …or this long, in milliseconds, whichever first. */
  warmupMs: number;
  /** Measured windows, back to back. */
  windows: number;
  /** A window ends after this many tasks… */
  windowTasks: number;
  /** …or this long, in milliseconds, whichever first. */
  windowMs: number;
  /** How long the lanes get to finish their last task after the last window, in milliseconds. */
  drainMs: number;
  /** Payload size, in bytes. */
  payloadBytes: number;
}

/** What one measured window saw, in the driver. */
export interface WindowResult {
  /** Tasks that ended well inside the window. */
  tasks: number;
  /** Tasks that failed inside the window. */
  errors: number;
  seconds: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
}

/** Messages a driver sends to the bench over IPC. */
export type DriverMessage =
  | { type: "window-start"; index: number }
  | { type: "window-end"; index: number; result: WindowResult }
  | { type: "done"; errors: number; firstError: string }
  | { type: "failed"; error: string };

/** Sends a message to the bench (the driver's parent, over IPC); resolves once it is sent. */
export function tell(message: DriverMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send) resolve();
    else process.send(message, undefined, undefined, () => resolve());
  });
}

/** More errors than this in a run and the driver gives up: the system is broken, not slow. */
const MAX_ERRORS = 1_000;

/**
 * Runs the plan: `submit` starts one task and resolves when it has ended well (it throws
 * when the task failed). Tells the bench when each window starts and ends.
 */
export async function runLoad(plan: LoadPlan, submit: () => Promise<void>): Promise<void> {
  let phase: number = -1; // -1: warm-up; 0..windows-1: a window; windows: stopping.
  let phaseStart = performance.now();
  let completed = 0;
  let errors = 0;
  let totalErrors = 0;
  let firstError = "";
  let latencies: number[] = [];
  let finish: () => void = () => {};
  const finished = new Promise<void>((resolve) => {
    finish = resolve;
  });

  const startWindow = (index: number) => {
    phase = index;
    phaseStart = performance.now();
    completed = 0;
    errors = 0;
    latencies = [];
    void tell({ type: "window-start", index });
  };
  const endWindow = () => {
    const seconds = (performance.now() - phaseStart) / 1000;
    const mean = latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length);
    const sorted = latencies.sort((a, b) => a - b);
    void tell({
      type: "window-end",
      index: phase,
      result: {
        tasks: completed,
        errors,
        seconds,
        p50Ms: quantile(sorted, 0.5),
        p90Ms: quantile(sorted, 0.9),
        p99Ms: quantile(sorted, 0.99),
        maxMs: sorted[sorted.length - 1] ?? Number.NaN,
        meanMs: mean,
      },
    });
  };
  const check = () => {
    if (phase >= plan.windows) return;
    const elapsed = performance.now() - phaseStart;
    const [maxTasks, maxMs] = phase < 0 ? [plan.warmupTasks, plan.warmupMs] : [plan.windowTasks, plan.windowMs];
    if (completed < maxTasks && elapsed < maxMs) return;
    if (phase >= 0) endWindow();
    if (phase + 1 < plan.windows) startWindow(phase + 1);
    else {
      phase = plan.windows;
      finish();
    }
  };

  const lane = async () => {
    while (phase < plan.windows) {
      const t0 = performance.now();
      try {
        await submit();
        if (phase < plan.windows) {
          latencies.push(performance.now() - t0);
          completed++;
        }
      } catch (err) {
        errors++;
        totalErrors++;
        if (!firstError) firstError = err instanceof Error ? err.message : String(err);
        if (totalErrors > MAX_ERRORS) {
          await tell({ type: "failed", error: `${totalErrors} tasks failed; the first: ${firstError}` });
          process.exit(1);
        }
        await sleep(5);
      }
      check();
    }
  };

  const ticker = setInterval(check, 20);
  const lanes = Array.from({ length: plan.inFlight }, lane);
  await finished;
  clearInterval(ticker);
  // The last tasks in flight finish (or are left behind after drainMs).
  await Promise.race([Promise.allSettled(lanes), sleep(plan.drainMs)]);
  await tell({ type: "done", errors: totalErrors, firstError });
}

/** A payload of n bytes, not all equal. */
export function payloadOf(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = 97 + (i % 26);
  return b;
}
