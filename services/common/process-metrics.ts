import { readdirSync, readFileSync } from "node:fs";
import { constants, monitorEventLoopDelay, type PerformanceEntry, PerformanceObserver } from "node:perf_hooks";
import { getHeapSpaceStatistics } from "node:v8";
import { type MetricsRegistry, SECONDS_BUCKETS } from "./metrics.ts";

/** Options of {@link registerProcessMetrics}. */
export interface ProcessMetricsOptions {
  /** How often the event loop's delay is sampled, in milliseconds (default 10, as prom-client). */
  eventLoopResolutionMs: number;
}

const DEFAULT_PROCESS_METRICS_OPTIONS: Readonly<ProcessMetricsOptions> = Object.freeze({
  eventLoopResolutionMs: 10,
});

/** The `kind` label (as label values) of each kind of a `gc` performance entry. */
const GC_KINDS = new Map<number, readonly string[]>([
  [constants.NODE_PERFORMANCE_GC_MINOR, ["minor"]],
  [constants.NODE_PERFORMANCE_GC_MAJOR, ["major"]],
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL, ["incremental"]],
  [constants.NODE_PERFORMANCE_GC_WEAKCB, ["weakcb"]],
]);
const OTHER_GC: readonly string[] = ["other"];

/** Upper bounds for garbage collection pauses, in seconds: 0.1 ms to 1 s. */
const GC_BUCKETS = Object.freeze([0.0001, 0.0005, ...SECONDS_BUCKETS.filter((b) => b <= 1)]);

/**
 * Registers the standard metrics of a process and of Node.js, under the names of
 * prom-client's default metrics (so that dashboards made for those read them): CPU seconds,
 * resident memory, open file descriptors, start time; V8's heap, in all and by space;
 * garbage collection pauses by kind; the event loop's delay since the last scrape. They are
 * read when scraped, but for the garbage collections (a PerformanceObserver) and the event
 * loop's delay (a libuv timer every `eventLoopResolutionMs`). Returns a function that stops
 * those two.
 */
