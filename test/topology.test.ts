import { create } from "@bufbuild/protobuf";
import { clientTo, MemberKind, PipelineSchema, State, StatusService, type TopologyResponse } from "@dsat/sdk";
import test from "ava";
import { readTopology, type Satellite, startSatellite } from "../services/cli/satellite.ts";
import { startEtcd, type TestEtcd } from "./helpers/etcd.ts";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { ROOT } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

let mesh: TestMesh;
let etcd: TestEtcd | undefined;
let sat: Satellite | undefined;

test.before(async () => {
  mesh = await startMesh({ routers: 2 });
  await mesh.client.applyPipeline({ name: "held", stages: [{ name: "slow" }] });
  await mesh.addWorker("slow", "hold", ["--concurrency", "2"]);
  await mesh.addWorker("slow", "hold", ["--concurrency", "2"]);
});

test.after.always(async () => {
  await sat?.stop();
  await etcd?.close();
  await mesh?.close();
});

function topology(): Promise<TopologyResponse> {
  return clientTo(StatusService, mesh.status[0]?.address as string).topology({}, { timeoutMs: 5_000 });
}

test.serial("Topology lists the members, each router's workers, and the load per stage", async (t) => {
  const topo = await waitFor(
    async () => {
      const r = await topology();
      return r.stages.find((s) => s.stage === "slow")?.workers === 2 && r.routers.every((x) => x.workers?.workers.length === 2) ? r : undefined;
    },
    { what: "both routers to see both workers" },
  );
  t.deepEqual(topo.members.filter((m) => m.kind === MemberKind.ROUTER).map((m) => m.id).sort(), mesh.routers.map((r) => r.id).sort());
  t.is(topo.members.filter((m) => m.kind === MemberKind.STATUS).length, 1);
  t.is(topo.members.filter((m) => m.kind === MemberKind.WORKER).length, 2);
  t.deepEqual(topo.routers.map((r) => r.routerId).sort(), mesh.routers.map((r) => r.id).sort());
  t.true(topo.routers.every((r) => r.error === ""));
  const slow = topo.stages.find((s) => s.stage === "slow");
  // Each worker is seen by both routers and counted once.
  t.like(slow, { workers: 2, capacity: 4, inFlight: 0, queued: 0 });
});

test.serial("Topology shows held tasks in flight (or queued), then the average run time", async (t) => {
  const runs = Array.from({ length: 6 }, () => mesh.client.run("held", { ms: 1500 }));
  const busy = await waitFor(
    async () => {
      const s = (await topology()).stages.find((x) => x.stage === "slow");
      return s && s.inFlight >= 4 && s.inFlight + s.queued === 6 ? s : undefined;
    },
    { what: "the 6 held tasks in flight or queued" },
  );
  t.is(busy.capacity, 4);
  t.is(busy.workers, 2);
  const results = await Promise.all(runs);
  t.is(results.filter((r) => r.state === State.SUCCEEDED).length, 6);
  const idle = await waitFor(
    async () => {
      const s = (await topology()).stages.find((x) => x.stage === "slow");
      return s && s.inFlight === 0 && s.avgRunMs > 0 ? s : undefined;
    },
    { what: "the stage idle again, with the workers' average run time" },
  );
  t.true(idle.avgRunMs >= 1000, `avg run ${idle.avgRunMs} ms`);
});

test.serial("WatchTopology streams a response per interval; a router that does not answer is listed with an error", async (t) => {
  const seen: TopologyResponse[] = [];
  const started = Date.now();
  const stream = clientTo(StatusService, mesh.status[0]?.address as string).watchTopology({ intervalMs: 100 }, { timeoutMs: 10_000 });
  for await (const r of stream) {
    seen.push(r);
    if (seen.length === 3) break;
  }
  t.is(seen.length, 3);
  t.true(Date.now() - started >= 200);
  // A router that stops answering (SIGSTOP) but keeps its lease for now is listed with an error.
  const r = mesh.routers[1];
  r?.child.kill("SIGSTOP");
  try {
    const topo = await topology();
    const bad = topo.routers.find((x) => x.routerId === r?.id);
    t.truthy(bad?.error, "the stopped router has an error");
    t.is(bad?.workers, undefined);
  } finally {
    r?.child.kill("SIGCONT");
  }
});

test.serial("a satellite's worker pool grows under a burst and shrinks back when idle", async (t) => {
  etcd = await startEtcd();
  sat = await startSatellite({
    etcd: etcd.endpoint,
    leaseTtlSeconds: 2,
    sampleMs: 250,
    poolScaling: { idleMs: 1_500, cooldownMs: 750 },
    files: [
      {
        pipeline: create(PipelineSchema, { name: "burst", stages: [{ name: "hold" }] }),
        workers: [{ stage: "hold", module: `${ROOT}test/fixtures/stages.ts`, export: "hold", replicas: 1, min: 1, max: 3, concurrency: 2 }],
      },
    ],
  });
  const client = sat.client;
  const workers = async () => (await readTopology(client)).stages.find((s) => s.stage === "hold")?.workers ?? 0;
  t.is(sat.poolSize("hold"), 1);
  const runs = Array.from({ length: 60 }, () => client.run("burst", { ms: 300 }));
  await waitFor(async () => (await workers()) === 3, { timeoutMs: 20_000, intervalMs: 100, what: "the pool to grow to 3 workers" });
  const results = await Promise.all(runs);
  t.is(results.filter((r) => r.state === State.SUCCEEDED).length, 60);
  await waitFor(async () => (await workers()) === 1 && sat?.poolSize("hold") === 1, {
    timeoutMs: 20_000,
    intervalMs: 100,
    what: "the pool to shrink back to 1 worker",
  });
  t.is(await workers(), 1, "one worker serves the stage again");
});
