import test from "ava";
import { Code, ConnectError, clientTo, State, StatusService, stateName } from "@dsat/sdk";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { runWatchingProgress } from "./helpers/progress.ts";
import { waitFor } from "./helpers/wait.ts";

interface Trail {
  v: number;
  path: string[];
}

let mesh: TestMesh;

test.before(async () => {
  mesh = await startMesh();
  await mesh.client.applyPipeline({
    name: "chain",
    stages: [{ name: "add" }, { name: "double" }, { name: "minus3" }],
  });
  const starts = [];
  for (const [stage, fn] of [["add", "add"], ["double", "double"], ["minus3", "minus3"]] as const) {
    for (let i = 0; i < 3; i++) starts.push(mesh.addWorker(stage, fn));
  }
  await Promise.all(starts);
});

test.after.always(async () => {
  await mesh?.close();
});

test.serial("a three-stage pipeline over three workers per stage: every task succeeds, outputs chain, shares are fair", async (t) => {
  const workers = await waitFor(async () => {
    const views = await mesh.client.listWorkers();
    const connected = views.flatMap((v) => v.workers).filter((w) => w.connected);
    return connected.length === 9 ? connected : undefined;
  }, { what: "the router to connect to 9 workers" });
  t.is(workers.length, 9);

  const N = 300;
  const results = await Promise.all(
    Array.from({ length: N }, (_, i) => mesh.client.run("chain", { v: i, path: [] })),
  );
  const perWorker = new Map<string, number>();
  results.forEach((r, i) => {
    t.is(stateName(r.state), "SUCCEEDED", `task ${r.taskId}: ${r.error?.message}`);
    const out = r.output.json<Trail>();
    t.is(out.v, (i + 1) * 2 - 3);
    t.is(out.path.length, 3);
    for (const w of out.path) perWorker.set(w, (perWorker.get(w) ?? 0) + 1);
  });
  t.is(perWorker.size, 9, "every worker ran tasks");
  for (const [w, n] of perWorker) {
    // A fair share is N/3 per worker of a stage; round-robin keeps each near it.
    t.true(n >= N / 3 / 2, `worker ${w} ran ${n} of ${N} tasks at its stage`);
  }
});

test.serial("Watch from before submit and from after the end give the same ordered transitions; GetState is right", async (t) => {
  const taskId = `watch-${Date.now()}`;
  const live: string[] = [];
  let opened = false;
  const watching = (async () => {
    // The status server sends headers once its watch is on: only then is the task submitted.
    const stream = clientTo(StatusService, mesh.status[0]?.address ?? "").watch(
      { taskId, waitForTask: true },
      { onHeader: () => (opened = true) },
    );
    for await (const r of stream) {
      const tr = r.transition;
      if (tr) live.push(`${tr.seq}:${tr.stage}:${stateName(tr.to)}`);
    }
  })();
  await waitFor(() => opened);
  await mesh.client.submit("chain", { v: 1, path: [] }, { taskId });
  await watching;
  const after: string[] = [];
  for await (const tr of mesh.client.watch(taskId)) after.push(`${tr.seq}:${tr.stage}:${stateName(tr.to)}`);
  t.deepEqual(live, after);
  t.is(live.at(-1), `${live.length}::SUCCEEDED`);
  t.deepEqual(
    live.map((s) => s.split(":").slice(1).join(":")),
    [
      ":PENDING",
      "add:PENDING",
      ":RUNNING",
      "add:DISPATCHED",
      "add:RUNNING",
      "add:SUCCEEDED",
      "double:PENDING",
      "double:DISPATCHED",
      "double:RUNNING",
      "double:SUCCEEDED",
      "minus3:PENDING",
      "minus3:DISPATCHED",
      "minus3:RUNNING",
      "minus3:SUCCEEDED",
      ":SUCCEEDED",
    ],
  );
  const state = await mesh.client.getState(taskId);
  t.is(state.state, State.SUCCEEDED);
  t.is((JSON.parse(new TextDecoder().decode(state.output)) as Trail).v, (1 + 1) * 2 - 3);
  t.deepEqual(state.stages.map((s) => `${s.name}:${stateName(s.state)}:${s.attempt}`), [
    "add:SUCCEEDED:1",
    "double:SUCCEEDED:1",
    "minus3:SUCCEEDED:1",
  ]);
  t.true(state.stages.every((s) => s.workerId.length > 0));
});

