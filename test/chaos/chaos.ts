// The chaos run: thousands of tasks through a three-stage pipeline on real processes while
// workers are killed with -9 at random moments, one router and one status server are
// killed (with --serve-status: two routers, each with its status server, one replaced),
// and etcd is restarted once. It reports what the issue asks: tasks submitted,
// succeeded, lost (must be 0), duplicate terminal results (must be 0), and the peak memory
// of each process. `make chaos` runs it long; test/chaos.test.ts runs it short.
import { readFileSync } from "node:fs";
import { State, stateName } from "@dsat/sdk";
import { startMesh, type TestMesh } from "../helpers/mesh.ts";
import type { ServiceProcess } from "../helpers/processes.ts";
import { waitFor } from "../helpers/wait.ts";

/** Options of {@link runChaos}. */
export interface ChaosOptions {
  /** Tasks submitted. Default 2000. */
  tasks: number;
  /** Tasks in flight at most. Default 200. */
  window: number;
  /** Workers killed with -9 (each replaced by a new one). Default 6. */
  workerKills: number;
  /** Seed of the random choices. Default 1. */
  seed: number;
  /**
   * The routers serve StatusService themselves (--serve-status) and no status process runs:
   * router-1 is killed (its status server with it) and replaced by router-3, then router-2
   * is killed too, instead of a router and a status process. Default false.
   */
  serveStatus: boolean;
  /** A line of progress for a person. */
  log: (line: string) => void;
}

/** What a chaos run found. */
export interface ChaosReport {
  submitted: number;
  accepted: number;
  succeeded: number;
  failed: number;
  /** Accepted and never ended. Must be 0. */
  lost: number;
  /** Tasks with more than one terminal transition. Must be 0. */
  duplicates: number;
  /** Tasks whose output was not the one the pipeline computes. Must be 0. */
  wrongOutputs: number;
  events: string[];
  /** Peak resident memory of each process, in MiB. */
  peakRssMiB: Record<string, number>;
  seconds: number;
}

interface Trail {
  v: number;
  path: string[];
}

/** How long one run may take before it counts as not answered. */
const RUN_TIMEOUT_MS = 60_000;

/** A tiny deterministic random generator (mulberry32). */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function rssMiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

