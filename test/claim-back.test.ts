// A router presumed dead while it is alive (paused past its lease), whose tasks another
// router took over, and which takes them back when that one dies: real processes, real etcd.
import { randomUUID } from "node:crypto";
import test from "ava";
import { createClient, State, stateName } from "@dsat/sdk";
import type { TestMesh } from "./helpers/mesh.ts";
import { startTwoRouterMesh } from "./helpers/takeover.ts";
import { waitFor } from "./helpers/wait.ts";

/** The mesh's lease TTL, in seconds (startTwoRouterMesh). */
const TTL_S = 2;
let mesh: TestMesh;

test.before(async () => {
  mesh = await startTwoRouterMesh(12);
});

test.after.always(async () => {
  await mesh?.close();
});

test.serial("a router paused past its lease while it ran tasks takes them back when the router that took them dies: each ends once, no attempt number twice", async (t) => {
  const [a, b] = mesh.routers;
  if (!a || !b) throw new Error("two routers expected");
  const viaA = createClient({ etcd: mesh.etcd.endpoint, routers: [a.address] });
  t.teardown(async () => {
    process.kill(a.pid, "SIGCONT");
    await viaA.close();
  });
  await waitFor(async () => ((await viaA.listWorkers())[0]?.workers.filter((w) => w.connected).length ?? 0) === 2, {
    what: "router a to connect to both workers",
  });
  // The first stage holds each task long enough that router a still runs its attempt when
  // it claims the tasks back (about 5 lease TTLs after it started them).
  const ids = Array.from({ length: 6 }, (_, i) => `claim-back-${i}-${randomUUID().slice(0, 8)}`);
  const runs = ids.map((taskId, i) => viaA.run("two", { ms: 8 * TTL_S * 1000, i }, { taskId }));
  const records = () => Promise.all(ids.map((id) => mesh.client.getState(id)));
  await waitFor(async () => (await records()).every((s) => s.routerId === a.id && s.stages[0]?.state === State.RUNNING), {
    what: "router a to run every task's first stage",
  });

  // Router a pauses past its lease: its record lapses, and router b, seeing it still gone a
  // lease TTL later, claims its tasks and runs their first stage again.
  process.kill(a.pid, "SIGSTOP");
  await waitFor(
    async () =>
      (await records()).every((s) => s.routerId === b.id && s.stages[0]?.state === State.RUNNING && (s.stages[0]?.attempt ?? 0) >= 2),
    { timeoutMs: 6 * TTL_S * 1000, what: "router b to take the tasks over and run their first stage again" },
  );
  // Router a wakes up, still running the tasks, and registers again; router b dies, and
  // router a claims its tasks: the ones it still runs come back to it.
  process.kill(a.pid, "SIGCONT");
  await b.kill9();

  const results = await Promise.all(runs);
  for (const r of results) t.is(stateName(r.state), "SUCCEEDED", `${r.taskId}: ${r.error?.message}`);
  t.regex(a.stderr(), /came back through a claim/, "router a went through the claim-back path");
  for (const id of ids) {
    const s = await mesh.client.getState(id, { history: true });
    t.is(s.state, State.SUCCEEDED);
    t.is(s.routerId, a.id, "router a drives the task again");
    t.is(s.history.filter((h) => h.stage === "" && h.to === State.SUCCEEDED).length, 1, "exactly one terminal result");
    const dispatched = s.history.filter((h) => h.stage === "hold" && h.to === State.DISPATCHED).map((h) => h.attempt);
    t.deepEqual(dispatched, [...new Set(dispatched)].sort((x, y) => x - y), `attempts dispatched once each, in order: ${dispatched}`);
    t.true(dispatched.length >= 3, `a, b, then a again dispatched the first stage: ${dispatched}`);
    t.false(s.history.some((h) => h.to === State.CANCELLED), "no step was cancelled");
  }
});
