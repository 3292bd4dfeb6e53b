import test from "ava";
import type { WindowMeasure } from "./measure.ts";
import { type BenchReport, bar, coresBusy, cpuBudgetTables, evaluateTargets, renderMarkdown, type ScenarioResult } from "./report.ts";

/** One window of a scenario: only what the report reads is set. */
function window(tasksPerSec: number, cpuMsPerTask: number, p99Ms: number): WindowMeasure {
  return {
    tasks: 1000,
    errors: 0,
    seconds: 1000 / tasksPerSec,
    p50Ms: p99Ms / 2,
    p90Ms: p99Ms * 0.8,
    p99Ms,
    maxMs: p99Ms,
    meanMs: p99Ms / 2,
    tasksPerSec,
    monoStartUs: 0,
    monoEndUs: 1,
    cpuMsPerTask,
    cpuMsPerTaskBy: {},
    otherCores: 0,
  };
}

/** A scenario whose median is its second window (three rounds). */
function scenario(
  system: ScenarioResult["system"],
  inFlight: number,
  rounds: [tasksPerSec: number, cpuMsPerTask: number, p99Ms: number][],
  cpuMsPerTaskBy: Record<string, number> = {},
): ScenarioResult {
  const windows = rounds.map(([tps, cpu, p99]) => window(tps, cpu, p99));
  const mid = rounds[1] ?? rounds[0];
  if (!mid) throw new Error("a scenario needs a window");
  return {
    id: `${system}@${inFlight}`,
    system,
    inFlight,
    startupMs: 1,
    windows,
    tasksPerSec: mid[0],
    cpuMsPerTask: mid[1],
    p50Ms: mid[2] / 2,
    p99Ms: mid[2],
    cpuMsPerTaskBy,
    otherCores: 0,
    peakRssBy: { router: 150e6, driver: 300e6 },
    errors: 0,
    firstError: "",
  };
}

function report(scenarios: ScenarioResult[]): BenchReport {
  return {
    date: "2026-12-07T00:00:00.000Z",
    mode: "full",
    seconds: 1,
    machine: { commit: "abc1234", cores: 2, cpu: "test", memoryGiB: 24, node: "24", etcd: "3.4", kernel: "6" },
    plans: {},
    rounds: 3,
    laterWarmup: { warmupTasks: 1, warmupMs: 1 },
    scenarios,
    failures: [],
    targets: [],
    notes: [],
  };
}

const full = report([
  scenario("raw", 1000, [[10_000, 0.16, 120], [11_000, 0.15, 125], [12_000, 0.14, 130]]),
  scenario("moleculer", 1000, [[20_000, 0.08, 60], [20_000, 0.08, 60], [20_000, 0.08, 60]]),
  scenario("dsat", 1000, [[6_000, 0.2, 200], [7_000, 0.2, 190], [8_000, 0.2, 180]], { router: 0.12, etcd: 0.05, driver: 0.03 }),
  scenario("dsat-traced", 1000, [[4_800, 0.3, 300], [5_600, 0.3, 280], [6_400, 0.3, 260]]),
  scenario("raw", 100, [[11_000, 0.15, 15], [11_000, 0.15, 15], [11_000, 0.15, 15]]),
  scenario("dsat", 100, [[6_000, 0.2, 30], [6_000, 0.2, 29], [6_000, 0.2, 28]]),
]);

test("targets: a ratio of medians, met or missed with by how much, and each round's ratio", (t) => {
  const rows = evaluateTargets(full);
  const by = (what: string) => rows.find((r) => r.what.startsWith(what));
  const mol = by("tasks/s at 1000 in flight, dsat / Moleculer");
  t.is(mol?.met, false);
  t.is(mol?.value, "0.35× (rounds: 0.30×, 0.35×, 0.40×)");
  t.is(mol?.note, "4.29× short of it"); // 1.5 / 0.35
  t.is(by("tasks/s at 1000 in flight, dsat / raw")?.note, "1.57× short of it"); // 11,000 / 7,000
  t.is(by("CPU per task")?.value.split(" ")[0], "2.50×"); // 0.2 / 0.08
  const p99 = by("p99 latency at 100 in flight");
  t.is(p99?.met, true); // 29 / 15 = 1.93 ≤ 2
  t.is(p99?.note, "1.03× to spare");
  t.is(by("throughput with tracing")?.met, true); // 5,600 / 7,000 = 0.8 ≥ 0.7
  t.is(by("router peak RSS")?.met, undefined); // the memory mode did not run
});

test("targets: a system missing from the run is not measured, not missed", (t) => {
  const rows = evaluateTargets(report([scenario("dsat", 1000, [[7_000, 0.2, 190]])]));
  for (const r of rows) t.is(r.met, undefined, r.what);
});

test("the CPU budget of the throughput target: cores over 1.5× Moleculer's tasks/s, each process's share of it", (t) => {
  const [budget, busy] = cpuBudgetTables(full);
  // 2 cores / (1.5 × 20,000 tasks/s) = 0.0667 CPU ms per task.
  t.true(budget?.title.includes("= 0.067 CPU ms per task"), budget?.title);
  t.deepEqual(
    budget?.rows.map((r) => [r[0], r[1], r[2]]),
    [
      ["router", "0.120", "180%"],
      ["etcd", "0.050", "75%"],
      ["driver", "0.030", "45%"],
      ["all processes", "0.200", "300%"],
      ["the CPU target: 0.5 × Moleculer's 0.080", "0.040", "60%"],
    ],
  );
  t.is(budget?.rows[0]?.[3], "█".repeat(18)); // 1.8 budgets, a tenth per character
  // dsat's median window: 7,000 tasks/s × 0.2 ms = 1.4 cores; Moleculer's 1.6.
  t.deepEqual(
    busy?.rows.map((r) => [r[0], r[3]]),
    [
      ["raw grpc-js router", "1.65"],
      ["Moleculer 0.14 (TCP)", "1.60"],
      ["dsat (etcd, tracing off)", "1.40"],
      ["dsat, tracing at 100%", "1.68"],
    ],
  );
  t.deepEqual(cpuBudgetTables(report([scenario("dsat", 1000, [[7_000, 0.2, 190]])])), []);
});

test("bars: eighths of a character, capped with an ellipsis", (t) => {
  t.is(bar(0), "");
  t.is(bar(Number.NaN), "");
  t.is(bar(0.05), "▌"); // half a tenth
  t.is(bar(0.1), "█");
  t.is(bar(0.2625), "██▋"); // 2.625 characters
  t.is(bar(10, 5), "█████…");
  t.is(bar(0.5, 5), "█████");
});

test("coresBusy is the median window's CPU per task × tasks/s", (t) => {
  t.is(coresBusy(scenario("dsat", 1000, [[1_000, 1, 1], [3_000, 1, 1], [2_000, 1, 1]])), 2);
});

test("the Markdown report has the budget beside the targets", (t) => {
  const md = renderMarkdown({ ...full, targets: evaluateTargets(full) });
  t.regex(md, /## Targets \(reported, never asserted\)/);
  t.regex(md, /## CPU budget of the throughput target: 2 cores/);
  t.regex(md, /\| all processes \| 0\.200 \| 300% \| █{30} \|/);
});
