// The bench's results: the JSON written under bench/results/, and its tables (text for the
// terminal, Markdown for the file and docs/benchmarks.md).
import { type ProfileSummary, profileMarkdown } from "../profile-summary.ts";
import type { LoadPlan } from "./load.ts";
import type { Measured, WindowMeasure } from "./measure.ts";
import type { MemoryResult } from "./memory-mode.ts";
import { median } from "./stats.ts";

/** One scenario: a system at a number of tasks in flight. */
export interface ScenarioResult extends Measured {
  /** "dsat@1000". */
  id: string;
  system: "raw" | "moleculer" | "dsat" | "dsat-traced" | "dsat-status-process";
  inFlight: number;
  /** How long the system took to start, in milliseconds. */
  startupMs: number;
}

/** A target of the issue, and where the run stands against it. */
export interface TargetRow {
  what: string;
  target: string;
  /** The measured value as shown. */
  value: string;
  /** true: met; false: missed; undefined: not measured. */
  met: boolean | undefined;
  /** By how much it is missed (or met), in words. */
  note: string;
}

/** Everything a run writes. */
export interface BenchReport {
  date: string;
  mode: "full" | "quick";
  seconds: number;
  machine: { commit: string; cores: number; cpu: string; memoryGiB: number; node: string; etcd: string; kernel: string };
  plans: Record<string, LoadPlan>;
  /** Rounds: each scenario is measured once per round, every round going over all of them. */
  rounds: number;
  /** The warm-up of a deployment's later rounds. */
  laterWarmup: { warmupTasks: number; warmupMs: number };
  scenarios: ScenarioResult[];
  /** Scenarios that could not run, and why. */
  failures: { id: string; error: string }[];
  targets: TargetRow[];
  memory?: MemoryResult;
  /** The bounded-memory mode again, with the router serving StatusService itself. */
  memoryServeStatus?: MemoryResult;
  profile?: { measured: Measured; router?: ProfileSummary; status?: ProfileSummary; files: string[] };
  notes: string[];
}

const SYSTEMS: ScenarioResult["system"][] = ["raw", "moleculer", "dsat", "dsat-traced", "dsat-status-process"];

const SYSTEM_LABEL: Record<ScenarioResult["system"], string> = {
  raw: "raw grpc-js router",
  moleculer: "Moleculer 0.14 (TCP)",
  dsat: "dsat (etcd, tracing off)",
  "dsat-traced": "dsat, tracing at 100%",
  "dsat-status-process": "dsat, status in its own process",
};

/** A number for a table: thousands separated, or "-" when there is none. */
export function num(v: number | undefined, digits = 0): string {
  if (v === undefined || Number.isNaN(v)) return "-";
  return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Bytes as MB (10^6 bytes). */
export function mb(bytes: number | undefined): string {
  return bytes === undefined ? "-" : num(bytes / 1e6, 0);
}

function find(r: BenchReport, system: ScenarioResult["system"], inFlight: number): ScenarioResult | undefined {
  return r.scenarios.find((s) => s.system === system && s.inFlight === inFlight);
}

function ratio(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined || b === undefined || Number.isNaN(a) || Number.isNaN(b) || b === 0) return undefined;
  return a / b;
}

/** "1.23×", or "-". */
export function times(v: number | undefined): string {
  return v === undefined ? "-" : `${v < 0.1 ? v.toFixed(3) : v.toFixed(2)}×`;
}

/** The throughput target (dsat / Moleculer at 1000 in flight) whose CPU budget {@link cpuBudgetTables} shows. */
const THROUGHPUT_TARGET = 1.5;
/** The CPU target (dsat / Moleculer, CPU per task at 1000 in flight). */
const CPU_TARGET = 0.5;

