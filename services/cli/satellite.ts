import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { clientTo, createClient, type DsatClient, MemberKind, StatusService, type TopologyResponse } from "@dsat/sdk";
import { freePort, LocalEtcd } from "./local-etcd.ts";
import type { PipelineFile, WorkerSpec } from "./pipeline-file.ts";
import { PoolScaler, type PoolScalerOptions } from "./pool-scaler.ts";
import { type Child, ROOT, Supervisor } from "./supervisor.ts";

/** Options of {@link startSatellite}. */
export interface SatelliteOptions {
  /** etcd to use; when absent, an etcd child process is started with its data under dataDir. */
  etcd: string | undefined;
  /** Where the local etcd keeps its data. Default ".dsat/etcd". */
  dataDir: string;
  /** Pipeline files to apply, with their workers. */
  files: PipelineFile[];
  /** Routers to start. Default 1. */
  routers: number;
  /** Lease TTL of every member, in seconds. Default 5. */
  leaseTtlSeconds: number;
  /** Lines for a person. */
  log: (line: string) => void;
  /** How worker pools follow the load (min and max come from each pipeline file). Default: the PoolScaler defaults. */
  poolScaling: Partial<Omit<PoolScalerOptions, "min" | "max">>;
  /** How often the pools look at the load (Topology), in milliseconds. Default 1000. */
  sampleMs: number;
  /**
   * The routers serve StatusService themselves (--serve-status) and no status process runs.
   * Default true: one process fewer, and faster (`docs/operations.md`, *Status servers*).
   */
  serveStatus: boolean;
}

/** A local satellite: etcd (maybe), a status server (or routers that serve it), routers and the workers of some pipelines. */
export interface Satellite {
  readonly etcd: string;
  readonly client: DsatClient;
  readonly supervisor: Supervisor;
  readonly children: readonly Child[];
  /** Worker processes of a stage now (started or starting, not yet stopping). */
  poolSize(stage: string): number;
  stop(): Promise<void>;
}

/** Where `dsat up` notes its etcd, so that other dsat commands in this folder find it. */
export const UP_FILE = ".dsat/up.json";

