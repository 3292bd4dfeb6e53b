import { join } from "node:path";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { State, stateName, type TaskState } from "@dsat/sdk";
import { loadPipelineFile } from "./pipeline-file.ts";
import { bar, ms, quantile, table } from "./render.ts";
import { startSatellite } from "./satellite.ts";
import { ROOT } from "./supervisor.ts";

/** Options of {@link runDemo}. */
export interface DemoOptions {
  /** Tasks to run. Default 1000. */
  tasks: number;
  /** Tasks in flight at once. Default 200. */
  window: number;
  /** etcd to use; default: start one under .dsat/etcd. */
  etcd: string | undefined;
}

/**
 * The demo: a local satellite with the sample three-stage pipeline, a thousand tasks with
 * live progress, a per-stage summary read back from StatusService, a few results, and
 * everything stopped again.
 */
export async function runDemo(options: Partial<DemoOptions> = {}): Promise<number> {
  const total = options.tasks ?? 1000;
  const window = options.window ?? 200;
  const say = (s: string) => process.stdout.write(`${s}\n`);
  say("dsat demo: a local satellite runs a three-stage pipeline (normalize -> count -> classify)\n");
  const file = loadPipelineFile(join(ROOT, "examples/demo/pipeline.yaml"));
  const sat = await startSatellite({ etcd: options.etcd, files: [file], log: (l) => say(`  ${l}`) });
  let code = 0;
  try {
    const client = sat.client;
    // Wait until the router has connected to every worker (each says hello first).
    const expected = file.workers.reduce((n, w) => n + w.replicas, 0);
    for (let i = 0; i < 200; i++) {
      const views = await client.listWorkers();
      if (views.flatMap((v) => v.workers).filter((w) => w.connected).length >= expected) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    say(`\nrunning ${total} tasks, ${window} in flight at most\n`);
    const texts = ["The quick brown fox", "  jumps over   the LAZY dog  ", "dsat moves tasks between satellites", "a", "Pipelines of work across many processes and machines"];
    const ids: string[] = [];
    const results: { taskId: string; state: State; output: string; error: string }[] = [];
    let next = 0;
    let ok = 0;
    let failed = 0;
    const started = performance.now();
    const tty = process.stdout.isTTY;
    let lastPrinted = -1;
    const progress = (final = false) => {
      const done = ok + failed;
      const rate = done / ((performance.now() - started) / 1000);
      const line = `${bar(done, total)}  ${rate.toFixed(0).padStart(5)} tasks/s  ok ${ok}  failed ${failed}`;
      if (tty) process.stdout.write(`\r${line}${final ? "\n" : ""}`);
      else if (final || Math.floor((done / total) * 10) > lastPrinted) {
        lastPrinted = Math.floor((done / total) * 10);
        say(line);
      }
    };
    const ticker = setInterval(() => progress(), 100);
    const lane = async () => {
      while (next < total) {
        const i = next++;
        const r = await client.run("demo", { id: i, text: texts[i % texts.length] });
        ids.push(r.taskId);
        if (r.ok) ok++;
        else failed++;
        if (results.length < 5 || !r.ok) {
          results.push({ taskId: r.taskId, state: r.state, output: r.output.text(), error: r.error?.message ?? "" });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(window, total) }, lane));
    clearInterval(ticker);
    progress(true);
    const seconds = (performance.now() - started) / 1000;
    say(`\n${ok + failed} tasks in ${seconds.toFixed(2)} s: ${((ok + failed) / seconds).toFixed(0)} tasks/s end to end, every transition stored in etcd\n`);

    // The per-stage summary, from StatusService: what a person would ask of it.
    const states: TaskState[] = [];
    let pageToken = "";
    do {
      const page = await client.list({ pipeline: "demo", pageSize: 1000, pageToken });
      states.push(...page.tasks);
      pageToken = page.nextPageToken;
    } while (pageToken);
    const mine = new Set(ids);
    const rows = file.pipeline.stages.map((stage) => {
      const runs = states.filter((s) => mine.has(s.task?.id ?? "")).flatMap((s) => s.stages.filter((x) => x.name === stage.name));
      const durations = runs
        .filter((x) => x.startedAt && x.endedAt)
        .map((x) => timestampDate(x.endedAt as never).getTime() - timestampDate(x.startedAt as never).getTime());
      return [
        stage.name,
        runs.length,
        runs.filter((x) => x.state === State.SUCCEEDED).length,
        runs.filter((x) => x.state !== State.SUCCEEDED).length,
        runs.filter((x) => x.attempt > 1).length,
        new Set(runs.map((x) => x.workerId)).size,
        ms(quantile(durations, 0.5)),
        ms(quantile(durations, 0.99)),
      ];
    });
    say(table(["STAGE", "TASKS", "SUCCEEDED", "FAILED", "RETRIED", "WORKERS", "P50", "P99"], rows));
    say("\na few results:");
    for (const r of results.slice(0, 5)) say(`  ${r.taskId}  ${stateName(r.state)}  ${r.output || r.error}`);
    if (failed > 0) code = 1;
  } finally {
    say("\nstopping the satellite…");
    await sat.stop();
  }
  say(code === 0 ? "done: every task succeeded" : "done, with failed tasks");
  return code;
}
