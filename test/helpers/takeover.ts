import { randomUUID } from "node:crypto";
import { createClient, type RunResult } from "@dsat/sdk";
import { startMesh, type TestMesh } from "./mesh.ts";
import type { ServiceProcess } from "./processes.ts";
import { waitFor } from "./wait.ts";

/**
 * Two routers (lease TTL 2 s) and pipeline "two" (stages hold, then echo), with one worker
 * per stage, `hold` running `holdConcurrency` tasks at once. --status-linger-ms 0: every step
 * is stored as soon as it can be, so that a test can wait on the records, and a router that
 * dies leaves the attempts it lost in StatusService (the survivor records them as lost).
 * With the default linger, a router killed within 250 ms of such steps may take them with
 * it (the survivor's history then shows one attempt, also right); the chaos test kills
 * routers with the default and checks nothing is lost.
 */
export async function startTwoRouterMesh(holdConcurrency: number): Promise<TestMesh> {
  const mesh = await startMesh({ leaseTtlSeconds: 2, routers: 2, routerArgs: ["--status-linger-ms", "0"] });
  await mesh.client.applyPipeline({ name: "two", stages: [{ name: "hold" }, { name: "echo" }] });
  await Promise.all([
    mesh.addWorker("hold", "hold", ["--concurrency", String(holdConcurrency)]),
    mesh.addWorker("echo", "echo", ["--concurrency", "8"]),
  ]);
  return mesh;
}

/**
 * Kills a router with -9 while it holds tasks, and waits for their results: through
 * `doomed` only, 20 tasks of pipeline "two" (stages hold, then echo; `hold` takes 6 at a
 * time for 1.2 s), killed once the hold worker is full, so that 6 run and 14 wait in its
 * queue. The client reads the ends from StatusService. The mesh needs that pipeline and
 * one worker per stage (test/fixtures/stages.ts hold and echo).
 */
export async function runThroughKilledRouter(mesh: TestMesh, doomed: ServiceProcess): Promise<RunResult[]> {
  const viaDoomed = createClient({ etcd: mesh.etcd.endpoint, routers: [doomed.address] });
  try {
    await waitFor(async () => {
      const views = await viaDoomed.listWorkers();
      return (views[0]?.workers.filter((w) => w.connected).length ?? 0) === 2;
    }, { what: "the doomed router to connect to both workers" });
    const ids = Array.from({ length: 20 }, (_, i) => `takeover-${i}-${randomUUID().slice(0, 8)}`);
    const runs = ids.map((taskId, i) => viaDoomed.run("two", { ms: 1200, i }, { taskId }));
    await waitFor(async () => {
      const views = await viaDoomed.listWorkers();
      return views[0]?.workers.find((w) => w.stage === "hold" && w.inFlight === 6);
    }, { what: "the hold worker to be full" });
    // Accepted, that is stored (a task may start before): the router's take-over is tested,
    // not the client's submitting again elsewhere (it knows of no other router).
    await waitFor(async () => (await Promise.all(ids.map((id) => viaDoomed.getState(id)))).length === ids.length, {
      what: "every task to be stored",
    });
    await doomed.kill9();
    return await Promise.all(runs);
  } finally {
    await viaDoomed.close();
  }
}