export function registerProcessMetrics(registry: MetricsRegistry, options: Partial<ProcessMetricsOptions> = {}): () => void {
  const o = { ...DEFAULT_PROCESS_METRICS_OPTIONS, ...options };

  // One reading of CPU and memory per scrape, shared by the metrics made from it.
  let cpu: NodeJS.CpuUsage | undefined;
  let memory: NodeJS.MemoryUsage | undefined;
  registry.beforeRender(() => {
    cpu = undefined;
    memory = undefined;
  });
  const cpuNow = () => (cpu ??= process.cpuUsage());
  const mem = () => (memory ??= process.memoryUsage());

  registry.counterOf("process_cpu_user_seconds_total", "User CPU time spent, in seconds (every thread).", [], () => [[[], cpuNow().user / 1e6]]);
  registry.counterOf("process_cpu_system_seconds_total", "System CPU time spent, in seconds (every thread).", [], () => [[[], cpuNow().system / 1e6]]);
  registry.counterOf("process_cpu_seconds_total", "User and system CPU time spent, in seconds (every thread).", [], () => [
    [[], (cpuNow().user + cpuNow().system) / 1e6],
  ]);
  const startSeconds = Math.round(Date.now() / 1000 - process.uptime());
  registry.gauge("process_start_time_seconds", "When the process started, in seconds since the Unix epoch.", [], () => [[[], startSeconds]]);
  registry.gauge("process_resident_memory_bytes", "Resident memory size (RSS), in bytes.", [], () => [[[], mem().rss]]);
  registry.gauge("process_open_fds", "Open file descriptors (Linux only).", [], () => {
    const n = openFds();
    return n === undefined ? [] : [[[], n]];
  });
  const maxFds = readMaxFds();
  registry.gauge("process_max_fds", "The soft limit of open file descriptors (Linux only).", [], () => (maxFds === undefined ? [] : [[[], maxFds]]));

  registry.gauge("nodejs_heap_size_total_bytes", "V8's heap as reserved, in bytes.", [], () => [[[], mem().heapTotal]]);
  registry.gauge("nodejs_heap_size_used_bytes", "V8's heap in use, in bytes (live objects and garbage not yet collected).", [], () => [[[], mem().heapUsed]]);
  registry.gauge("nodejs_external_memory_bytes", "Memory of C++ objects bound to JavaScript objects (Buffers among them), in bytes.", [], () => [
    [[], mem().external],
  ]);
  const spaces = (field: "space_size" | "space_used_size" | "space_available_size") => () =>
    getHeapSpaceStatistics().map((s) => [[s.space_name.replace(/_space$/, "")], s[field]] as const);
  registry.gauge("nodejs_heap_space_size_total_bytes", "V8's heap by space, as reserved, in bytes.", ["space"], spaces("space_size"));
  registry.gauge("nodejs_heap_space_size_used_bytes", "V8's heap by space, in use, in bytes.", ["space"], spaces("space_used_size"));
  registry.gauge("nodejs_heap_space_size_available_bytes", "V8's heap by space, still available, in bytes.", ["space"], spaces("space_available_size"));
  registry.gauge("nodejs_version_info", "The Node.js version (the value is always 1).", ["version", "major", "minor", "patch"], () => {
    const [major = "", minor = "", patch = ""] = process.versions.node.split(".");
    return [[[process.version, major, minor, patch], 1]];
  });

  const gc = registry.histogram("nodejs_gc_duration_seconds", "Garbage collection pauses of the main thread, by kind, in seconds.", ["kind"], GC_BUCKETS);
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gc.observe(GC_KINDS.get(gcKind(entry)) ?? OTHER_GC, entry.duration / 1000);
  });
  observer.observe({ entryTypes: ["gc"] });

  // Each scrape reads the delays since the one before, then starts over (as prom-client does).
  const delay = monitorEventLoopDelay({ resolution: o.eventLoopResolutionMs });
  delay.enable();
  let lag: { min: number; max: number; mean: number; stddev: number; p50: number; p90: number; p99: number } | undefined;
  registry.beforeRender(() => {
    lag =
      delay.count === 0
        ? undefined
        : {
            min: delay.min / 1e9,
            max: delay.max / 1e9,
            mean: delay.mean / 1e9,
            stddev: delay.stddev / 1e9,
            p50: delay.percentile(50) / 1e9,
            p90: delay.percentile(90) / 1e9,
            p99: delay.percentile(99) / 1e9,
          };
    delay.reset();
  });
  for (const stat of ["min", "max", "mean", "stddev", "p50", "p90", "p99"] as const) {
    registry.gauge(
      `nodejs_eventloop_lag_${stat}_seconds`,
      `The event loop's delay since the last scrape: its ${stat}, in seconds (sampled every ${o.eventLoopResolutionMs} ms).`,
      [],
      () => (lag ? [[[], lag[stat]]] : []),
    );
  }

  return () => {
    observer.disconnect();
    delay.disable();
  };
}

/** Open file descriptors of this process, or undefined where /proc is not there. */
function openFds(): number | undefined {
  try {
    // The directory's own descriptor, open while it is read, is not counted.
    return readdirSync("/proc/self/fd").length - 1;
  } catch {
    return undefined;
  }
}

/** The soft limit of open files from /proc/self/limits, or undefined where it cannot be read. */
function readMaxFds(): number | undefined {
  try {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"));
    const soft = line?.slice("Max open files".length).trim().split(/\s+/)[0];
    const n = Number(soft);
    return soft !== undefined && Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

/** The kind of a `gc` performance entry (its detail's `kind`), or -1. */
function gcKind(entry: PerformanceEntry): number {
  // A gc entry carries a NodeGCPerformanceDetail, which the base type does not declare.
  const detail = (entry as { detail?: { kind?: unknown } }).detail;
  return typeof detail?.kind === "number" ? detail.kind : -1;
}
