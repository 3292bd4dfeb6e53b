import test from "ava";
import { createClient, type DsatClient, State, stateName } from "@dsat/sdk";
import { startEtcd, type TestEtcd } from "./helpers/etcd.ts";
import { type ServiceProcess, startService } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

let etcd: TestEtcd;
const procs: ServiceProcess[] = [];
let east: ServiceProcess;
let west: ServiceProcess;
let westWorker: ServiceProcess;
let client: DsatClient;

const start = async (entry: string, args: string[]) => {
  const p = await startService(entry, ["--etcd", etcd.endpoint, "--lease-ttl", "2", ...args]);
  procs.push(p);
  return p;
};
const worker = (satellite: string, stage: string, fn: string) =>
  start("services/worker-host/main.ts", [
    "--satellite", satellite, "--stage", stage, "--module", "test/fixtures/stages.ts", "--export", fn, "--concurrency", "4",
  ]);

test.before(async () => {
  etcd = await startEtcd();
  await start("services/status/main.ts", []);
  east = await start("services/router/main.ts", ["--satellite", "east"]);
  west = await start("services/router/main.ts", ["--satellite", "west"]);
  await worker("east", "add", "add");
  await worker("east", "minus3", "minus3");
  westWorker = await worker("west", "double", "double");
  client = createClient({ etcd: etcd.endpoint, routers: [east.address] });
  await client.applyPipeline({ name: "across", stages: [{ name: "add" }, { name: "double" }, { name: "minus3" }] });
});

test.after.always(async () => {
  await client?.close();
  await Promise.all(procs.map((p) => p.kill9()));
  await etcd?.close();
});

test.serial("two satellites: a pipeline whose middle stage lives in the second completes; the hop shows", async (t) => {
  await waitFor(async () => {
    const [view] = await client.listWorkers();
    return view?.workers.some((w) => w.stage === "double" && w.id === west.id && w.connected);
  }, { what: "the east router to reach stage double through the west router" });
  const [view] = await client.listWorkers();
  t.false(view?.workers.some((w) => w.id === westWorker.id), "the east router does not dial the west satellite's workers");

  const results = await Promise.all(Array.from({ length: 30 }, (_, i) => client.run("across", { v: i, path: [] })));
  for (const [i, r] of results.entries()) {
    t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
    const out = r.output.json<{ v: number; path: string[] }>();
    t.is(out.v, (i + 1) * 2 - 3);
    t.is(out.path[1], westWorker.id, "stage double ran on the west satellite's worker");
  }
  const s = await client.getState(results[0]?.taskId ?? "", { history: true });
  const double = s.history.filter((h) => h.stage === "double");
  t.is(double.find((h) => h.to === State.DISPATCHED)?.workerId, west.id, "dispatched to the west router");
  t.is(double.find((h) => h.to === State.RUNNING)?.workerId, westWorker.id, "run by the west worker");
});

test.serial("a satellite that disappears takes its stages away: tasks wait, and go on when it is back", async (t) => {
  await west.kill9();
  await westWorker.kill9();
  await waitFor(async () => {
    const [view] = await client.listWorkers();
    return !view?.workers.some((w) => w.stage === "double" && w.connected);
  }, { timeoutMs: 10_000, what: "the gateway to go with the west satellite" });
  const id = await client.submit("across", { v: 1, path: [] });
  await waitFor(async () => (await client.getState(id)).stages.some((x) => x.name === "double" && x.state === State.PENDING), {
    what: "the task to wait at stage double",
  });
  west = await start("services/router/main.ts", ["--satellite", "west"]);
  westWorker = await worker("west", "double", "double");
  const s = await waitFor(async () => {
    const st = await client.getState(id);
    return st.state === State.SUCCEEDED ? st : undefined;
  }, { timeoutMs: 20_000, what: "the task to go on once the west satellite is back" });
  t.is(s.state, State.SUCCEEDED);
});

test.serial("with --stage-wait-ms, a task at a stage that no satellite serves fails UNAVAILABLE instead of waiting", async (t) => {
  const strict = await start("services/router/main.ts", ["--satellite", "east", "--stage-wait-ms", "500"]);
  const viaStrict = createClient({ etcd: etcd.endpoint, routers: [strict.address] });
  try {
    await client.applyPipeline({ name: "nowhere", stages: [{ name: "add" }, { name: "unserved" }] });
    await waitFor(async () => (await viaStrict.listWorkers())[0]?.workers.some((w) => w.stage === "add" && w.connected), {
      what: "the strict router to connect to the add worker",
    });
    const r = await viaStrict.run("nowhere", { v: 1, path: [] });
    t.is(stateName(r.state), "FAILED");
    t.is(r.error?.code, "UNAVAILABLE");
    t.regex(r.error?.message ?? "", /no worker serves stage "unserved" \(waited 500 ms\)/);
  } finally {
    await viaStrict.close();
  }
});
