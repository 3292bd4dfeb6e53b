import test from "ava";
import { State, stateName } from "@dsat/sdk";
import type { TestMesh } from "./helpers/mesh.ts";
import { runThroughKilledRouter, startTwoRouterMesh } from "./helpers/takeover.ts";

let mesh: TestMesh;

test.before(async () => {
  mesh = await startTwoRouterMesh(6);
});

test.after.always(async () => {
  await mesh?.close();
});

test.serial("a router killed with -9 while it holds tasks: another takes them over and every task ends once", async (t) => {
  const [doomed, survivor] = mesh.routers;
  if (!doomed || !survivor) throw new Error("two routers expected");
  const results = await runThroughKilledRouter(mesh, doomed);
  for (const r of results) t.is(stateName(r.state), "SUCCEEDED", `${r.taskId}: ${r.error?.message}`);
  for (const r of results) {
    const s = await mesh.client.getState(r.taskId, { history: true });
    t.is(s.state, State.SUCCEEDED);
    t.is(s.routerId, survivor.id, "the survivor drives the task now");
    const terminals = s.history.filter((h) => h.stage === "" && h.to === State.SUCCEEDED);
    t.is(terminals.length, 1, "exactly one terminal result");
    // The second stage got the first stage's output, whoever dispatched it.
    t.deepEqual(r.output.json<{ input: { held: number } }>().input.held, 1200);
  }
  const redone = await Promise.all(results.map((r) => mesh.client.getState(r.taskId, { history: true })));
  t.true(
    redone.some((s) => s.history.some((h) => h.error?.message.includes("was lost"))),
    "tasks that ran on the doomed router's streams were dispatched again",
  );
});
