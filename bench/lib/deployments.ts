// The three systems under test, each as separate processes on loopback.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@dsat/sdk";
import { freePort, LocalEtcd } from "../../services/cli/local-etcd.ts";
import { type BenchProcess, COMPILED_NODE_FLAGS, compiledEntry, SERVICE_NODE_FLAGS, startService, wrap } from "./processes.ts";

/** A system started for one scenario: its processes, and the driver that loads it. */
export interface Deployment {
  readonly system: "raw" | "moleculer" | "dsat" | "dsat-traced" | "dsat-status-process";
  /** Every process of the system (not the driver), in start order. */
  readonly processes: BenchProcess[];
  /** The driver's entry, arguments (the bench adds --plan) and Node flags (default NODE_FLAGS). */
  readonly driver: { entry: string; args: string[]; nodeFlags?: readonly string[] };
  /** etcd's /metrics, when the system has an etcd. */
  readonly etcdMetricsUrl?: string;
  /** Stops every process (and removes what it wrote). */
  stop(): Promise<void>;
}

/** Stops processes, last started first, each with SIGINT then SIGKILL. */
async function stopAll(processes: readonly BenchProcess[], graceMs = 10_000): Promise<void> {
  for (const p of [...processes].reverse()) await p.stop("SIGINT", graceMs);
}

/** Runs `start`; when it throws, stops what was started so far. */
async function guarded<T>(started: BenchProcess[], start: () => Promise<T>, cleanup: () => Promise<void> = async () => {}): Promise<T> {
  try {
    return await start();
  } catch (err) {
    await stopAll(started, 2_000);
    await cleanup();
    throw err;
  }
}

/** The raw baseline: three grpc-js workers and a grpc-js router, each a process. */
export async function startRaw(stages = 3): Promise<Deployment> {
  const processes: BenchProcess[] = [];
  return guarded(processes, async () => {
    const workers = await Promise.all(
      Array.from({ length: stages }, (_, i) => startService(`w${i + 1}`, "bench/raw/raw-worker.ts", [])),
    );
    processes.push(...workers);
    const router = await startService("router", "bench/raw/raw-router.ts", ["--workers", workers.map((w) => w.address).join(",")]);
    processes.push(router);
    return {
      system: "raw",
      processes,
      driver: { entry: "bench/raw/raw-driver.ts", args: ["--router", router.address] },
      stop: () => stopAll(processes),
    };
  });
}

/** Moleculer 0.14: three services, each in its own broker process, calling each other over TCP. */
export async function startMoleculer(stages = 3): Promise<Deployment> {
  const processes: BenchProcess[] = [];
  return guarded(processes, async () => {
    const names = [...Array.from({ length: stages }, (_, i) => `stage${i + 1}`), "driver"];
    const nodes: string[] = [];
    for (const n of names) nodes.push(`${n}@${await freePort()}`);
    const all = nodes.join(",");
    const started = await Promise.all(
      Array.from({ length: stages }, (_, i) =>
        startService(`stage${i + 1}`, "bench/moleculer/moleculer-stage.ts", [
          "--stage", String(i + 1), "--of", String(stages), "--node", `stage${i + 1}`, "--nodes", all,
        ]),
      ),
    );
    processes.push(...started);
    return {
      system: "moleculer",
      processes,
      driver: { entry: "bench/moleculer/moleculer-driver.ts", args: ["--node", "driver", "--nodes", all, "--stages", String(stages)] },
      stop: () => stopAll(processes),
    };
  });
}

/** One dsat worker process to start. */
export interface DsatWorkerSpec {
  stage: string;
  /** Export of bench/dsat/stages.ts. */
  export: string;
  concurrency: number;
  env?: Record<string, string>;
}

