// make bench: dsat beside a raw grpc-js router and Moleculer 0.14, on loopback, each system
// as separate processes, loaded by a driver process; results in bench/results/.
//   node --conditions=@dsat/source bench/run.ts [--quick] [--profile] [--only raw,moleculer,dsat,memory]
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { cpus, release, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { etcdBinary } from "../services/cli/local-etcd.ts";
import { type Deployment, dsatEchoPipeline, startDsat, startMoleculer, startRaw } from "./lib/deployments.ts";
import type { LoadPlan } from "./lib/load.ts";
import { type Measured, measure, mergeMeasured } from "./lib/measure.ts";
import { runMemoryMode } from "./lib/memory-mode.ts";
import { machineBusySeconds } from "./lib/proc-stats.ts";
import { ROOT } from "./lib/processes.ts";
import { type BenchReport, evaluateTargets, renderMarkdown, renderText, type ScenarioResult } from "./lib/report.ts";
import { summarizeProfile } from "./profile-summary.ts";

const { values } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    profile: { type: "boolean", default: false },
    only: { type: "string" },
  },
  strict: true,
});
const quick = values.quick === true;
const only = new Set((values.only ?? "raw,moleculer,dsat,dsat-traced,dsat-status-process,memory").split(",").map((s) => s.trim()));
const RESULTS = join(ROOT, "bench/results");
/** The whole run is bounded: past this, it stops what it started and fails. */
const RUN_TIMEOUT_MS = 15 * 60_000;
const PAYLOAD_BYTES = 64;
/** Tasks each dsat worker runs at once: enough that 1000 in flight never wait for a slot. */
const DSAT_WORKER_CONCURRENCY = 1000;

/**
 * Rounds of a run: in each, every scenario is measured once, in turn, on deployments that
 * stay up between rounds. A scenario's windows are thus spread over the whole run, as are
 * the others': when the machine gets slower or faster during the run (it does, by tens of
 * percent on a shared VM), every system sees it, and the ratios stay fair.
 */
const ROUNDS = quick ? 1 : 3;
/** The warm-up of a deployment's later rounds: the driver is new, the deployment is warm already. */
const LATER_WARMUP = { warmupTasks: 5_000, warmupMs: 2_000 };

/** The plan of a scenario's first round (one window; later rounds warm up for less). */
const plan = (inFlight: number): LoadPlan =>
  quick
    ? { inFlight, warmupTasks: 2_000, warmupMs: 2_000, windows: 1, windowTasks: 5_000, windowMs: 5_000, drainMs: 10_000, payloadBytes: PAYLOAD_BYTES }
    : { inFlight, warmupTasks: 30_000, warmupMs: 5_000, windows: 1, windowTasks: 20_000, windowMs: 15_000, drainMs: 10_000, payloadBytes: PAYLOAD_BYTES };

const say = (s: string) => process.stdout.write(`${s}\n`);
/** Deployments up, by scenario id ("dsat@1000"). */
const running = new Map<string, Deployment>();

async function stopAll(): Promise<void> {
  const all = [...running.values()];
  running.clear();
  await Promise.all(all.map((d) => d.stop()));
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    say(`\n${signal}: stopping what the bench started`);
    void stopAll().finally(() => process.exit(130));
  });
}
setTimeout(() => {
  say(`the bench ran over ${RUN_TIMEOUT_MS / 60_000} minutes; stopping`);
  void stopAll().finally(() => process.exit(1));
}, RUN_TIMEOUT_MS).unref();

/** Node flags that make a process write a CPU profile to bench/results/NAME.cpuprofile when it exits. */
const cpuProf = (name: string) => ["--cpu-prof", "--cpu-prof-dir", RESULTS, "--cpu-prof-name", `${name}.cpuprofile`];

