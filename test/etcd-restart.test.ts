import test from "ava";
import { State, stateName } from "@dsat/sdk";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { waitFor } from "./helpers/wait.ts";

let mesh: TestMesh;

test.before(async () => {
  mesh = await startMesh({ leaseTtlSeconds: 2 });
  await mesh.client.applyPipeline({ name: "holds", stages: [{ name: "hold" }] });
  await mesh.addWorker("hold", "hold", ["--concurrency", "8"]);
});

test.after.always(async () => {
  await mesh?.close();
});

test.serial("etcd stopped and started again on its data dir: the mesh carries on, no accepted task is lost", async (t) => {
  await waitFor(async () => (await mesh.client.listWorkers())[0]?.workers.some((w) => w.connected), {
    what: "the worker to be connected",
  });
  // Tasks accepted before etcd goes away, still running while it is away.
  const before = await Promise.all(Array.from({ length: 16 }, () => mesh.client.submit("holds", { ms: 1500 })));
  await mesh.etcd.stop();
  // While etcd is down, a submission cannot be stored, so it is not accepted: it waits or fails.
  const during = mesh.client.run("holds", { ms: 10 }).then(
    (r) => r,
    (err: unknown) => err,
  );
  await mesh.etcd.restart();

  // Every member is registered again (the same keys), without restarting any process.
  await waitFor(async () => (await mesh.client.members()).length === 3, {
    timeoutMs: 20_000,
    what: "status, router and worker to be registered in etcd again",
  });
  for (const id of before) {
    await waitFor(async () => (await mesh.client.getState(id)).state === State.SUCCEEDED, {
      timeoutMs: 30_000,
      what: `task ${id}, accepted before the restart, to succeed`,
    });
  }
  const d = await during;
  t.log(`a run submitted while etcd was down ended: ${d instanceof Error ? d.message : stateName((d as { state: State }).state)}`);
  const after = await Promise.all(Array.from({ length: 10 }, () => mesh.client.run("holds", { ms: 5 })));
  for (const r of after) t.is(stateName(r.state), "SUCCEEDED");
  t.true(mesh.routers.concat(mesh.status, mesh.workers).every((p) => p.child.exitCode === null), "no process restarted");
});
