// Sums the self time of a V8 .cpuprofile (node --cpu-prof) by function and by module, so
// that a person sees at a glance where a process spends its time.
//   node bench/profile-summary.ts FILE.cpuprofile [--top 25] [--from-us N --to-us N]
// (--from-us/--to-us: only the samples of that span of the monotonic clock, e.g. a measured
// window's monoStartUs/monoEndUs from bench/results/latest.json.)
import { readFileSync } from "node:fs";
import { relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { flags } from "./lib/child.ts";

/** The parts of a .cpuprofile that the summary reads. */
interface CpuProfile {
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    hitCount?: number;
    children?: number[];
  }[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

/** Time of one function or module (self time, or inclusive where said). */
export interface SelfTime {
  name: string;
  selfMs: number;
  /** Share of the sampled time, in percent (idle included). */
  pct: number;
}

/** What a profile shows. */
export interface ProfileSummary {
  file: string;
  /** Time between the profile's start and end, in milliseconds. */
  totalMs: number;
  /** Time the process was idle (waiting in the event loop), in milliseconds. */
  idleMs: number;
  /** Time in garbage collection, in milliseconds. */
  gcMs: number;
  byFunction: SelfTime[];
  byModule: SelfTime[];
  /**
   * Inclusive time (itself and all it calls) of this repository's functions and of the
   * libraries' entry points they call most: where the self time above comes from.
   */
  inclusive: SelfTime[];
}

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** A function's file for a person: package-relative in node_modules, repository-relative here. */
function fileOf(url: string): string {
  if (url.startsWith("node:")) return url;
  const path = url.startsWith("file://") ? fileURLToPath(url) : url;
  const nm = path.lastIndexOf("/node_modules/");
  if (nm >= 0) return path.slice(nm + "/node_modules/".length);
  return path.startsWith(ROOT) ? relative(ROOT, path) : path;
}

/** Where a function comes from: an npm package, a file of this repository, Node's internals, or V8. */
export function moduleOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith("(") ? functionName : "(native)";
  if (url.startsWith("node:")) return "node: (Node's own JS)";
  const path = url.startsWith("file://") ? fileURLToPath(url) : url;
  const nm = path.lastIndexOf("/node_modules/");
  if (nm >= 0) {
    const parts = path.slice(nm + "/node_modules/".length).split("/");
    return parts[0]?.startsWith("@") ? `${parts[0]}/${parts[1]}` : (parts[0] ?? path);
  }
  if (path.startsWith(ROOT)) return relative(ROOT, path);
  return path;
}

/** A span of the monotonic clock (V8's profile timestamps), in microseconds. */
export interface TimeRange {
  fromUs: number;
  toUs: number;
}

/**
 * Reads a .cpuprofile and sums self time by function (name + file:line) and by module;
 * only the samples inside `range` when one is given (the measured window, not the start).
 */
export function summarizeProfile(file: string, top = 25, range?: TimeRange): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const selfUs = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  let totalUs = profile.endTime - profile.startTime;
  if (samples.length > 0) {
    // A sample's time is the gap to the next sample (V8 records the gap before each one).
    let at = profile.startTime;
    let first = Number.NaN;
    let last = Number.NaN;
    for (let i = 0; i < samples.length; i++) {
      at += deltas[i] ?? 0;
      if (range && (at < range.fromUs || at > range.toUs)) continue;
      if (Number.isNaN(first)) first = at;
      last = at;
      const id = samples[i] as number;
      const us = deltas[i + 1] ?? 0;
      selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, us));
    }
    if (range) totalUs = Number.isNaN(first) ? 0 : last - first;
  } else {
    const totalHits = profile.nodes.reduce((a, n) => a + (n.hitCount ?? 0), 0) || 1;
    const us = profile.endTime - profile.startTime;
    for (const n of profile.nodes) selfUs.set(n.id, ((n.hitCount ?? 0) / totalHits) * us);
  }
  const byFn = new Map<string, number>();
  const byMod = new Map<string, number>();
  const label = (n: CpuProfile["nodes"][number]) => {
    const { functionName, url, lineNumber } = n.callFrame;
    return url ? `${functionName || "(anonymous)"} ${fileOf(url)}:${lineNumber + 1}` : functionName || "(anonymous)";
  };
  let sampledUs = 0;
  let idleUs = 0;
  let gcUs = 0;
  for (const n of profile.nodes) {
    const us = selfUs.get(n.id) ?? 0;
    if (us === 0) continue;
    sampledUs += us;
    const { functionName, url } = n.callFrame;
    if (functionName === "(idle)") idleUs += us;
    if (functionName === "(garbage collector)") gcUs += us;
    const mod = moduleOf(url, functionName);
    byFn.set(label(n), (byFn.get(label(n)) ?? 0) + us);
    byMod.set(mod, (byMod.get(mod) ?? 0) + us);
  }
  // Inclusive time: each sample counts once for every distinct function on its stack.
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const incl = new Map<string, number>();
  for (const [id, us] of selfUs) {
    if (us === 0) continue;
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = nodes.get(cur);
      if (!n) break;
      const url = n.callFrame.url;
      // This repository's functions, and the exported entry points of the libraries they use.
      const ours = url.startsWith("file://") && !url.includes("/node_modules/");
      const entry = /\/(clone|to-binary|from-binary|create)\.js$/.test(url) && ["clone", "toBinary", "fromBinary", "create"].includes(n.callFrame.functionName);
      if (!ours && !entry) continue;
      const key = label(n);
      if (seen.has(key)) continue;
      seen.add(key);
      incl.set(key, (incl.get(key) ?? 0) + us);
    }
  }
  const rank = (m: Map<string, number>): SelfTime[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, selfMs: us / 1000, pct: (100 * us) / Math.max(1, sampledUs) }));
  return {
    file,
    totalMs: totalUs / 1000,
    idleMs: idleUs / 1000,
    gcMs: gcUs / 1000,
    byFunction: rank(byFn),
    byModule: rank(byMod),
    inclusive: rank(incl),
  };
}