/** Options of {@link startDsat}. */
export interface DsatDeploymentOptions {
  pipeline: string;
  workers: DsatWorkerSpec[];
  /** Node flags of the router process (--cpu-prof…). */
  routerNodeFlags: string[];
  /** Node flags of the status process. Default none. */
  statusNodeFlags?: string[];
  /** Extra router flags (--max-tasks…). */
  routerArgs: string[];
  /** Environment of every dsat process (OTEL_* for the traced run). Default none. */
  env?: Record<string, string>;
  /**
   * The router serves StatusService itself (--serve-status) and no status process runs.
   * Default false: a status process of its own.
   */
  serveStatus?: boolean;
  /** How the report names it. Default "dsat". */
  system?: "dsat" | "dsat-traced" | "dsat-status-process";
}

/**
 * dsat: a LocalEtcd, one status server (a process, or the router itself with serveStatus),
 * one router, one worker per stage, each a process started through the real entries; the
 * pipeline (the stages in a chain) applied through the status server.
 */
export async function startDsat(options: DsatDeploymentOptions): Promise<Deployment> {
  const processes: BenchProcess[] = [];
  const dataDir = mkdtempSync(join(tmpdir(), "dsat-bench-etcd-"));
  const etcd = new LocalEtcd({ dataDir });
  const cleanup = async () => {
    await etcd.stop();
    rmSync(dataDir, { recursive: true, force: true });
  };
  return guarded(
    processes,
    async () => {
      await etcd.start();
      processes.push(wrap("etcd", etcd.process as NonNullable<typeof etcd.process>, etcd.endpoint));
      const common = ["--etcd", etcd.endpoint, "--lease-ttl", "5"];
      const routerArgs = [...common, ...(options.serveStatus ? ["--serve-status"] : []), ...options.routerArgs];
      const [status, router] = await Promise.all([
        options.serveStatus
          ? undefined
          : startService("status", compiledEntry("status"), common, {
              baseFlags: SERVICE_NODE_FLAGS,
              nodeFlags: options.statusNodeFlags ?? [],
              env: options.env ?? {},
            }),
        startService("router", compiledEntry("router"), routerArgs, {
          baseFlags: SERVICE_NODE_FLAGS,
          nodeFlags: options.routerNodeFlags,
          env: options.env ?? {},
        }),
      ]);
      if (status) processes.push(status);
      processes.push(router);
      const statusAddress = status?.address ?? router.address;
      const client = createClient({ routers: [router.address], status: [statusAddress] });
      try {
        await client.applyPipeline({ name: options.pipeline, stages: options.workers.map((w) => ({ name: w.stage })) });
        const workers = await Promise.all(
          options.workers.map((w, i) =>
            startService(
              `w${i + 1}`,
              compiledEntry("worker-host"),
              [...common, "--stage", w.stage, "--module", "bench/dsat/stages.ts", "--export", w.export, "--concurrency", String(w.concurrency)],
              { baseFlags: SERVICE_NODE_FLAGS, env: { ...options.env, ...w.env } },
            ),
          ),
        );
        processes.push(...workers);
        // The router dials every worker it sees in etcd; it is ready once each said hello.
        const deadline = Date.now() + 20_000;
        for (;;) {
          const [view] = await client.listWorkers();
          if ((view?.workers ?? []).filter((w) => w.connected).length >= options.workers.length) break;
          if (Date.now() > deadline) throw new Error("the router did not connect to every worker within 20 s");
          await new Promise((r) => setTimeout(r, 50));
        }
      } finally {
        await client.close();
      }
      return {
        system: options.system ?? "dsat",
        processes,
        driver: {
          entry: "bench/dsat/dsat-driver.ts",
          args: ["--router", router.address, "--status", statusAddress, "--pipeline", options.pipeline],
          nodeFlags: COMPILED_NODE_FLAGS,
        },
        etcdMetricsUrl: `http://${etcd.endpoint}/metrics`,
        stop: async () => {
          await stopAll(processes.filter((p) => p.name !== "etcd"));
          await cleanup();
        },
      } satisfies Deployment;
    },
    cleanup,
  );
}

/** The three-stage echo pipeline of the throughput and latency scenarios. */
export function dsatEchoPipeline(concurrency: number): Pick<DsatDeploymentOptions, "pipeline" | "workers"> {
  return {
    pipeline: "bench",
    workers: ["s1", "s2", "s3"].map((stage) => ({ stage, export: "echo", concurrency })),
  };
}