/** Evaluates the targets (for the report only: nothing is asserted). */
export function evaluateTargets(r: BenchReport): TargetRow[] {
  const d = find(r, "dsat", 1000);
  const raw = find(r, "raw", 1000);
  const mol = find(r, "moleculer", 1000);
  const d100 = find(r, "dsat", 100);
  const raw100 = find(r, "raw", 100);
  /** The ratio of a to b in each round (window i of a scenario is its round i), as shown after the run's value. */
  const rounds = (a: ScenarioResult | undefined, b: ScenarioResult | undefined, f: (w: WindowMeasure) => number): string => {
    if (!a || !b || r.rounds < 2) return "";
    const n = Math.min(a.windows.length, b.windows.length);
    const each: string[] = [];
    for (let i = 0; i < n; i++) {
      const wa = a.windows[i];
      const wb = b.windows[i];
      if (wa && wb) each.push(times(ratio(f(wa), f(wb))));
    }
    return each.length > 1 ? ` (rounds: ${each.join(", ")})` : "";
  };
  const atLeast = (what: string, value: number | undefined, target: number, unit: string, perRound = ""): TargetRow => {
    if (value === undefined) return { what, target: `≥ ${target}${unit}`, value: "-", met: undefined, note: "not measured in this run" };
    const met = value >= target;
    return {
      what,
      target: `≥ ${target}${unit}`,
      value: `${times(value)}${perRound}`,
      met,
      note: met ? `by ${times(value / target)}` : `${times(target / value)} short of it`,
    };
  };
  const atMost = (what: string, value: number | undefined, target: number, unit: string, perRound = ""): TargetRow => {
    if (value === undefined) return { what, target: `≤ ${target}${unit}`, value: "-", met: undefined, note: "not measured in this run" };
    const met = value <= target;
    return {
      what,
      target: `≤ ${target}${unit}`,
      value: `${times(value)}${perRound}`,
      met,
      note: met ? `${times(target / value)} to spare` : `${times(value / target)} over the target`,
    };
  };
  const rows = [
    atLeast("tasks/s at 1000 in flight, dsat / Moleculer", ratio(d?.tasksPerSec, mol?.tasksPerSec), THROUGHPUT_TARGET, "×", rounds(d, mol, (w) => w.tasksPerSec)),
    atLeast("tasks/s at 1000 in flight, dsat / raw", ratio(d?.tasksPerSec, raw?.tasksPerSec), 1, "×", rounds(d, raw, (w) => w.tasksPerSec)),
    atMost("CPU per task at 1000 in flight, dsat / Moleculer", ratio(d?.cpuMsPerTask, mol?.cpuMsPerTask), CPU_TARGET, "×", rounds(d, mol, (w) => w.cpuMsPerTask)),
    atMost("p99 latency at 100 in flight, dsat / raw", ratio(d100?.p99Ms, raw100?.p99Ms), 2, "×", rounds(d100, raw100, (w) => w.p99Ms)),
  ];
  const rssRow = (what: string, router: number | undefined): TargetRow =>
    router === undefined
      ? { what, target: "< 200 MB", value: "-", met: undefined, note: "not measured in this run" }
      : {
          what,
          target: "< 200 MB",
          value: `${mb(router)} MB`,
          met: router < 200e6,
          note: router < 200e6 ? `${mb(200e6 - router)} MB to spare` : `${mb(router - 200e6)} MB over (${times(router / 200e6)})`,
        };
  rows.push(rssRow("router peak RSS with 10k tasks queued (status in its own process)", r.memory?.peakRssBy.router));
  rows.push(rssRow("router peak RSS with 10k tasks queued, serving StatusService itself", r.memoryServeStatus?.peakRssBy.router));
  const traced = find(r, "dsat-traced", 1000);
  rows.push(
    atLeast(
      "throughput with tracing at 100%, / tracing off",
      traced && d ? traced.tasksPerSec / d.tasksPerSec : undefined,
      0.7,
      "× (costs at most 30%)",
      rounds(traced, d, (w) => w.tasksPerSec),
    ),
  );
  return rows;
}

