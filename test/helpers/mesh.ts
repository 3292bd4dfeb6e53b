import { createClient, type DsatClient } from "@dsat/sdk";
import { startEtcd, type TestEtcd } from "./etcd.ts";
import { freePort, type ServiceProcess, startService } from "./processes.ts";
import { waitFor } from "./wait.ts";

/** A mesh of real processes on loopback against a real etcd. */
export interface TestMesh {
  readonly etcd: TestEtcd;
  readonly status: ServiceProcess[];
  readonly routers: ServiceProcess[];
  readonly workers: ServiceProcess[];
  readonly client: DsatClient;
  /** Starts one more worker process for a stage, running an export of a fixture module (default test/fixtures/stages.ts). */
  addWorker(stage: string, exportName: string, extra?: string[], module?: string): Promise<ServiceProcess>;
  /** Starts one more router process, with the mesh's router flags (added to `routers`). */
  addRouter(): Promise<ServiceProcess>;
  close(): Promise<void>;
}

/** Options of {@link startMesh}. */
export interface MeshOptions {
  /** Status processes. Default 1. */
  status?: number;
  /** Router processes. Default 1. */
  routers?: number;
  /** Extra router flags. */
  routerArgs?: string[];
  /** Extra status server flags. */
  statusArgs?: string[];
  /** Lease TTL of every member, in seconds. Default 2. */
  leaseTtlSeconds?: number;
  /** Environment of every process (added to the test's; undefined removes a variable). */
  env?: Record<string, string | undefined>;
  /** Every process serves Prometheus metrics on a free port (see ServiceProcess.metrics). Default false. */
  metrics?: boolean;
  /** More etcd flags (a small --quota-backend-bytes, say). Default none. */
  etcdArgs?: string[];
}

/** Starts etcd, status and router processes, and a client that finds them in etcd. */
export async function startMesh(options: MeshOptions = {}): Promise<TestMesh> {
  const etcd = await startEtcd(options.etcdArgs ?? []);
  const ttl = String(options.leaseTtlSeconds ?? 2);
  const common = ["--etcd", etcd.endpoint, "--lease-ttl", ttl];
  const env = options.env ?? {};
  const metricsArgs = async () => (options.metrics ? ["--metrics-port", String(await freePort())] : []);
  const all: ServiceProcess[] = [];
  const status: ServiceProcess[] = [];
  const routers: ServiceProcess[] = [];
  const workers: ServiceProcess[] = [];
  const addRouter = async () => {
    const p = await startService("services/router/main.ts", [...common, ...(await metricsArgs()), ...(options.routerArgs ?? [])], env);
    routers.push(p);
    all.push(p);
    return p;
  };
  try {
    for (let i = 0; i < (options.status ?? 1); i++) {
      const p = await startService("services/status/main.ts", [...common, ...(await metricsArgs()), ...(options.statusArgs ?? [])], env);
      status.push(p);
      all.push(p);
    }
    for (let i = 0; i < (options.routers ?? 1); i++) await addRouter();
  } catch (err) {
    await Promise.all(all.map((p) => p.kill9()));
    await etcd.close();
    throw err;
  }
  const client = createClient({ etcd: etcd.endpoint });
  return {
    etcd,
    status,
    routers,
    workers,
    client,
    addWorker: async (stage, exportName, extra = [], module = "test/fixtures/stages.ts") => {
      const p = await startService("services/worker-host/main.ts", [
        ...common,
        ...(await metricsArgs()),
        "--stage", stage,
        "--module", module,
        "--export", exportName,
        ...extra,
      ], env);
      workers.push(p);
      all.push(p);
      return p;
    },
    addRouter,
    close: async () => {
      await client.close();
      await Promise.all([...all, ...workers.filter((w) => !all.includes(w))].map((p) => p.kill9()));
      await etcd.close();
    },
  };
}

/**
 * A mesh (see {@link startMesh}) with a one-stage pipeline and one worker for it (an export
 * of test/fixtures/stages.ts), once the router has connected to that worker.
 */
export async function startOneStageMesh(
  options: MeshOptions,
  pipeline: string,
  stage: string,
  exportName: string,
): Promise<TestMesh> {
  const mesh = await startMesh(options);
  try {
    await mesh.client.applyPipeline({ name: pipeline, stages: [{ name: stage }] });
    await mesh.addWorker(stage, exportName);
    await waitFor(async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).some((w) => w.connected), {
      what: "the router to connect to the worker",
    });
  } catch (err) {
    await mesh.close();
    throw err;
  }
  return mesh;
}
