import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createClient, type DsatClient } from "@dsat/sdk";
import { freePort, LocalEtcd } from "./local-etcd.ts";
import type { PipelineFile } from "./pipeline-file.ts";
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
}

/** A local satellite: etcd (maybe), a status server, routers and the workers of some pipelines. */
export interface Satellite {
  readonly etcd: string;
  readonly client: DsatClient;
  readonly supervisor: Supervisor;
  readonly children: readonly Child[];
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
  const stop = async () => {
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
    const status = await supervisor.start("status", "services/status/main.ts", common);
    log(`status    ${status.ready.address}  ${status.ready.id}`);
    for (let i = 0; i < (options.routers ?? 1); i++) {
      const r = await supervisor.start(`router-${i + 1}`, "services/router/main.ts", common);
      log(`router    ${r.ready.address}  ${r.ready.id}`);
    }
    const client = createClient({ etcd });
    for (const f of options.files ?? []) {
      const { pipeline, changed } = await client.applyPipeline(f.pipeline);
      log(`pipeline  ${pipeline.name} v${pipeline.version}${changed ? "" : " (unchanged)"}: ${pipeline.stages.map((s) => s.name).join(" -> ")}`);
      const starts: Promise<Child>[] = [];
      for (const w of f.workers) {
        if (!existsSync(w.module)) throw new Error(`worker module ${w.module} (stage ${w.stage}) does not exist`);
        for (let i = 0; i < w.replicas; i++) {
          starts.push(
            supervisor.start(`${w.stage}-${i + 1}`, join(ROOT, "services/worker-host/main.ts"), [
              ...common,
              "--stage", w.stage,
              "--module", w.module,
              "--export", w.export,
              "--concurrency", String(w.concurrency),
            ]),
          );
        }
      }
      const started = await Promise.all(starts);
      for (const w of f.workers) {
        log(`workers   ${w.stage}: ${started.filter((c) => c.name.startsWith(`${w.stage}-`)).length} × concurrency ${w.concurrency}`);
      }
    }
    return {
      etcd,
      client,
      supervisor,
      children: supervisor.children,
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