/** A bar of `share` (1 = the whole budget) in tenths of a budget per character, at most `max` characters. */
export function bar(share: number, max = 50): string {
  if (!(share > 0)) return "";
  const tenths = Math.round(share * 10 * 8); // eighths of a character
  const full = Math.min(max, Math.floor(tenths / 8));
  const rest = full === max ? 0 : tenths % 8;
  return "█".repeat(full) + (rest > 0 ? (" ▏▎▍▌▋▊▉"[rest] as string) : "") + (full === max && share * 10 > max ? "…" : "");
}

/** Cores kept busy during a scenario's windows (CPU per task × tasks/s; the median window). */
export function coresBusy(s: Pick<ScenarioResult, "windows">): number {
  return median(s.windows.map((w) => (w.cpuMsPerTask * w.tasksPerSec) / 1000));
}

/**
 * Why targets 1 and 3 are where they are, as two tables: what each process of dsat takes of
 * the CPU that 1.5× Moleculer's throughput would leave per task on this machine's cores,
 * and how many of the cores each system kept busy. Empty when dsat or Moleculer was not
 * measured at 1000 in flight.
 */
export function cpuBudgetTables(r: BenchReport): Table[] {
  const d = find(r, "dsat", 1000);
  const mol = find(r, "moleculer", 1000);
  if (!d || !mol || !(mol.tasksPerSec > 0)) return [];
  const cores = r.machine.cores;
  const budgetMs = (cores * 1000) / (THROUGHPUT_TARGET * mol.tasksPerSec);
  const row = (label: string, ms: number | undefined): string[] => {
    const share = ms === undefined ? Number.NaN : ms / budgetMs;
    return [label, num(ms, 3), Number.isNaN(share) ? "-" : `${num(100 * share)}%`, bar(share)];
  };
  const processes = Object.entries(d.cpuMsPerTaskBy)
    .filter(([, ms]) => !Number.isNaN(ms))
    .sort((a, b) => b[1] - a[1]);
  const order = [...r.scenarios].filter((s) => s.inFlight === 1000).sort((a, b) => SYSTEMS.indexOf(a.system) - SYSTEMS.indexOf(b.system));
  return [
    {
      title:
        `CPU budget of the throughput target: ${cores} cores / (${THROUGHPUT_TARGET} × Moleculer's ${num(mol.tasksPerSec)} tasks/s) = ` +
        `${num(budgetMs, 3)} CPU ms per task for every process together (each █ is a tenth of it)`,
      head: ["dsat at 1000 in flight", "CPU ms/task", "of the budget", ""],
      rows: [
        ...processes.map(([name, ms]) => row(name, ms)),
        row("all processes", d.cpuMsPerTask),
        row(`the CPU target: ${CPU_TARGET} × Moleculer's ${num(mol.cpuMsPerTask, 3)}`, CPU_TARGET * mol.cpuMsPerTask),
      ],
    },
    {
      title: `Cores kept busy at 1000 in flight (of ${cores}; CPU per task × tasks/s, median window)`,
      head: ["system", "tasks/s", "CPU ms/task", "cores busy"],
      rows: order.map((s) => [SYSTEM_LABEL[s.system], num(s.tasksPerSec), num(s.cpuMsPerTask, 3), num(coresBusy(s), 2)]),
    },
  ];
}

/** A plain text table with columns padded; numbers right-aligned. */
function textTable(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const right = head.map((_, i) => rows.every((r) => /^[-0-9.,×% ]*$/.test(r[i] ?? "") || (r[i] ?? "") === "-"));
  const line = (cells: string[]) =>
    cells.map((c, i) => (right[i] ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number))).join("  ").trimEnd();
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