function start(system: ScenarioResult["system"], profile = false): Promise<Deployment> {
  switch (system) {
    case "raw":
      return startRaw();
    case "moleculer":
      return startMoleculer();
    case "dsat":
      return startDsat({
        ...dsatEchoPipeline(DSAT_WORKER_CONCURRENCY),
        routerNodeFlags: profile ? cpuProf("router") : [],
        routerArgs: [],
        serveStatus: true,
      });
    case "dsat-status-process":
      return startDsat({
        ...dsatEchoPipeline(DSAT_WORKER_CONCURRENCY),
        routerNodeFlags: profile ? cpuProf("router-split") : [],
        statusNodeFlags: profile ? cpuProf("status") : [],
        routerArgs: [],
        system: "dsat-status-process",
      });
    case "dsat-traced":
      return startOtlpSink().then((endpoint) =>
        startDsat({
          ...dsatEchoPipeline(DSAT_WORKER_CONCURRENCY),
          routerNodeFlags: [],
          routerArgs: [],
          serveStatus: true,
          system: "dsat-traced",
          env: {
            OTEL_TRACES_EXPORTER: "otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: endpoint,
            OTEL_TRACES_SAMPLER: "always_on",
            // Room for every span (the default queue, 2048, drops spans at these rates); batches
            // of the default size, 512 (2048 cost about 10% more CPU per task: longer pauses
            // of the event loop, spans kept longer for the garbage collector).
            OTEL_BSP_MAX_QUEUE_SIZE: "65536",
          },
        }),
      );
  }
}

let sink: Promise<string> | undefined;

/** An OTLP/HTTP endpoint in this process that takes every span export and discards it. */
function startOtlpSink(): Promise<string> {
  sink ??= new Promise<string>((resolve) => {
    const server = createHttpServer((req, res) => {
      req.resume();
      req.on("end", () => {
        res.writeHead(200, { "content-type": "application/x-protobuf" });
        res.end();
      });
    });
    server.unref();
    server.listen(0, "127.0.0.1", () => {
      const a = server.address();
      resolve(`http://127.0.0.1:${typeof a === "object" && a ? a.port : 0}/v1/traces`);
    });
  });
  return sink;
}

/** Seconds spent waiting for other jobs on the machine to calm down, at most, over the whole run. */
const QUIET_BUDGET_S = 60;
let quietWaited = 0;

/**
 * Waits (within QUIET_BUDGET_S over the run) until the machine has been calm for a second:
 * less than 0.3 cores busy, the bench's own processes being stopped between scenarios.
 */
async function waitForQuiet(): Promise<void> {
  while (quietWaited < QUIET_BUDGET_S) {
    const before = machineBusySeconds();
    await new Promise((r) => setTimeout(r, 1_000));
    const busy = machineBusySeconds() - before;
    if (busy < 0.3) return;
    quietWaited++;
    if (quietWaited === 1 || quietWaited % 10 === 0) say(`  waiting for the machine to calm down (${busy.toFixed(1)} cores busy)…`);
  }
}

/**
 * Measures a scenario once: starts its deployment the first time (and keeps it up for the
 * next rounds), then one warm-up and one window.
 */
async function measureOnce(system: ScenarioResult["system"], inFlight: number, round: number): Promise<{ measured: Measured; startupMs?: number }> {
  const id = `${system}@${inFlight}`;
  let dep = running.get(id);
  let startupMs: number | undefined;
  if (!dep) {
    await waitForQuiet();
    const t0 = performance.now();
    dep = await start(system);
    startupMs = performance.now() - t0;
    running.set(id, dep);
  }
  await waitForQuiet();
  const p = plan(inFlight);
  return { measured: await measure(dep, round === 0 ? p : { ...p, ...LATER_WARMUP }), startupMs };
}