test.serial("a task id submitted again is the same task: its result, once, whether it still runs or ended", async (t) => {
  const taskId = `again-${Date.now()}`;
  // Twice at once (the second comes while the first runs), then once more after the end,
  // by run (which waits for the result) and by submit.
  const [first, second] = await Promise.all([
    mesh.client.run("chain", { v: 5, path: [] }, { taskId }),
    mesh.client.run("chain", { v: 5, path: [] }, { taskId }),
  ]);
  // An id of the caller's is an idempotency key: submitted again once its task ended, it runs nothing.
  const dispatched = async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).reduce((n, w) => n + w.dispatched, 0n);
  const before = await dispatched();
  const third = await mesh.client.run("chain", { v: 5, path: [] }, { taskId });
  t.is(await mesh.client.submit("chain", { v: 5, path: [] }, { taskId }), taskId);
  t.is(await dispatched(), before, "no stage dispatched for the task submitted again");
  for (const r of [first, second, third]) {
    t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
    t.is(r.taskId, taskId);
    t.deepEqual(r.output.json<Trail>(), first.output.json<Trail>());
  }
  const s = await mesh.client.getState(taskId, { history: true });
  t.is(s.history.filter((h) => h.stage === "" && h.to === State.SUCCEEDED).length, 1, "one terminal result");
  t.deepEqual(s.output, first.output.bytes, "the record holds the first run's output");
});

test.serial("unknown pipeline is NOT_FOUND; empty or malformed requests are INVALID_ARGUMENT", async (t) => {
  const code = async (p: Promise<unknown>) => {
    const e = await t.throwsAsync(p);
    return ConnectError.from(e).code;
  };
  t.is(await code(mesh.client.submit("no-such-pipeline", {})), Code.NotFound);
  t.is(await code(mesh.client.submit("", {})), Code.InvalidArgument);
  t.is(await code(mesh.client.submit("chain", {}, { taskId: "bad id with spaces" })), Code.InvalidArgument);
  t.is(await code(mesh.client.getState("")), Code.InvalidArgument);
  t.is(await code(mesh.client.getState("never-submitted")), Code.NotFound);
  t.is(await code(mesh.client.cancel("")), Code.InvalidArgument);
  t.is(await code(mesh.client.applyPipeline({ name: "cyclic", stages: [{ name: "a" }, { name: "b" }], edges: [{ from: "a", to: "b" }, { from: "b", to: "a" }] })), Code.InvalidArgument);
  const e = await t.throwsAsync(mesh.client.run("no-such-pipeline", {}));
  t.regex(e?.message ?? "", /pipeline "no-such-pipeline" not found/);
});

test.serial("progress: a handler's ctx.progress reaches a Watch live as RUNNING → RUNNING with its detail; the record keeps the latest", async (t) => {
  await mesh.client.applyPipeline({ name: "progressing", stages: [{ name: "progress" }] });
  const worker = await mesh.addWorker("progress", "progress");
  await waitFor(
    async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).some((w) => w.id === worker.id && w.connected),
    { what: "the router to connect to the progress worker" },
  );
  const { result: r, seen } = await runWatchingProgress(mesh, "progressing", "progress", { ms: 300 });
  t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  // Sent 300 ms apart to an idle router: each goes at once, and the Watch sees each live,
  // before the stage's end.
  t.deepEqual(seen.map((s) => s.detail), ["1/3", "2/3", "3/3"]);
  t.true(seen.every((s) => !s.stageEnded));
  const state = await mesh.client.getState(r.taskId, { history: true });
  const kept = state.history.filter((h) => h.from === State.RUNNING && h.to === State.RUNNING);
  t.deepEqual(kept.map((h) => h.detail), ["3/3"], "one progress entry per attempt: the latest");
  await worker.stop();
});
