// Routers that serve StatusService themselves (--serve-status), with no status process in
// the mesh: each is a status member at its own address, stores its own Reports in-process,
// answers GetState and Watch for every task, and the guarantees hold when one is killed.
import { clientTo, connectEtcd, createClient, Keys, parseMember, State, stateName, StatusService } from "@dsat/sdk";
import test from "ava";
import type { Etcd3 } from "etcd3";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../sdk/src/gen/grpc/health/v1/health_pb.js";
import { StatusServer } from "../services/status/status-server.ts";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { scrape } from "./helpers/metrics.ts";
import { runThroughKilledRouter } from "./helpers/takeover.ts";
import type { ServiceProcess } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

let mesh: TestMesh;
let kv: Etcd3;

test.before(async () => {
  // --status-linger-ms 0: every step is stored at once, so that the killed router's steps
  // of the tasks it held are in etcd (see takeover.test.ts).
  mesh = await startMesh({
    status: 0,
    routers: 2,
    routerArgs: ["--serve-status", "--status-linger-ms", "0"],
    metrics: true,
  });
  kv = connectEtcd({ endpoints: mesh.etcd.endpoint });
  await mesh.client.applyPipeline({ name: "two", stages: [{ name: "hold" }, { name: "echo" }] });
  await Promise.all([
    mesh.addWorker("hold", "hold", ["--concurrency", "6"]),
    mesh.addWorker("echo", "echo", ["--concurrency", "8"]),
  ]);
});

test.after.always(async () => {
  kv?.close();
  await mesh?.close();
});

const sum = (samples: Awaited<ReturnType<typeof scrape>>, name: string, labels: Record<string, string> = {}) =>
  samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);

test.serial("each router is a status member at its own address, serves StatusService and stores its own Reports in-process", async (t) => {
  const members = (await kv.getAll().prefix(new Keys().membersOf("status")).buffers()) as Record<string, Buffer>;
  const status = Object.values(members).map((v) => parseMember(v));
  t.deepEqual(
    status.map((m) => [m?.id, m?.address]).sort(),
    mesh.routers.map((r) => [r.id, r.address]).sort(),
    "one status member per router, with the router's id and address",
  );
  for (const r of mesh.routers) {
    const health = await clientTo(Health, r.address).check({ service: StatusService.typeName });
    t.is(health.status, ServingStatus.SERVING, `StatusService on ${r.id}`);
  }

  const runs = await Promise.all(Array.from({ length: 60 }, (_, i) => mesh.client.run("two", { ms: 1, i })));
  for (const r of runs) t.is(stateName(r.state), "SUCCEEDED", `${r.taskId}: ${r.error?.message}`);
  // Any router's StatusService answers for any task, whichever router drove it.
  for (const r of mesh.routers) {
    const via = createClient({ etcd: mesh.etcd.endpoint, status: [r.address] });
    try {
      const s = await via.getState(runs[0]?.taskId ?? "", { history: true });
      t.is(s.state, State.SUCCEEDED);
      t.true(s.history.some((h) => h.stage === "echo" && h.to === State.SUCCEEDED));
    } finally {
      await via.close();
    }
  }

  // Each router's Reports (round trips it timed) are the Reports its own store answered.
  let reports = 0;
  for (const r of mesh.routers) {
    const m = await scrape(r);
    const sent = sum(m, "dsat_router_status_report_seconds_count", { result: "ok" });
    t.is(sum(m, "dsat_status_report_seconds_count"), sent, `${r.id}: every Report went to its own status server`);
    t.is(sum(m, "dsat_router_status_report_seconds_count", { result: "error" }), 0);
    reports += sent;
  }
  t.true(reports >= 2, `Reports were sent (${reports})`);
});

test.serial("a router killed with -9 takes its status server with it: the other router takes its tasks over, each ends once", async (t) => {
  const [doomed, survivor] = mesh.routers as [ServiceProcess, ServiceProcess];
  // The client reads the ends from the status server left (the survivor's).
  const results = await runThroughKilledRouter(mesh, doomed);
  for (const r of results) t.is(stateName(r.state), "SUCCEEDED", `${r.taskId}: ${r.error?.message}`);
  for (const r of results) {
    const s = await mesh.client.getState(r.taskId, { history: true });
    t.is(s.routerId, survivor.id, "the survivor drives the task now");
    t.is(s.history.filter((h) => h.stage === "" && h.to === State.SUCCEEDED).length, 1, "exactly one terminal result");
  }
  await waitFor(async () => (await kv.getAll().prefix(new Keys().membersOf("status")).keys()).length === 1, {
    what: "the killed router's status member to leave with its lease",
  });
});

test.serial("a router that drains ends its tasks and stores their ends in its own status server before that one leaves", async (t) => {
  const last = mesh.routers[1] as ServiceProcess;
  const via = createClient({ etcd: mesh.etcd.endpoint, routers: [last.address] });
  let ids: string[];
  try {
    ids = await Promise.all(Array.from({ length: 10 }, (_, i) => via.submit("two", { ms: 300, i })));
  } finally {
    await via.close();
  }
  await last.stop();
  t.is(await last.exited, 0);
  // No status server is left in the mesh: read what the drained router stored with a new one.
  const status = await StatusServer.start({ etcd: mesh.etcd.endpoint, leaseTtlSeconds: 2 });
  const reader = createClient({ etcd: mesh.etcd.endpoint, status: [status.address] });
  try {
    for (const id of ids) {
      const s = await reader.getState(id, { history: true });
      t.is(stateName(s.state), "SUCCEEDED", id);
      t.is(s.routerId, last.id);
    }
  } finally {
    await reader.close();
    await status.close();
  }
});