function mdTable(head: string[], rows: string[][]): string {
  const right = head.map((_, i) => rows.every((r) => /^[-0-9.,×% ]*$/.test(r[i] ?? "")));
  return [
    `| ${head.join(" | ")} |`,
    `| ${head.map((_, i) => (right[i] ? "---:" : "---")).join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

export type Table = { title: string; head: string[]; rows: string[][] };

/** The tables of a report, in the order they are printed. */
export function tables(r: BenchReport): Table[] {
  const out: Table[] = [];
  const order = [...r.scenarios].sort((a, b) => b.inFlight - a.inFlight || SYSTEMS.indexOf(a.system) - SYSTEMS.indexOf(b.system));
  const rows = order.map((s) => [
    SYSTEM_LABEL[s.system],
    num(s.inFlight),
    num(s.tasksPerSec),
    num(s.p50Ms, 1),
    num(s.p99Ms, 1),
    num(s.cpuMsPerTask, 3),
    s.etcdPerTask ? num(s.etcdPerTask.puts, 2) : "-",
    num(Math.max(...Object.entries(s.peakRssBy).filter(([n]) => n !== "driver").map(([, v]) => v)) / 1e6),
    num(s.otherCores, 2),
  ]);
  for (const f of r.failures) rows.push([f.id, "", `failed: ${f.error.slice(0, 200)}`, "", "", "", "", "", ""]);
  out.push({
    title: "Throughput and latency (median of the measured windows)",
    head: ["system", "in flight", "tasks/s", "p50 ms", "p99 ms", "CPU ms/task", "etcd puts/task", "largest peak RSS MB", "other load, cores"],
    rows,
  });

  const d = find(r, "dsat", 1000);
  const raw = find(r, "raw", 1000);
  const mol = find(r, "moleculer", 1000);
  const ratioRow = (label: string, f: (s: ScenarioResult) => number, inFlight: number, digits: number): string[] => {
    const ds = find(r, "dsat", inFlight);
    const rs = find(r, "raw", inFlight);
    const ms = find(r, "moleculer", inFlight);
    const v = (s: ScenarioResult | undefined) => (s ? f(s) : undefined);
    return [label, num(v(ds), digits), num(v(rs), digits), num(v(ms), digits), times(ratio(v(ds), v(rs))), times(ratio(v(ds), v(ms)))];
  };
  if (d || raw || mol) {
    out.push({
      title: "Ratios",
      head: ["metric", "dsat", "raw", "Moleculer", "dsat/raw", "dsat/Moleculer"],
      rows: [
        ratioRow("tasks/s, 1000 in flight", (s) => s.tasksPerSec, 1000, 0),
        ratioRow("p50 ms, 1000 in flight", (s) => s.p50Ms, 1000, 1),
        ratioRow("p99 ms, 1000 in flight", (s) => s.p99Ms, 1000, 1),
        ratioRow("CPU ms/task, 1000 in flight", (s) => s.cpuMsPerTask, 1000, 3),
        ratioRow("tasks/s, 100 in flight", (s) => s.tasksPerSec, 100, 0),
        ratioRow("p50 ms, 100 in flight", (s) => s.p50Ms, 100, 1),
        ratioRow("p99 ms, 100 in flight", (s) => s.p99Ms, 100, 1),
        ratioRow("CPU ms/task, 100 in flight", (s) => s.cpuMsPerTask, 100, 3),
      ],
    });
  }

  out.push({
    title: "Targets (reported, never asserted)",
    head: ["target", "wanted", "measured", "result"],
    rows: r.targets.map((t) => [t.what, t.target, t.value, t.met === undefined ? t.note : `${t.met ? "met" : "MISSED"}: ${t.note}`]),
  });

  out.push(...cpuBudgetTables(r));

  out.push({
    title: "Per process: CPU ms per task (median window) / peak RSS MB",
    head: ["system", "in flight", "process", "CPU ms/task", "peak RSS MB"],
    rows: order.flatMap((s) =>
      Object.keys(s.peakRssBy).map((name) => [SYSTEM_LABEL[s.system], num(s.inFlight), name, num(s.cpuMsPerTaskBy[name], 3), mb(s.peakRssBy[name])]),
    ),
  });

  const etcdRows = order.filter((s) => s.etcdPerTask);
  if (etcdRows.length > 0) {
    out.push({
      title: "etcd per task (deltas of etcd's /metrics counters over the window)",
      head: ["in flight", "puts (etcd_mvcc_put_total)", "txns (etcd_mvcc_txn_total)", "raft proposals", "WAL fsyncs", "etcd db MB at the end", "etcd peak RSS MB"],
      rows: etcdRows.map((s) => [
        num(s.inFlight),
        num(s.etcdPerTask?.puts, 2),
        num(s.etcdPerTask?.txns, 3),
        num(s.etcdPerTask?.proposals, 3),
        num(s.etcdPerTask?.fsyncs, 3),
        mb(s.etcdDbBytes),
        mb(s.peakRssBy.etcd),
      ]),
    });
  }

  const m = r.memory;
  if (m) {
    const f = m.flood;
    const refused = (x: Record<string, number>) =>
      Object.entries(x)
        .map(([k, v]) => `${v} ${k}`)
        .join(", ") || "none";
    out.push({
      title: `Bounded memory: ${num(m.options.tasks)} tasks behind a slow stage (${m.options.slowConcurrency} at a time, ${m.options.slowMs} ms each)`,
      head: ["what", "value"],
      rows: [
        ["admission rate / slow stage's capacity", `${num(f.admissionPerSec)} / ${num(m.slowCapacityPerSec)} tasks/s = ${num(m.inputOverCapacity)}×`],
        ["flood accepted / refused", `${num(f.accepted)} / ${refused(f.refused)} (router limit ${num(m.routerMaxTasks)} tasks)`],
        ["ack of a 100-task request p50 / p99", `${num(f.ackP50Ms, 0)} / ${num(f.ackP99Ms, 0)} ms`],
        ["queued in the router after the flood / 2 s later", `${num(f.queuedAfterFlood)} / ${num(f.queuedAfterHold)}`],
        [
          `probe of ${num(f.probe.sent)} more tasks: accepted / refused / unacked after ${num(f.probe.waitedMs / 1000)} s`,
          `${num(f.probe.accepted)} / ${refused(f.probe.refused)} / ${num(f.probe.unacked)}`,
        ],
        ["admission slowed?", admissionVerdict(m)],
        ["router peak RSS / RSS after the flood", `${mb(m.peakRssBy.router)} / ${mb(m.rssAfterFloodBy.router)} MB`],
        ["router's V8 heap after the flood: reserved / in use / C++ objects (Buffers)", heapText(m)],
        ["status peak RSS / RSS after the flood", `${mb(m.peakRssBy.status)} / ${mb(m.rssAfterFloodBy.status)} MB`],
        ["etcd peak RSS", `${mb(m.peakRssBy.etcd)} MB`],
        ...(r.memoryServeStatus
          ? [
              [
                "again with the router serving StatusService itself: its peak RSS / after the flood",
                `${mb(r.memoryServeStatus.peakRssBy.router)} / ${mb(r.memoryServeStatus.rssAfterFloodBy.router)} MB (${num(r.memoryServeStatus.flood.accepted)} accepted)`,
              ],
              ["the same router's V8 heap after the flood: reserved / in use / C++ objects", heapText(r.memoryServeStatus)],
            ]
          : []),
      ],
    });
  }
  return out;
}

/** The router's heap after the flood, as a table cell. */
function heapText(m: MemoryResult): string {
  const h = m.routerHeapAfterFlood;
  return h ? `${mb(h.heapTotal)} / ${mb(h.heapUsed)} / ${mb(h.external)} MB` : "- (not read)";
}

function admissionVerdict(m: MemoryResult): string {
  const p = m.flood.probe;
  const refused = Object.values(p.refused).reduce((a, b) => a + b, 0) + Object.values(m.flood.refused).reduce((a, b) => a + b, 0);
  const parts: string[] = [];
  if (refused > 0) parts.push(`yes: ${num(refused)} tasks refused with RESOURCE_EXHAUSTED`);
  if (p.unacked > 0) parts.push(`${num(p.unacked)} left unacked: the router stopped reading the stream (back-pressure)`);
  return parts.length > 0 ? parts.join("; ") : "no: every task was accepted";
}

/** The profile's top self times, for the terminal. */
function profileText(s: ProfileSummary, title: string, top = 10): string {
  const busy = s.totalMs - s.idleMs;
  const head =
    `${title}: ${num(s.totalMs / 1000, 1)} s of samples in the measured window, busy ${num((100 * busy) / Math.max(1, s.totalMs))}%, ` +
    `garbage collection ${num((100 * s.gcMs) / Math.max(1, s.totalMs))}%`;
  const rows = (list: ProfileSummary["byModule"]) => list.slice(0, top).map((x) => [x.name, num(x.selfMs), num(x.pct, 1)]);
  return [
    head,
    textTable(["module", "self ms", "%"], rows(s.byModule)),
    "",
    textTable(["function", "self ms", "%"], rows(s.byFunction)),
    "",
    textTable(["inclusive: this repository's functions, protobuf-es entry points", "ms", "%"], rows(s.inclusive ?? [])),
  ].join("\n");
}

/** The report for the terminal. */
export function renderText(r: BenchReport): string {
  const head =
    `dsat bench, ${r.mode} run, ${r.date}, dsat ${r.machine.commit}: ${r.machine.cores} cores (${r.machine.cpu}), ` +
    `Node ${r.machine.node}, etcd ${r.machine.etcd}, ${num(r.seconds)} s`;
  const parts = [head, ...tables(r).map((t) => `\n${t.title}\n${textTable(t.head, t.rows)}`)];
  if (r.profile) {
    parts.push(`\nProfile of a dsat run at 1000 in flight (${num(r.profile.measured.tasksPerSec)} tasks/s under the profiler)`);
    if (r.profile.router) parts.push(profileText(r.profile.router, "router"));
    if (r.profile.status) parts.push(`\n${profileText(r.profile.status, "status server")}`);
  }
  parts.push(...r.notes.map((n) => `\nnote: ${n}`));
  return parts.join("\n");
}

/** How the run was planned, in a sentence or two. */
function planText(r: BenchReport): string {
  const each = Object.entries(r.plans)
    .map(([k, p]) => `${k}: warm-up ${num(p.warmupTasks)} tasks or ${p.warmupMs / 1000} s, then ${p.windows} window(s) of ${num(p.windowTasks)} tasks or ${p.windowMs / 1000} s, ${p.payloadBytes}-byte payloads`)
    .join("; ");
  const rounds = r.rounds ?? 1;
  if (rounds < 2) return `Plans: ${each}.`;
  return (
    `Plans: ${rounds} rounds; in each, every scenario in turn on its own deployment, which stays up from round to round. ${each}; ` +
    `later rounds warm up for ${num(r.laterWarmup.warmupTasks)} tasks or ${r.laterWarmup.warmupMs / 1000} s. ` +
    "Medians are over the rounds' windows; a target's ratio per round follows its value."
  );
}

/** The report as Markdown (bench/results/latest.md, and the table of docs/benchmarks.md). */
export function renderMarkdown(r: BenchReport): string {
  const lines = [
    `# dsat bench: ${r.mode} run`,
    "",
    `${r.date} · dsat ${r.machine.commit} · ${r.machine.cores} cores (${r.machine.cpu}), ${num(r.machine.memoryGiB)} GiB · Node ${r.machine.node} · etcd ${r.machine.etcd} · Linux ${r.machine.kernel} · the run took ${num(r.seconds)} s`,
    "",
    planText(r),
  ];
  for (const t of tables(r)) lines.push("", `## ${t.title}`, "", mdTable(t.head, t.rows));
  if (r.profile) {
    lines.push("", "## Profile of a dsat run at 1000 in flight (node --cpu-prof)", "");
    lines.push(
      `During the profiled run: ${num(r.profile.measured.tasksPerSec)} tasks/s, p99 ${num(r.profile.measured.p99Ms, 1)} ms (the profiler's own cost included).`,
    );
    if (r.profile.router) lines.push("", profileMarkdown(r.profile.router, "router"));
    if (r.profile.status) lines.push("", profileMarkdown(r.profile.status, "status server"));
  }
  if (r.notes.length > 0) lines.push("", "## Notes", "", ...r.notes.map((n) => `- ${n}`));
  return `${lines.join("\n")}\n`;
}
