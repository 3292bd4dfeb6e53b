import test from "ava";
import { State, stateName } from "@dsat/sdk";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { waitFor } from "./helpers/wait.ts";

let mesh: TestMesh;
const FIXTURE = "test/fixtures/graph.ts";

test.before(async () => {
  mesh = await startMesh({ leaseTtlSeconds: 2 });
  await mesh.client.applyPipeline({
    name: "diamond",
    stages: [{ name: "a" }, { name: "b" }, { name: "c" }, { name: "d" }],
    edges: [
      { from: "a", to: "b" },
      { from: "a", to: "c" },
      { from: "b", to: "d" },
      { from: "c", to: "d" },
    ],
  });
  await mesh.client.applyPipeline({
    name: "routes",
    stages: [{ name: "check", ports: ["ok", "retry-later", "drop"] }, { name: "ok" }, { name: "later" }],
    edges: [
      { from: "check", to: "ok", port: "ok" },
      { from: "check", to: "later", port: "retry-later" },
    ],
  });
  // A diamond whose right branch only follows port "x", which `a2` never uses.
  await mesh.client.applyPipeline({
    name: "half-diamond",
    stages: [{ name: "a2", ports: ["x"] }, { name: "b2" }, { name: "c2" }, { name: "d2" }],
    edges: [
      { from: "a2", to: "b2" },
      { from: "a2", to: "c2", port: "x" },
      { from: "b2", to: "d2" },
      { from: "c2", to: "d2" },
    ],
  });
  const workers: [string, string][] = [
    ["a", "tag"], ["b", "tag"], ["c", "tag"], ["d", "tag"],
    ["check", "route"], ["ok", "tag"], ["later", "tag"],
    ["a2", "tag"], ["b2", "tag"], ["c2", "tagX"], ["d2", "tag"],
  ];
  await Promise.all(workers.map(([stage, fn]) => mesh.addWorker(stage, fn, ["--concurrency", "8"], FIXTURE)));
  await waitFor(async () => (await mesh.client.listWorkers())[0]?.workers.filter((w) => w.connected).length === workers.length, {
    what: "every worker connected",
  });
});

test.after.always(async () => {
  await mesh?.close();
});

interface Tagged {
  stage: string;
  input: unknown;
}

test.serial("diamond A → B, A → C, B + C → D: D runs once and gets both outputs", async (t) => {
  const results = await Promise.all(Array.from({ length: 20 }, (_, i) => mesh.client.run("diamond", { i })));
  for (const [i, r] of results.entries()) {
    t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
    const d = r.output.json<Tagged>();
    t.is(d.stage, "d");
    t.deepEqual(d.input, {
      b: { stage: "b", input: { stage: "a", input: { i } } },
      c: { stage: "c", input: { stage: "a", input: { i } } },
    });
  }
  const s = await mesh.client.getState(results[0]?.taskId ?? "", { history: true });
  t.deepEqual(s.stages.map((x) => x.name).sort(), ["a", "b", "c", "d"], "every branch is in the state");
  t.true(s.stages.every((x) => x.state === State.SUCCEEDED && x.attempt === 1));
  t.is(s.history.filter((h) => h.stage === "d" && h.to === State.DISPATCHED).length, 1, "D was dispatched once");
});

test.serial("conditional routing: outputs on port ok go one way, retry-later the other; a port with no edge ends there", async (t) => {
  const [even, odd, dropped] = await Promise.all([
    mesh.client.run("routes", { n: 2 }),
    mesh.client.run("routes", { n: 3 }),
    mesh.client.run("routes", { n: -1 }),
  ]);
  t.is(even?.output.json<Tagged>().stage, "ok");
  t.is(odd?.output.json<Tagged>().stage, "later");
  t.deepEqual(dropped?.output.json(), { n: -1 }, "the branch ended at check, with its output");
  const s = await mesh.client.getState(even?.taskId ?? "");
  t.deepEqual(s.stages.map((x) => x.name), ["check", "ok"], "the other branch never started");
  for (const r of [even, odd, dropped]) t.is(r?.state, State.SUCCEEDED);
});

test.serial("a join whose other parent's branch ended elsewhere starts with what was delivered", async (t) => {
  const r = await mesh.client.run("half-diamond", { k: 1 });
  t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  t.deepEqual(r.output.json<Tagged>(), { stage: "d2", input: { b2: { stage: "b2", input: { stage: "a2", input: { k: 1 } } } } });
  const s = await mesh.client.getState(r.taskId);
  t.deepEqual(s.stages.map((x) => x.name).sort(), ["a2", "b2", "d2"]);
});