/** The summary as Markdown tables. */
export function profileMarkdown(s: ProfileSummary, title: string, top = 15): string {
  const busy = s.totalMs - s.idleMs;
  const lines = [
    `**${title}**: ${(s.totalMs / 1000).toFixed(1)} s of samples, ${(busy / 1000).toFixed(1)} s busy ` +
      `(${((100 * busy) / Math.max(1, s.totalMs)).toFixed(0)}%), of which garbage collection ${(s.gcMs / 1000).toFixed(2)} s.`,
    "",
    "| self time by module | ms | % of profile |",
    "| --- | ---: | ---: |",
    ...s.byModule.slice(0, top).map((r) => `| ${r.name} | ${r.selfMs.toFixed(0)} | ${r.pct.toFixed(1)} |`),
    "",
    "| self time by function | ms | % of profile |",
    "| --- | ---: | ---: |",
    ...s.byFunction.slice(0, top).map((r) => `| \`${r.name}\` | ${r.selfMs.toFixed(0)} | ${r.pct.toFixed(1)} |`),
    "",
    "| inclusive time: this repository's functions, protobuf-es entry points | ms | % of profile |",
    "| --- | ---: | ---: |",
    ...s.inclusive.slice(0, top).map((r) => `| \`${r.name}\` | ${r.selfMs.toFixed(0)} | ${r.pct.toFixed(1)} |`),
  ];
  return lines.join("\n");
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const file = process.argv[2];
  if (!file || file.startsWith("--")) {
    process.stderr.write("usage: node bench/profile-summary.ts FILE.cpuprofile [--top N] [--from-us N --to-us N]\n");
    process.exit(2);
  }
  const f = flags(process.argv.slice(3));
  const top = Number(f.top ?? 25);
  const range = f["from-us"] && f["to-us"] ? { fromUs: Number(f["from-us"]), toUs: Number(f["to-us"]) } : undefined;
  process.stdout.write(`${profileMarkdown(summarizeProfile(file, top, range), file, top)}\n`);
}
