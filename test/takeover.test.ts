import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import test from "ava";
import {
  clientTo,
  encodePayload,
  isTaskTerminal,
  State,
  StatusService,
  stateName,
  TaskSchema,
  TransitionSchema,
} from "@dsat/sdk";
import type { TestMesh } from "./helpers/mesh.ts";
import { runThroughKilledRouter, startTwoRouterMesh } from "./helpers/takeover.ts";
import { waitFor } from "./helpers/wait.ts";

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

test.serial("a stage stored FAILED as lost (its router died before storing the retry) runs again when its task is claimed, not counted as a failure", async (t) => {
  // A router that is not registered ("ghost") stored a task whose first stage it recorded as
  // lost (UNAVAILABLE), and died before it could store the retry. The stage has no retry
  // policy: counted as a failure, the task would end FAILED.
  const status = mesh.status[0];
  if (!status) throw new Error("no status server");
  const { pipeline } = await mesh.client.applyPipeline({ name: "two", stages: [{ name: "hold" }, { name: "echo" }] });
  const taskId = `lost-stage-${Date.now()}`;
  const step = (stage: string, attempt: number, from: State, to: State, error?: { code: string; message: string; retryable: boolean }) =>
    create(TransitionSchema, { taskId, stage, attempt, from, to, memberId: "ghost", time: timestampNow(), ...(error ? { error } : {}) });
  const res = await clientTo(StatusService, status.address).report({
    routerId: "ghost",
    created: [create(TaskSchema, { id: taskId, pipeline: "two", pipelineVersion: pipeline.version, payload: encodePayload({ ms: 10 }), createdAt: timestampNow() })],
    transitions: [
      step("hold", 1, State.UNSPECIFIED, State.PENDING),
      step("", 0, State.PENDING, State.RUNNING),
      step("hold", 1, State.PENDING, State.DISPATCHED),
      step("hold", 1, State.DISPATCHED, State.RUNNING),
      step("hold", 1, State.RUNNING, State.FAILED, { code: "UNAVAILABLE", message: "the router that dispatched it (ghost-0) was lost", retryable: true }),
    ],
  });
  t.true([...res.created, ...res.transitions].every((o) => o.accepted), "the ghost's record is stored");

  // A router that starts claims the tasks of every router that is not registered.
  const claimer = await mesh.addRouter();
  const end = await waitFor(async () => {
    const s = await mesh.client.getState(taskId, { history: true });
    return isTaskTerminal(s.state) ? s : undefined;
  }, { timeoutMs: 20_000, what: "the claimed task to end" });
  t.is(stateName(end.state), "SUCCEEDED", end.error?.message);
  t.is(end.routerId, claimer.id);
  t.is(end.stages.find((s) => s.name === "hold")?.attempt, 2, "the lost attempt ran again as attempt 2");
});
