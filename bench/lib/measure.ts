// Runs a driver against a deployment and measures each window from outside: CPU of every
// process from /proc/<pid>/stat, peak RSS from /proc/<pid>/status, etcd's counters.
import { spawn } from "node:child_process";
import type { Deployment } from "./deployments.ts";
import type { DriverMessage, LoadPlan, WindowResult } from "./load.ts";
import { type BenchProcess, NODE_FLAGS, ROOT, wrap } from "./processes.ts";
import { cpuSeconds, machineBusySeconds, memory } from "./proc-stats.ts";
import { median } from "./stats.ts";

/** etcd counters read from /metrics (etcd 3.4 exposes all of these). */
export const ETCD_COUNTERS = Object.freeze({
  /** Keys put (every put of a transaction counts). */
  puts: "etcd_mvcc_put_total",
  /** MVCC transactions of more than one operation (reads included). */
  txns: "etcd_mvcc_txn_total",
  /** Raft proposals committed: one per write request (a whole Txn is one). */
  proposals: "etcd_server_proposals_committed_total",
  /** WAL fsyncs. */
  fsyncs: "etcd_disk_wal_fsync_duration_seconds_count",
});

type EtcdCounters = Record<keyof typeof ETCD_COUNTERS, number>;

/** etcd's database size in bytes (a gauge): etcd refuses writes once it passes --quota-backend-bytes (2 GB by default). */
const ETCD_DB_SIZE = "etcd_mvcc_db_total_size_in_bytes";

/** The last database size read by {@link readEtcdCounters}, by metrics URL. */
const dbSizes = new Map<string, number>();

/**
 * Reads these samples of a Prometheus endpoint (the first series of each name, whatever its
 * labels), NaN for a name it does not serve; undefined when it does not answer.
 */