function machine(): BenchReport["machine"] {
  let etcd = "unknown";
  try {
    etcd = /etcd Version: (\S+)/.exec(execFileSync(etcdBinary(), ["--version"], { encoding: "utf8" }))?.[1] ?? etcd;
  } catch {
    // Reported as unknown.
  }
  const git = (...args: string[]) => {
    try {
      return execFileSync("git", args, { cwd: ROOT, encoding: "utf8" }).trim();
    } catch {
      return "";
    }
  };
  const changed = git("status", "--porcelain", "--", "sdk", "services", "proto").split("\n").filter(Boolean).length;
  return {
    commit: `${git("rev-parse", "--short", "HEAD") || "unknown"}${changed > 0 ? ` + ${changed} uncommitted change(s) in sdk/, services/, proto/` : ""}`,
    cores: cpus().length,
    cpu: cpus()[0]?.model.trim() ?? "unknown",
    memoryGiB: totalmem() / 2 ** 30,
    node: process.versions.node,
    etcd,
    kernel: release(),
  };
}

const started = performance.now();
const report: BenchReport = {
  date: new Date().toISOString(),
  mode: quick ? "quick" : "full",
  seconds: 0,
  machine: machine(),
  plans: { "1000 in flight": plan(1000), "100 in flight": plan(100) },
  rounds: ROUNDS,
  laterWarmup: LATER_WARMUP,
  scenarios: [],
  failures: [],
  targets: [],
  notes: [
    "CPU per task sums user+system time (every thread) of every process of the system, the driver that loads it included, and etcd for dsat, over the measured window, divided by the tasks that ended in it.",
    "raw: grpc-js bidirectional streams of bare bytes (no protobuf), client -> router -> w1 -> router -> w2 -> router -> w3 -> router -> client, one message per task per link.",
    "Moleculer: JSON serializer, TCP transporter with static peers (no UDP discovery); stage1.run calls stage2.run calls stage3.run (nested calls); the payload is a 64-character string.",
    `dsat: one router serving StatusService itself (--serve-status; the row "status in its own process" has a status process beside it), one worker per stage (--concurrency ${DSAT_WORKER_CONCURRENCY}), every transition persisted in a local etcd; the driver is the SDK's client.run (one SubmitStream, await_results).`,
    "etcd per task reads etcd's /metrics: etcd_mvcc_put_total (keys put), etcd_mvcc_txn_total (MVCC transactions of more than one operation), etcd_server_proposals_committed_total, etcd_disk_wal_fsync_duration_seconds_count. etcd 3.4 also exposes etcd_debugging_mvcc_put_total (the same count).",
    "MB is 10^6 bytes; peak RSS is VmHWM of /proc/<pid>/status at the end of the last window (startup and warm-up included).",
    "other load, cores: the most cores that something else than the bench's processes kept busy during a window (from /proc/stat, steal included); above a few tenths the numbers of that row are disturbed.",
  ],
};

