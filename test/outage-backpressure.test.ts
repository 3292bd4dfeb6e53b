// Back-pressure while StatusService stores nothing, for tasks that start before they are
// stored (a client that waits for results, fresh ids): the router runs at most --max-tasks
// of them, ended or not, until their creates are stored; then every one ends, stored once.
import test from "ava";
import { stateName } from "@dsat/sdk";
import { startOneStageMesh, type TestMesh } from "./helpers/mesh.ts";
import { type ServiceProcess, startService } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

const MAX_TASKS = 20;
let mesh: TestMesh;
let replacement: ServiceProcess | undefined;

test.before(async () => {
  mesh = await startOneStageMesh({ routerArgs: ["--max-tasks", String(MAX_TASKS)] }, "bp", "echo", "echo");
});

test.after.always(async () => {
  await replacement?.kill9();
  await mesh?.close();
});

test("during a status outage, tasks that started before they were stored still count against --max-tasks once they ended", async (t) => {
  const status = mesh.status[0];
  if (!status) throw new Error("no status server");
  await status.kill9();
  const dispatched = async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).reduce((n, w) => n + w.dispatched, 0n);
  const inFlight = async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).reduce((n, w) => n + w.inFlight, 0);

  const runs = Array.from({ length: 5 * MAX_TASKS }, (_, i) => mesh.client.run("bp", { i }));
  // The first MAX_TASKS run on the worker and end there; their creates cannot be stored.
  await waitFor(async () => (await dispatched()) >= BigInt(MAX_TASKS) && (await inFlight()) === 0, {
    what: `the first ${MAX_TASKS} tasks to run and end on the worker`,
  });
  t.is(await dispatched(), BigInt(MAX_TASKS), "no task beyond the limit started while none could be stored");

  // A status server again: the held creates and ends go in, room frees, the rest run.
  replacement = await startService("services/status/main.ts", ["--etcd", mesh.etcd.endpoint, "--lease-ttl", "2"]);
  const results = await Promise.all(runs);
  t.is(results.filter((r) => stateName(r.state) === "SUCCEEDED").length, 5 * MAX_TASKS);
  for (const r of results.slice(0, MAX_TASKS)) {
    const s = await mesh.client.getState(r.taskId, { history: true });
    t.is(s.history.filter((h) => h.stage === "" && stateName(h.to) === "SUCCEEDED").length, 1, "stored once, ended once");
  }
});
