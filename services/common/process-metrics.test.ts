import test from "ava";
import { MetricsRegistry } from "./metrics.ts";
import { registerProcessMetrics } from "./process-metrics.ts";

/** The samples of a render: name{labels} -> value. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

/**
 * Waits for `ok` with a deadline, asking every `everyMs` (0: at each turn of the event loop).
 * A scrape resets the event loop's delays, and the first tick of the monitor after a reset
 * records none: polls of the delay must be further apart than its resolution.
 */
async function until(ok: () => boolean, what: string, everyMs = 0, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => (everyMs > 0 ? setTimeout(r, everyMs) : setImmediate(r)));
  }
}

test.serial("the process and Node.js metrics carry prom-client's names, types and sane values", (t) => {
  const registry = new MetricsRegistry();
  const stop = registerProcessMetrics(registry);
  try {
    const text = registry.render();
    for (const [name, type] of [
      ["process_cpu_seconds_total", "counter"],
      ["process_cpu_user_seconds_total", "counter"],
      ["process_resident_memory_bytes", "gauge"],
      ["process_start_time_seconds", "gauge"],
      ["nodejs_heap_size_used_bytes", "gauge"],
      ["nodejs_heap_space_size_used_bytes", "gauge"],
      ["nodejs_gc_duration_seconds", "histogram"],
      ["nodejs_eventloop_lag_p99_seconds", "gauge"],
    ]) {
      t.regex(text, new RegExp(`^# TYPE ${name} ${type}$`, "m"));
    }
    const s = samples(text);
    const rss = s.get("process_resident_memory_bytes") ?? 0;
    t.true(rss > 10e6 && rss < 100e9, `rss ${rss}`);
    t.true((s.get("nodejs_heap_size_used_bytes") ?? 0) <= (s.get("nodejs_heap_size_total_bytes") ?? 0));
    t.true((s.get('nodejs_heap_space_size_used_bytes{space="old"}') ?? 0) > 0, "old space, named without _space");
    const cpu = s.get("process_cpu_seconds_total") ?? 0;
    const parts = (s.get("process_cpu_user_seconds_total") ?? 0) + (s.get("process_cpu_system_seconds_total") ?? 0);
    t.true(cpu > 0 && Math.abs(cpu - parts) < 0.05, `cpu ${cpu} against user + system ${parts}`);
    const start = s.get("process_start_time_seconds") ?? 0;
    t.true(Math.abs(start - (Date.now() / 1000 - process.uptime())) <= 1, `start ${start}`);
    t.is(s.get(`nodejs_version_info{version="${process.version}",major="${process.versions.node.split(".")[0]}",minor="${process.versions.node.split(".")[1]}",patch="${process.versions.node.split(".")[2]}"}`), 1);
    if (process.platform === "linux") {
      const fds = s.get("process_open_fds") ?? 0;
      t.true(fds >= 3 && fds <= (s.get("process_max_fds") ?? 0), `open fds ${fds}`);
    }
  } finally {
    stop();
  }
});

test.serial("garbage collections are counted by kind, and a blocked event loop shows in the next scrape only", async (t) => {
  const registry = new MetricsRegistry();
  const stop = registerProcessMetrics(registry);
  try {
    // Young garbage until a scavenge is observed (the observer is told asynchronously).
    let keep: number[][] = [];
    await until(() => {
      for (let i = 0; i < 10_000; i++) keep.push([i, i + 1]);
      if (keep.length > 200_000) keep = [];
      return (samples(registry.render()).get('nodejs_gc_duration_seconds_count{kind="minor"}') ?? 0) > 0;
    }, "a minor collection to be observed");
    t.true((samples(registry.render()).get('nodejs_gc_duration_seconds_sum{kind="minor"}') ?? 0) > 0);

    // Hold the event loop for 300 ms: the monitor's timer (every 10 ms) is that late once. The
    // monitor's first tick after a scrape records nothing, so each try lets it tick before and
    // after the hold; tried again (within the deadline) if a busy machine delayed those ticks.
    const yieldMs = (ms: number) => new Promise((r) => setTimeout(r, ms));
    let seen = 0;
    const deadline = Date.now() + 10_000;
    while (seen < 0.25) {
      if (Date.now() > deadline) throw new Error(`the blocked loop's delay never showed (last max ${seen} s)`);
      registry.render();
      await yieldMs(25);
      const blockedUntil = performance.now() + 300;
      while (performance.now() < blockedUntil) {}
      await yieldMs(25);
      seen = samples(registry.render()).get("nodejs_eventloop_lag_max_seconds") ?? 0;
    }
    t.true(seen < 1, `max delay ${seen} s`);
    // Each scrape covers only the time since the one before: the next one with a sample has no such delay.
    let after: number | undefined;
    await until(() => (after = samples(registry.render()).get("nodejs_eventloop_lag_max_seconds")) !== undefined, "a sample after the reset", 50);
    t.true((after as number) < 0.25, `max delay after the reset: ${after}`);
  } finally {
    stop();
  }
});