export async function runChaos(options: Partial<ChaosOptions> = {}): Promise<ChaosReport> {
  const total = options.tasks ?? 2000;
  const window = options.window ?? 200;
  const kills = options.workerKills ?? 6;
  const log = options.log ?? (() => {});
  const rand = random(options.seed ?? 1);
  const started = performance.now();
  const events: string[] = [];
  const note = (e: string) => {
    events.push(e);
    log(`  ! ${e}`);
  };
  const serveStatus = options.serveStatus ?? false;
  const mesh: TestMesh = await startMesh({
    leaseTtlSeconds: 2,
    routers: 2,
    status: serveStatus ? 0 : 2,
    ...(serveStatus ? { routerArgs: ["--serve-status"] } : {}),
  });
  const peak = new Map<string, number>();
  const names = new Map<ServiceProcess, string>();
  const name = (p: ServiceProcess, n: string) => names.set(p, n);
  mesh.status.forEach((p, i) => {
    name(p, `status-${i + 1}`);
  });
  mesh.routers.forEach((p, i) => {
    name(p, `router-${i + 1}`);
  });
  const sampler = setInterval(() => {
    for (const [p, n] of names) {
      if (p.child.exitCode !== null || p.child.signalCode !== null) continue;
      peak.set(n, Math.max(peak.get(n) ?? 0, rssMiB(p.pid)));
    }
  }, 200);
  try {
    await mesh.client.applyPipeline({ name: "chaos", stages: [{ name: "add" }, { name: "double" }, { name: "minus3" }] });
    const live: { stage: string; fn: string; p: ServiceProcess }[] = [];
    let workerNo = 0;
    const addWorker = async (stage: string, fn: string) => {
      const p = await mesh.addWorker(stage, fn, ["--concurrency", "8"]);
      name(p, `${stage}-${++workerNo}`);
      live.push({ stage, fn, p });
    };
    for (const [stage, fn] of [["add", "add"], ["double", "double"], ["minus3", "minus3"]] as const) {
      for (let i = 0; i < 3; i++) await addWorker(stage, fn);
    }
    await waitFor(async () => {
      const views = await mesh.client.listWorkers();
      return views.every((v) => v.workers.filter((w) => w.connected).length === 9);
    }, { timeoutMs: 20_000, what: "both routers to connect to the 9 workers" });

    // Chaos, driven by progress: each event fires once the given share of tasks has ended.
    const plan: { at: number; act: () => Promise<void> }[] = [];
    for (let k = 0; k < kills; k++) {
      plan.push({
        at: (k + 1) / (kills + 2),
        act: async () => {
          const i = Math.floor(rand() * live.length);
          const victim = live.splice(i, 1)[0];
          if (!victim) return;
          await victim.p.kill9();
          note(`kill -9 worker ${names.get(victim.p)} (stage ${victim.stage})`);
          await addWorker(victim.stage, victim.fn);
        },
      });
    }
    const [router1, router2] = mesh.routers;
    plan.push({
      at: 0.3,
      act: async () => {
        await router1?.kill9();
        if (!serveStatus) {
          note("kill -9 router-1");
          return;
        }
        note("kill -9 router-1 (and the status server it served)");
        // Before the next event (router-2's kill): with no router at all, nothing could be submitted.
        name(await mesh.addRouter(), "router-3");
        note("router-3 started");
      },
    });
    plan.push({
      at: 0.5,
      act: async () => {
        if (!serveStatus) {
          await mesh.status[0]?.kill9();
          note("kill -9 status-1");
          return;
        }
        await router2?.kill9();
        note("kill -9 router-2 (and the status server it served)");
      },
    });
    plan.push({
      at: 0.7,
      act: async () => {
        await mesh.etcd.restart();
        note("etcd stopped and started again");
      },
    });
    plan.sort((a, b) => a.at - b.at);

    let next = 0;
    let ended = 0;
    let succeeded = 0;
    let failed = 0;
    let rejected = 0;
    let wrongOutputs = 0;
    // One event at a time, in plan order: a step due while another runs waits for it.
    let chaos: Promise<void> = Promise.resolve();
    const fire = () => {
      while (plan[0] && ended / total >= plan[0].at) {
        const e = plan.shift() as (typeof plan)[number];
        chaos = chaos.then(() => e.act().catch((err: unknown) => note(`chaos step failed: ${String(err)}`)));
      }
    };
    let lastTenth = 0;
    const lane = async () => {
      while (next < total) {
        const i = next++;
        try {
          // Bounded: a run that never answers is reported (with its task id), not waited for forever.
          const r = await Promise.race([
            // Fresh ids (a new etcd each run): tasks may start before they are stored.
            mesh.client.run("chaos", { v: i, path: [] }, { taskId: `chaos-${i}`, freshId: true }),
            new Promise<never>((_, reject) =>
              setTimeout(() => reject(new Error(`no answer after ${RUN_TIMEOUT_MS} ms`)), RUN_TIMEOUT_MS).unref(),
            ),
          ]);
          if (r.state === State.SUCCEEDED) {
            succeeded++;
            if (r.output.json<Trail>().v !== (i + 1) * 2 - 3) wrongOutputs++;
          } else {
            failed++;
            note(`task chaos-${i} ended ${stateName(r.state)}: ${r.error?.message}`);
          }
        } catch (err) {
          if (++rejected <= 3) note(`task chaos-${i} was not answered: ${(err as Error).message}`);
        }
        ended++;
        if (Math.floor((ended / total) * 10) > lastTenth) {
          lastTenth = Math.floor((ended / total) * 10);
          log(`  ${ended}/${total} ended (${succeeded} succeeded, ${failed} failed, ${rejected} not answered)`);
        }
        fire();
      }
    };
    await Promise.all(Array.from({ length: window }, lane));
    await chaos;

    // Every task that exists in StatusService was accepted: each must have ended exactly once.
    let accepted = 0;
    let lost = 0;
    let duplicates = 0;
    for (let i = 0; i < total; i += 50) {
      const ids = Array.from({ length: Math.min(50, total - i) }, (_, k) => `chaos-${i + k}`);
      await Promise.all(
        ids.map(async (id) => {
          const s = await mesh.client.getState(id, { history: true }).catch(() => undefined);
          if (!s) return;
          accepted++;
          const terminals = s.history.filter((h) => h.stage === "" && h.to !== State.PENDING && h.to !== State.RUNNING);
          if (terminals.length === 0) {
            lost++;
            const last = s.history.slice(-4).map((h) => `${h.stage || "task"}#${h.attempt}:${stateName(h.from)}->${stateName(h.to)}@${h.memberId}`);
            note(`task ${id} never ended: ${stateName(s.state)}, router ${s.routerId}, stages ${s.stages.map((x) => `${x.name}:${stateName(x.state)}`).join(" ")}; last: ${last.join(", ")}`);
          }
          if (terminals.length > 1) duplicates++;
        }),
      );
    }
    return {
      submitted: total,
      accepted,
      succeeded,
      failed,
      lost,
      duplicates,
      wrongOutputs,
      events,
      peakRssMiB: Object.fromEntries([...peak].map(([k, v]) => [k, Math.round(v)])),
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    clearInterval(sampler);
    await mesh.close();
  }
}

/** The report as a person reads it. */
export function formatChaosReport(r: ChaosReport): string {
  const lines = [
    `tasks submitted   ${r.submitted}`,
    `tasks accepted    ${r.accepted}`,
    `tasks succeeded   ${r.succeeded}`,
    `tasks failed      ${r.failed}`,
    `tasks lost        ${r.lost}   (must be 0)`,
    `duplicate ends    ${r.duplicates}   (must be 0)`,
    `wrong outputs     ${r.wrongOutputs}   (must be 0)`,
    `time              ${r.seconds.toFixed(1)} s`,
    "events:",
    ...r.events.map((e) => `  ${e}`),
    "peak RSS (MiB):",
    ...Object.entries(r.peakRssMiB).map(([k, v]) => `  ${k.padEnd(12)} ${String(v).padStart(5)}`),
  ];
  return lines.join("\n");
}

// `node test/chaos/chaos.ts [--tasks N]`: the long run of `make chaos`.
if (import.meta.url === `file://${process.argv[1]}`) {
  const i = process.argv.indexOf("--tasks");
  const tasks = i > 0 ? Number(process.argv[i + 1]) : 10_000;
  const serveStatus = process.argv.includes("--serve-status");
  process.stdout.write(
    serveStatus
      ? `chaos: ${tasks} tasks, routers serving StatusService, workers killed with -9, two routers killed (one replaced), etcd restarted\n`
      : `chaos: ${tasks} tasks, workers killed with -9, a router and a status server killed, etcd restarted\n`,
  );
  const report = await runChaos({ tasks, window: 300, workerKills: 10, serveStatus, log: (l) => process.stdout.write(`${l}\n`) });
  process.stdout.write(`\n${formatChaosReport(report)}\n`);
  process.exit(report.lost === 0 && report.duplicates === 0 && report.wrongOutputs === 0 ? 0 : 1);
}