/** Starts a local satellite. On failure everything started so far is stopped again. */
export async function startSatellite(options: Partial<SatelliteOptions> = {}): Promise<Satellite> {
  const log = options.log ?? (() => {});
  const supervisor = new Supervisor({ log });
  let local: LocalEtcd | undefined;
  let etcd = options.etcd;
  const pools = new Map<string, WorkerPool>();
  let sampler: NodeJS.Timeout | undefined;
  let stopping = false;
  const stop = async () => {
    stopping = true;
    clearInterval(sampler);
    await Promise.allSettled([...pools.values()].flatMap((p) => [...p.pending]));
    await supervisor.stop();
    await local?.stop();
    if (!options.etcd) rmSync(UP_FILE, { force: true });
  };
  try {
    if (!etcd) {
      const dataDir = options.dataDir ?? join(".dsat", "etcd");
      mkdirSync(dataDir, { recursive: true });
      const clientPort = (await isPortFree(2379)) ? 2379 : await freePort();
      local = new LocalEtcd({ dataDir, clientPort });
      await local.start();
      etcd = local.endpoint;
      log(`etcd      ${etcd}  (started here, data in ${dataDir})`);
      mkdirSync(".dsat", { recursive: true });
      writeFileSync(UP_FILE, JSON.stringify({ etcd, pid: process.pid }));
    }
    const ttl = String(options.leaseTtlSeconds ?? 5);
    const common = ["--etcd", etcd, "--lease-ttl", ttl];
    const serveStatus = options.serveStatus ?? true;
    if (!serveStatus) {
      const status = await supervisor.start("status", "services/status/main.ts", common);
      log(`status    ${status.ready.address}  ${status.ready.id}`);
    }
    for (let i = 0; i < (options.routers ?? 1); i++) {
      const r = await supervisor.start(`router-${i + 1}`, "services/router/main.ts", [
        ...common,
        ...(serveStatus ? ["--serve-status"] : []),
      ]);
      log(`router    ${r.ready.address}  ${r.ready.id}${serveStatus ? "  (serves StatusService too)" : ""}`);
    }
    const client = createClient({ etcd });
    for (const f of options.files ?? []) {
      const { pipeline, changed } = await client.applyPipeline(f.pipeline);
      log(`pipeline  ${pipeline.name} v${pipeline.version}${changed ? "" : " (unchanged)"}: ${pipeline.stages.map((s) => s.name).join(" -> ")}`);
      const starts: Promise<unknown>[] = [];
      for (const w of f.workers) {
        if (!existsSync(w.module)) throw new Error(`worker module ${w.module} (stage ${w.stage}) does not exist`);
        const pool = new WorkerPool(w, supervisor, [...common], { ...options.poolScaling, min: w.min, max: w.max });
        pools.set(w.stage, pool);
        for (let i = 0; i < w.replicas; i++) starts.push(pool.grow());
      }
      await Promise.all(starts);
      for (const w of f.workers) {
        const range = w.min === w.max ? "" : `, ${w.min}..${w.max} with the load`;
        log(`workers   ${w.stage}: ${pools.get(w.stage)?.size ?? 0} × concurrency ${w.concurrency}${range}`);
      }
    }
    const scaling = [...pools.values()].filter((p) => p.spec.min < p.spec.max);
    if (scaling.length > 0) {
      let sampling = false;
      sampler = setInterval(() => {
        if (sampling) return;
        sampling = true;
        readTopology(client, 1_000)
          .then((t) => {
            // A sample that comes back after stop began must not start a worker.
            if (stopping) return;
            const now = Date.now();
            for (const pool of scaling) {
              const l = t.stages.find((x) => x.stage === pool.spec.stage);
              const sample = { atMs: now, inFlight: l?.inFlight ?? 0, capacity: l?.capacity ?? 0, queued: l?.queued ?? 0 };
              const before = pool.size;
              const d = pool.scaler.decide(sample, before);
              if (d === "hold") continue;
              log(`pool      ${pool.spec.stage}: ${before} -> ${d === "up" ? before + 1 : before - 1} workers (${sample.inFlight}/${sample.capacity} in flight, ${sample.queued} queued)`);
              void (d === "up" ? pool.grow() : pool.shrink()).catch((err: unknown) => log(`pool      ${pool.spec.stage}: ${(err as Error).message}`));
            }
          })
          .catch(() => {
            // No status server answered this time: the next sample tries again.
          })
          .finally(() => {
            sampling = false;
          });
      }, options.sampleMs ?? 1_000);
      sampler.unref();
    }
    return {
      etcd,
      client,
      supervisor,
      children: supervisor.children,
      poolSize: (stage) => pools.get(stage)?.size ?? 0,
      stop: async () => {
        await client.close();
        await stop();
      },
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * WorkerPool holds the worker processes of one stage that a satellite runs, and grows or
 * shrinks by one process at a time as its PoolScaler decides.
 */
class WorkerPool {
  readonly spec: WorkerSpec;
  readonly scaler: PoolScaler;
  /** Starts and stops under way. */
  readonly pending = new Set<Promise<unknown>>();
  readonly #supervisor: Supervisor;
  readonly #common: string[];
  readonly #children: Child[] = [];
  #starting = 0;
  #next = 1;

  constructor(spec: WorkerSpec, supervisor: Supervisor, common: string[], scaling: Partial<PoolScalerOptions>) {
    this.spec = spec;
    this.scaler = new PoolScaler(scaling);
    this.#supervisor = supervisor;
    this.#common = common;
  }

  /** Processes running or starting. */
  get size(): number {
    return this.#children.length + this.#starting;
  }

  /** Starts one more worker process; resolves once it is ready. */
  grow(): Promise<Child> {
    const w = this.spec;
    this.#starting++;
    const p = this.#supervisor
      .start(`${w.stage}-${this.#next++}`, join(ROOT, "services/worker-host/main.ts"), [
        ...this.#common,
        "--stage", w.stage,
        "--module", w.module,
        "--export", w.export,
        "--concurrency", String(w.concurrency),
      ])
      .then((c) => {
        this.#children.push(c);
        return c;
      })
      .finally(() => {
        this.#starting--;
        this.pending.delete(p);
      });
    this.pending.add(p);
    return p;
  }

  /** Stops the newest worker process with SIGTERM: it drains what it runs, then exits. */
  shrink(): Promise<void> {
    const c = this.#children.pop();
    if (!c) return Promise.resolve();
    const p = this.#supervisor.stopChild(c).finally(() => this.pending.delete(p));
    this.pending.add(p);
    return p;
  }
}

/** The status servers registered in etcd, by address; UNAVAILABLE-like Error when none is up. */
export async function statusAddresses(client: DsatClient): Promise<string[]> {
  const list = (await client.members()).filter((m) => m.kind === MemberKind.STATUS).map((m) => m.address);
  if (list.length === 0) throw new Error("no status server is registered in etcd");
  return list;
}

/** Asks a status server for the mesh's topology (the first that answers). */
export async function readTopology(client: DsatClient, timeoutMs = 3_000): Promise<TopologyResponse> {
  let last: unknown;
  for (const address of await statusAddresses(client)) {
    try {
      return await clientTo(StatusService, address).topology({}, { timeoutMs });
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

function isPortFree(port: number): Promise<boolean> {
  return import("node:net").then(
    ({ createServer }) =>
      new Promise<boolean>((resolve) => {
        const s = createServer();
        s.once("error", () => resolve(false));
        s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
      }),
  );
}
