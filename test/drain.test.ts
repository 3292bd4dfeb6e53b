import test from "ava";
import { createClient, State, stateName } from "@dsat/sdk";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { waitFor } from "./helpers/wait.ts";

let mesh: TestMesh;

test.before(async () => {
  mesh = await startMesh({ leaseTtlSeconds: 2, routers: 2 });
  await mesh.client.applyPipeline({ name: "holds", stages: [{ name: "hold" }] });
});

test.after.always(async () => {
  await mesh?.close();
});

const connectedHoldWorkers = async () =>
  (await mesh.client.listWorkers()).every((v) => v.workers.filter((w) => w.stage === "hold" && w.connected).length >= 1);

test.serial("a rolling restart of every worker of a stage (SIGTERM: drain) loses nothing", async (t) => {
  const old = await Promise.all([1, 2, 3].map(() => mesh.addWorker("hold", "hold", ["--concurrency", "4"])));
  await waitFor(connectedHoldWorkers, { what: "hold workers connected" });
  const total = 240;
  let next = 0;
  const results: { ok: boolean; by: string; error: string }[] = [];
  const lane = async () => {
    while (next < total) {
      next++;
      const r = await mesh.client.run("holds", { ms: 60 });
      results.push({ ok: r.ok, by: r.ok ? r.output.json<{ by: string }>().by : "", error: r.error?.message ?? "" });
    }
  };
  const load = Promise.all(Array.from({ length: 16 }, lane));
  // Replace each worker in turn: start a new one, then SIGTERM the old one and wait for it.
  for (const w of old) {
    await waitFor(() => results.length > 0, { what: "tasks to flow" });
    await mesh.addWorker("hold", "hold", ["--concurrency", "4"]);
    await w.stop();
    t.is(await w.exited, 0, `worker ${w.id} exits 0 after its drain`);
  }
  await load;
  t.is(results.length, total);
  for (const r of results) t.true(r.ok, r.error);
  t.true(old.some((w) => results.some((r) => r.by === w.id)), "the old workers ran tasks before they drained");
  const members = await mesh.client.members();
  for (const w of old) t.false(members.some((m) => m.id === w.id), "a drained worker left etcd");
});

test.serial("a router that drains (SIGTERM) finishes what it holds without a take-over, then exits", async (t) => {
  const [draining, other] = mesh.routers;
  if (!draining || !other) throw new Error("two routers expected");
  const pinned = createClient({ etcd: mesh.etcd.endpoint, routers: [draining.address] });
  try {
    await waitFor(async () => (await pinned.listWorkers())[0]?.workers.some((w) => w.stage === "hold" && w.connected), {
      what: "the router to see a hold worker",
    });
    const ids = await Promise.all(Array.from({ length: 8 }, () => pinned.submit("holds", { ms: 800 })));
    await draining.stop();
    t.is(await draining.exited, 0);
    for (const id of ids) {
      const s = await mesh.client.getState(id, { history: true });
      t.is(s.state, State.SUCCEEDED, `${id}: ${stateName(s.state)}`);
      t.is(s.routerId, draining.id, "the draining router finished it itself");
      t.false(s.history.some((h) => h.error?.message.includes("was lost")), "nothing was run twice");
    }
    // New work goes to the router that stays.
    const r = await mesh.client.run("holds", { ms: 1 });
    t.is(stateName(r.state), "SUCCEEDED");
  } finally {
    await pinned.close();
  }
});