try {
  const order: [ScenarioResult["system"], number][] = [
    ["raw", 1000],
    ["moleculer", 1000],
    ["dsat", 1000],
    ["dsat-traced", 1000],
    ["dsat-status-process", 1000],
    ["raw", 100],
    ["moleculer", 100],
    ["dsat", 100],
  ];
  const parts = new Map<string, { system: ScenarioResult["system"]; inFlight: number; startupMs: number; measured: Measured[] }>();
  const broken = new Set<string>();
  for (let round = 0; round < ROUNDS; round++) {
    if (ROUNDS > 1) say(`round ${round + 1} of ${ROUNDS}`);
    for (const [system, inFlight] of order) {
      const id = `${system}@${inFlight}`;
      if (!only.has(system) || broken.has(id)) continue;
      say(`  ${system} at ${inFlight} in flight…`);
      try {
        const { measured, startupMs } = await measureOnce(system, inFlight, round);
        const entry = parts.get(id) ?? { system, inFlight, startupMs: startupMs ?? 0, measured: [] };
        entry.measured.push(measured);
        parts.set(id, entry);
        say(
          `    ${Math.round(measured.tasksPerSec)} tasks/s, p50 ${measured.p50Ms.toFixed(1)} ms, p99 ${measured.p99Ms.toFixed(1)} ms, ` +
            `${measured.cpuMsPerTask.toFixed(3)} CPU ms/task` +
            `${startupMs === undefined ? "" : ` (started in ${Math.round(startupMs)} ms)`}` +
            `${measured.otherCores >= 0.3 ? `; other jobs kept up to ${measured.otherCores.toFixed(1)} cores busy` : ""}`,
        );
        if (measured.errors > 0) say(`    ${measured.errors} tasks failed; the first: ${measured.firstError}`);
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        report.failures.push({ id, error: message });
        say(`    failed: ${message}`);
        broken.add(id);
        parts.delete(id);
        await running.get(id)?.stop();
        running.delete(id);
      }
    }
  }
  await stopAll();
  for (const [id, e] of parts) {
    report.scenarios.push({ id, system: e.system, inFlight: e.inFlight, startupMs: e.startupMs, ...mergeMeasured(e.measured) });
  }

  if (only.has("memory")) {
    say("running the bounded-memory mode…");
    try {
      report.memory = await runMemoryMode({ tasks: 10_000, probe: 1_000, slowMs: 50, slowConcurrency: 1 });
      say(`  router peak RSS ${Math.round((report.memory.peakRssBy.router ?? 0) / 1e6)} MB (status in its own process)`);
      report.memoryServeStatus = await runMemoryMode({ tasks: 10_000, probe: 1_000, slowMs: 50, slowConcurrency: 1, serveStatus: true });
      say(`  router peak RSS ${Math.round((report.memoryServeStatus.peakRssBy.router ?? 0) / 1e6)} MB (serving StatusService itself)`);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      report.failures.push({ id: "memory", error: message });
      say(`  failed: ${message}`);
    }
  }

  if (values.profile) {
    say("running dsat at 1000 in flight with the router (and the status server it serves) under node --cpu-prof…");
    mkdirSync(RESULTS, { recursive: true });
    const files = { router: join(RESULTS, "router.cpuprofile") };
    for (const f of Object.values(files)) rmSync(f, { force: true });
    const dep = await start("dsat", true);
    running.set("profile", dep);
    let measured: Awaited<ReturnType<typeof measure>>;
    try {
      measured = await measure(dep, plan(1000));
    } finally {
      // SIGINT: the router closes and exits, and Node writes the profile on the way out.
      await stopAll();
    }
    report.profile = { measured, files: [] };
    for (const [name, file] of Object.entries(files) as ["router" | "status", string][]) {
      if (!existsSync(file)) {
        say(`  the ${name} wrote no profile`);
        continue;
      }
      const w = measured.windows[0];
      report.profile[name] = summarizeProfile(file, 25, w ? { fromUs: w.monoStartUs, toUs: w.monoEndUs } : undefined);
      report.profile.files.push(`bench/results/${name}.cpuprofile`);
    }
  }
} finally {
  await stopAll();
}

report.seconds = (performance.now() - started) / 1000;
if (quietWaited > 0) report.notes.push(`The bench waited ${quietWaited} s in all for other jobs on the machine to calm down before its scenarios.`);
report.targets = evaluateTargets(report);
mkdirSync(RESULTS, { recursive: true });
// latest.* is what README and docs/benchmarks.md show: only a full run of every part
// replaces it. A quick run, or a full run of some parts (--only, as in A/B pairs), writes
// quick.* or partial.* beside it (ignored by git).
const base = join(RESULTS, quick ? "quick" : values.only === undefined ? "latest" : "partial");
for (const [ext, text] of [
  ["json", `${JSON.stringify(report, null, 2)}\n`],
  ["md", renderMarkdown(report)],
] as const) {
  writeFileSync(`${base}.${ext}.tmp`, text);
  renameSync(`${base}.${ext}.tmp`, `${base}.${ext}`);
}
say(`\n${renderText(report)}`);
say(`\nwrote ${base}.json and ${base}.md`);
process.exit(0);
