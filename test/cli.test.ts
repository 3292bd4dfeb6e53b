import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DSAT_VERSION } from "@dsat/sdk";
import test from "ava";
import { startEtcd, type TestEtcd } from "./helpers/etcd.ts";
import { ROOT } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

const DSAT = join(ROOT, "services/cli/bin/dsat");
let etcd: TestEtcd;
let up: ChildProcess | undefined;
let upOut = "";

/** Runs `dsat ARGS` to its end. */
function dsat(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(DSAT, args, { cwd: ROOT, encoding: "utf8", timeout: 60_000, env: { ...process.env, DSAT_ETCD: "" } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test.before(async () => {
  etcd = await startEtcd();
});

test.after.always(async () => {
  if (up && up.exitCode === null) up.kill("SIGKILL");
  await etcd?.close();
});

test.serial("a clear error when etcd cannot be reached", (t) => {
  const r = dsat("members", "--etcd", "127.0.0.1:1");
  t.is(r.code, 1);
  t.regex(r.err, /dsat members: cannot reach etcd at 127\.0\.0\.1:1 .*dsat up.*--etcd/);
});

test.serial("dsat up runs a satellite (its router serving StatusService) that the other commands drive; Ctrl-C stops it all", async (t) => {
  up = spawn(DSAT, ["up", "examples/demo/pipeline.yaml", "--etcd", etcd.endpoint], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  up.stdout?.on("data", (d: Buffer) => (upOut += d.toString()));
  up.stderr?.on("data", (d: Buffer) => (upOut += d.toString()));
  await waitFor(() => upOut.includes("the mesh is up"), { timeoutMs: 60_000, what: `dsat up to be ready: ${upOut}` });

  await waitFor(() => {
    const m = dsat("members", "--etcd", etcd.endpoint);
    // 1 router (a status member too) + 7 workers, each with its load as the router sees it.
    return m.code === 0 && m.out.split("\n").filter((l) => /^worker\s/.test(l) && /\d+\/32/.test(l)).length === 7 ? m : undefined;
  }, { timeoutMs: 20_000, what: "dsat members to list 7 connected workers" });
  const members = dsat("members", "--etcd", etcd.endpoint);
  t.regex(members.out, /^KIND\s+ID\s+ADDRESS\s+STAGE\s+VERSION\s+LOAD/m);
  t.regex(members.out, /^router\s/m);
  t.regex(members.out, /^status\s/m);
  t.regex(upOut, /^router\s+127\.0\.0\.1:\d+\s+\S+\s+\(serves StatusService too\)$/m);
  t.notRegex(upOut, /^status\s/m, "no status process");
  const addressOf = (kind: string) => [...members.out.matchAll(new RegExp(`^${kind}\\s+(\\S+)\\s+(\\S+)`, "gm"))].map((m) => `${m[1]} ${m[2]}`);
  t.deepEqual(addressOf("status"), addressOf("router"), "one status member: the router, at its address");
  t.regex(members.out, new RegExp(`^worker\\s+\\S+\\s+127\\.0\\.0\\.1:\\d+\\s+classify\\s+${DSAT_VERSION.replaceAll(".", "\\.")}\\s+\\d+/32`, "m"));

  const top = dsat("top", "--once", "--etcd", etcd.endpoint);
  t.is(top.code, 0, top.err);
  t.regex(top.out, /^STAGE\s+WORKERS\s+IN-FLIGHT\/CAPACITY\s+QUEUED\s+AVG RUN/m);
  t.regex(top.out, /^classify\s+\d+\s+\[[█░]+\]\s+\d+\/\d+/m);
  t.regex(top.out, /^router\s/m);

  const list = dsat("pipeline", "list", "--etcd", etcd.endpoint);
  t.regex(list.out, /demo\s+1\s+normalize -> count -> classify/);

  const waited = dsat("submit", "demo", '{"id":3,"text":"Hello   World"}', "--wait", "--etcd", etcd.endpoint);
  t.is(waited.code, 0, waited.err);
  t.regex(waited.out, /SUCCEEDED\n\{"id":3,"words":2,"letters":10,"label":"short"\}/);

  const submitted = dsat("submit", "demo", '{"id":4,"text":"x"}', "--id", "cli-task-4", "--etcd", etcd.endpoint);
  t.is(submitted.out.trim(), "cli-task-4");
  const watched = dsat("watch", "cli-task-4", "--etcd", etcd.endpoint);
  t.is(watched.code, 0, watched.err);
  t.regex(watched.out, /classify\s+1\s+RUNNING → SUCCEEDED/);
  t.regex(watched.out, /\(task\)\s+RUNNING → SUCCEEDED/);
  const state = dsat("state", "cli-task-4", "--etcd", etcd.endpoint);
  t.regex(state.out, /state\s+SUCCEEDED/);
  t.regex(state.out, /^count\s+SUCCEEDED\s+1\s/m);

  const dir = mkdtempSync(join(tmpdir(), "dsat-cli-"));
  const bad = join(dir, "bad.yaml");
  writeFileSync(bad, "name: bad\nstages: [a, b]\nedges:\n  - {from: a, to: b}\n  - {from: b, to: a}\n");
  const refused = dsat("pipeline", "apply", bad, "--etcd", etcd.endpoint);
  t.is(refused.code, 1);
  t.regex(refused.err, /cycle: a -> b -> a|cannot be reached/);

  const unknown = dsat("state", "no-such-task", "--etcd", etcd.endpoint);
  t.is(unknown.code, 1);
  t.regex(unknown.err, /task "no-such-task" not found/);

  const proc = up;
  const exited = new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
  proc.kill("SIGINT");
  t.is(await exited, 0);
  t.regex(upOut, /stopping/);
  await waitFor(async () => {
    const m = dsat("members", "--etcd", etcd.endpoint);
    return m.code === 0 && !/^(worker|router|status)\s/m.test(m.out);
  }, { timeoutMs: 15_000, what: "every member to leave etcd after Ctrl-C" });
});

test.serial("dsat up --status-process: StatusService in a process of its own; the commands work alike", async (t) => {
  let out = "";
  const proc = spawn(DSAT, ["up", "examples/demo/pipeline.yaml", "--status-process", "--etcd", etcd.endpoint], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  t.teardown(() => {
    if (proc.exitCode === null) proc.kill("SIGKILL");
  });
  proc.stdout?.on("data", (d: Buffer) => (out += d.toString()));
  proc.stderr?.on("data", (d: Buffer) => (out += d.toString()));
  await waitFor(() => out.includes("the mesh is up"), { timeoutMs: 60_000, what: `dsat up --status-process to be ready: ${out}` });
  t.regex(out, /^status\s+127\.0\.0\.1:\d+\s+\S+$/m, "a status process");
  t.notRegex(out, /serves StatusService too/);

  const members = dsat("members", "--etcd", etcd.endpoint);
  t.is(members.code, 0, members.err);
  const addressOf = (kind: string) => [...members.out.matchAll(new RegExp(`^${kind}\\s+(\\S+)\\s+(\\S+)`, "gm"))].map((m) => `${m[1]} ${m[2]}`);
  t.notDeepEqual(addressOf("status"), addressOf("router"), "the status member is its own process");
  t.is(addressOf("status").length, 1);

  const waited = dsat("submit", "demo", '{"id":5,"text":"Served by the router"}', "--wait", "--etcd", etcd.endpoint);
  t.is(waited.code, 0, waited.err);
  t.regex(waited.out, /SUCCEEDED\n\{"id":5,"words":4,"letters":17,"label":"short"\}/);

  const exited = new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
  proc.kill("SIGINT");
  t.is(await exited, 0);
  await waitFor(async () => {
    const m = dsat("members", "--etcd", etcd.endpoint);
    return m.code === 0 && !/^(worker|router|status)\s/m.test(m.out);
  }, { timeoutMs: 15_000, what: "every member to leave etcd after Ctrl-C" });
});

test.serial("dsat demo runs tasks through the sample pipeline and prints a per-stage summary", (t) => {
  const r = dsat("demo", "--tasks", "60", "--window", "20", "--etcd", etcd.endpoint);
  t.is(r.code, 0, r.err);
  t.regex(r.out, /60\/60 100%/);
  t.regex(r.out, /^normalize\s+60\s+60\s+0\s/m);
  t.regex(r.out, /^classify\s+60\s+60\s+0\s+\d+\s+3\s/m);
  t.regex(r.out, /done: every task succeeded/);
});