export async function readMetrics<K extends string>(url: string, names: Readonly<Record<K, string>>): Promise<Record<K, number> | undefined> {
  try {
    const text = await (await fetch(url, { signal: AbortSignal.timeout(5_000) })).text();
    const out = {} as Record<K, number>;
    for (const [k, name] of Object.entries(names) as [K, string][]) {
      const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+]+)$`, "m").exec(text);
      out[k] = m ? Number(m[1]) : Number.NaN;
    }
    return out;
  } catch {
    return undefined;
  }
}

/** Reads etcd's counters; undefined when there is no etcd or it does not answer. */
export async function readEtcdCounters(url: string | undefined): Promise<EtcdCounters | undefined> {
  if (!url) return undefined;
  const read = await readMetrics(url, { ...ETCD_COUNTERS, dbSize: ETCD_DB_SIZE });
  if (!read) return undefined;
  const { dbSize, ...counters } = read;
  if (!Number.isNaN(dbSize)) dbSizes.set(url, dbSize);
  return counters;
}

/** One measured window, as the bench saw it. */
export interface WindowMeasure extends WindowResult {
  tasksPerSec: number;
  /** The window on the monotonic clock (process.hrtime, the clock of V8's CPU profiles), in microseconds. */
  monoStartUs: number;
  monoEndUs: number;
  /** CPU milliseconds per task, every process summed (the driver too). */
  cpuMsPerTask: number;
  /** CPU milliseconds per task, by process name. */
  cpuMsPerTaskBy: Record<string, number>;
  /** etcd counters per task (dsat only). */
  etcdPerTask?: Record<keyof typeof ETCD_COUNTERS, number>;
  /** Cores busy with something else than the bench's processes during the window (other jobs, steal). */
  otherCores: number;
}

/** A scenario's result: the median of its windows, and peaks over the whole run. */
export interface Measured {
  windows: WindowMeasure[];
  tasksPerSec: number;
  p50Ms: number;
  p99Ms: number;
  cpuMsPerTask: number;
  cpuMsPerTaskBy: Record<string, number>;
  etcdPerTask?: Record<keyof typeof ETCD_COUNTERS, number>;
  /** The most cores that something else than the bench kept busy in a window. */
  otherCores: number;
  /** etcd's database size at the end of the last window, in bytes (dsat only). */
  etcdDbBytes?: number;
  /** Peak RSS (VmHWM) by process name, in bytes, the driver included. */
  peakRssBy: Record<string, number>;
  errors: number;
  firstError: string;
}

function cpuOf(processes: readonly BenchProcess[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const p of processes) m.set(p.name, cpuSeconds(p.pid) ?? Number.NaN);
  return m;
}

/**
 * Starts the deployment's driver with the plan and measures every window; resolves once
 * the driver is done. The driver is killed when it runs over the plan's time by a minute.
 */
export function measure(dep: Deployment, plan: LoadPlan): Promise<Measured> {
  const driver = spawn(process.execPath, [...(dep.driver.nodeFlags ?? NODE_FLAGS), dep.driver.entry, ...dep.driver.args, "--plan", JSON.stringify(plan)], {
    cwd: ROOT,
    stdio: ["ignore", "ignore", "pipe", "ipc"],
  });
  let stderr = "";
  driver.stderr?.on("data", (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-8192);
  });
  const all = [...dep.processes, wrap("driver", driver, "")];
  const windows: WindowMeasure[] = [];
  const peakRssBy: Record<string, number> = {};
  const readPeaks = () => {
    for (const p of all) {
      const m = memory(p.pid);
      if (m) peakRssBy[p.name] = Math.max(peakRssBy[p.name] ?? 0, m.peakRss);
    }
  };
  let start: { cpu: Map<string, number>; etcd: Promise<EtcdCounters | undefined>; monoUs: number; machine: number } | undefined;
  const monoUs = () => Number(process.hrtime.bigint() / 1000n);
  let pending: Promise<void> = Promise.resolve();
  const budgetMs = plan.warmupMs + plan.windows * plan.windowMs + plan.drainMs + 60_000;

  return new Promise<Measured>((resolve, reject) => {
    const timer = setTimeout(() => {
      driver.kill("SIGKILL");
      reject(new Error(`the ${dep.system} driver ran over ${budgetMs} ms: ${stderr.trim()}`));
    }, budgetMs);
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (driver.exitCode === null) driver.kill("SIGKILL");
      reject(err);
    };
    driver.on("message", (msg: DriverMessage) => {
      switch (msg.type) {
        case "window-start":
          start = { cpu: cpuOf(all), etcd: readEtcdCounters(dep.etcdMetricsUrl), monoUs: monoUs(), machine: machineBusySeconds() };
          break;
        case "window-end": {
          const cpuEnd = cpuOf(all);
          const machineEnd = machineBusySeconds();
          const endUs = monoUs();
          const etcdEnd = readEtcdCounters(dep.etcdMetricsUrl);
          readPeaks();
          const begin = start;
          const r = msg.result;
          pending = pending.then(async () => {
            if (!begin) return;
            const tasks = Math.max(1, r.tasks);
            const cpuMsPerTaskBy: Record<string, number> = {};
            let total = 0;
            let ours = 0;
            for (const [name, end] of cpuEnd) {
              const seconds = end - (begin.cpu.get(name) ?? end);
              const ms = (seconds * 1000) / tasks;
              cpuMsPerTaskBy[name] = ms;
              if (!Number.isNaN(ms)) {
                total += ms;
                ours += seconds;
              }
            }
            const wallSeconds = (endUs - begin.monoUs) / 1e6;
            const otherCores = Math.max(0, (machineEnd - begin.machine - ours) / wallSeconds);
            const [e0, e1] = [await begin.etcd, await etcdEnd];
            let etcdPerTask: WindowMeasure["etcdPerTask"];
            if (e0 && e1) {
              etcdPerTask = {} as NonNullable<WindowMeasure["etcdPerTask"]>;
              for (const k of Object.keys(ETCD_COUNTERS) as (keyof EtcdCounters)[]) etcdPerTask[k] = (e1[k] - e0[k]) / tasks;
            }
            windows.push({
              ...r,
              tasksPerSec: r.tasks / r.seconds,
              monoStartUs: begin.monoUs,
              monoEndUs: endUs,
              cpuMsPerTask: total,
              cpuMsPerTaskBy,
              etcdPerTask,
              otherCores,
            });
          });
          break;
        }
        case "failed":
          fail(new Error(`the ${dep.system} driver gave up: ${msg.error}`));
          break;
        case "done":
          void pending.then(() => {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            const m = summarize(windows, peakRssBy, msg.errors, msg.firstError);
            if (dep.etcdMetricsUrl) m.etcdDbBytes = dbSizes.get(dep.etcdMetricsUrl);
            resolve(m);
          });
          break;
      }
    });
    driver.once("exit", (code, signal) => {
      if (code !== 0) fail(new Error(`the ${dep.system} driver exited with ${signal ?? code}: ${stderr.trim()}`));
    });
  });
}

/**
 * One result from the measurements of a scenario made at different times (the rounds of a
 * run): every window, medians over them, peaks over all.
 */
export function mergeMeasured(parts: readonly Measured[]): Measured {
  const peakRssBy: Record<string, number> = {};
  for (const p of parts) for (const [name, v] of Object.entries(p.peakRssBy)) peakRssBy[name] = Math.max(peakRssBy[name] ?? 0, v);
  const m = summarize(
    parts.flatMap((p) => p.windows),
    peakRssBy,
    parts.reduce((n, p) => n + p.errors, 0),
    parts.find((p) => p.firstError !== "")?.firstError ?? "",
  );
  const db = parts.at(-1)?.etcdDbBytes;
  if (db !== undefined) m.etcdDbBytes = db;
  return m;
}

function summarize(windows: WindowMeasure[], peakRssBy: Record<string, number>, errors: number, firstError: string): Measured {
  const med = (f: (w: WindowMeasure) => number) => median(windows.map(f));
  const names = Object.keys(windows[0]?.cpuMsPerTaskBy ?? {});
  const etcdKeys = windows[0]?.etcdPerTask ? (Object.keys(windows[0].etcdPerTask) as (keyof EtcdCounters)[]) : [];
  return {
    windows,
    tasksPerSec: med((w) => w.tasksPerSec),
    p50Ms: med((w) => w.p50Ms),
    p99Ms: med((w) => w.p99Ms),
    cpuMsPerTask: med((w) => w.cpuMsPerTask),
    cpuMsPerTaskBy: Object.fromEntries(names.map((n) => [n, med((w) => w.cpuMsPerTaskBy[n] ?? Number.NaN)])),
    etcdPerTask:
      etcdKeys.length > 0
        ? (Object.fromEntries(etcdKeys.map((k) => [k, med((w) => w.etcdPerTask?.[k] ?? Number.NaN)])) as EtcdCounters)
        : undefined,
    otherCores: Math.max(0, ...windows.map((w) => w.otherCores)),
    peakRssBy,
    errors,
    firstError,
  };
}
