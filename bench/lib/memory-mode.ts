// The bounded-memory mode: 10,000 tasks submitted behind a slow stage; how much memory do
// the router and the status server hold, and does admission slow down?
import { spawn } from "node:child_process";
import type { FloodResult } from "../dsat/flood-driver.ts";
import { freePort } from "../../services/cli/local-etcd.ts";
import { startDsat } from "./deployments.ts";
import { readMetrics } from "./measure.ts";
import { type BenchProcess, COMPILED_NODE_FLAGS, ROOT, wrap } from "./processes.ts";
import { memory } from "./proc-stats.ts";

/** Options of {@link runMemoryMode}. */
export interface MemoryOptions {
  /** Tasks in the flood. */
  tasks: number;
  /** Tasks sent on top once the flood is in, to see admission slow. */
  probe: number;
  /** How long the slow stage holds each task, in milliseconds. */
  slowMs: number;
  /** Tasks the slow stage's worker runs at once. */
  slowConcurrency: number;
  /** The router serves StatusService itself (--serve-status): no status process. Default false. */
  serveStatus?: boolean;
}

/** What the bounded-memory mode saw. */
export interface MemoryResult {
  options: MemoryOptions;
  /** The router's task limit (--max-tasks; its default). */
  routerMaxTasks: number;
  flood: FloodResult;
  /** What the slow stage can take, in tasks per second. */
  slowCapacityPerSec: number;
  /** Admission rate over the slow stage's capacity: how much faster tasks came than it could take them. */
  inputOverCapacity: number;
  /** Peak RSS (VmHWM) by process over the whole mode, in bytes. */
  peakRssBy: Record<string, number>;
  /** RSS (VmRSS) by process right after the flood was accepted, in bytes. */
  rssAfterFloodBy: Record<string, number>;
  /**
   * The router's V8 heap right after the flood, from its /metrics (process-metrics.ts), in
   * bytes: what it reserved, what is in use (live objects and garbage not yet collected),
   * and the memory of C++ objects bound to JavaScript ones (Buffers). Absent when it could
   * not be read.
   */
  routerHeapAfterFlood?: { heapTotal: number; heapUsed: number; external: number };
  seconds: number;
}

/** The router's default task limit (services/router/options.ts): the mode runs with it. */
const ROUTER_MAX_TASKS = 10_000;

export async function runMemoryMode(options: MemoryOptions): Promise<MemoryResult> {
  const started = performance.now();
  const dep = await startDsat({
    pipeline: "mem",
    workers: [
      { stage: "slow", export: "slow", concurrency: options.slowConcurrency, env: { BENCH_SLOW_MS: String(options.slowMs) } },
      { stage: "s2", export: "echo", concurrency: 1000 },
      { stage: "s3", export: "echo", concurrency: 1000 },
    ],
    routerNodeFlags: [],
    // Its /metrics, for its heap after the flood (the process metrics cost no memory to speak of).
    routerArgs: ["--metrics-port", String(await freePort())],
    serveStatus: options.serveStatus ?? false,
  });
  try {
    const router = dep.processes.find((p) => p.name === "router") as BenchProcess;
    const driver = spawn(
      process.execPath,
      [
        ...COMPILED_NODE_FLAGS,
        "bench/dsat/flood-driver.ts",
        "--router", router.address,
        "--pipeline", "mem",
        "--tasks", String(options.tasks),
        "--probe", String(options.probe),
      ],
      { cwd: ROOT, stdio: ["ignore", "ignore", "pipe", "ipc"] },
    );
    let stderr = "";
    driver.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-8192);
    });
    const all = [...dep.processes, wrap("driver", driver, "")];
    const peakRssBy: Record<string, number> = {};
    const rssAfterFloodBy: Record<string, number> = {};
    const sample = () => {
      for (const p of all) {
        const m = memory(p.pid);
        if (m) peakRssBy[p.name] = Math.max(peakRssBy[p.name] ?? 0, m.peakRss);
      }
    };
    const ticker = setInterval(sample, 100);
    let heap: Promise<MemoryResult["routerHeapAfterFlood"]> = Promise.resolve(undefined);
    const flood = await new Promise<FloodResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        driver.kill("SIGKILL");
        reject(new Error(`the flood driver ran over 120 s: ${stderr.trim()}`));
      }, 120_000);
      driver.on("message", (msg: { type: string; result?: FloodResult }) => {
        if (msg.type === "flood-filled") {
          for (const p of all) rssAfterFloodBy[p.name] = memory(p.pid)?.rss ?? Number.NaN;
          heap = router.metrics ? readHeap(router.metrics) : heap;
        } else if (msg.type === "flood" && msg.result) {
          clearTimeout(timer);
          sample();
          resolve(msg.result);
        }
      });
      driver.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`the flood driver exited with ${signal ?? code}: ${stderr.trim()}`));
      });
    });
    clearInterval(ticker);
    const routerHeapAfterFlood = await heap;
    const slowCapacityPerSec = (options.slowConcurrency * 1000) / options.slowMs;
    return {
      options,
      routerMaxTasks: ROUTER_MAX_TASKS,
      flood,
      slowCapacityPerSec,
      inputOverCapacity: flood.admissionPerSec / slowCapacityPerSec,
      peakRssBy,
      rssAfterFloodBy,
      ...(routerHeapAfterFlood ? { routerHeapAfterFlood } : {}),
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await dep.stop();
  }
}

/** The V8 heap gauges of a dsat process's /metrics, or undefined when they cannot be read. */
async function readHeap(metrics: string): Promise<MemoryResult["routerHeapAfterFlood"]> {
  const heap = await readMetrics(`http://${metrics}/metrics`, {
    heapTotal: "nodejs_heap_size_total_bytes",
    heapUsed: "nodejs_heap_size_used_bytes",
    external: "nodejs_external_memory_bytes",
  });
  return heap && !Object.values(heap).some(Number.isNaN) ? heap : undefined;
}
