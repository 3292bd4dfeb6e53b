// The standard grpc.health.v1 service on every server, and the order of a graceful stop:
// a server says NOT_SERVING before its member key leaves etcd, so that a balancer or a
// probe that watches health stops sending before the mesh forgets the server.
import {
  Code,
  ConnectError,
  clientTo,
  connectEtcd,
  createClient,
  createWorker,
  type DsatClient,
  Keys,
  parseMember,
  RouterService,
  State,
  stateName,
  type Worker,
} from "@dsat/sdk";
import test from "ava";
import type { Etcd3 } from "etcd3";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../sdk/src/gen/grpc/health/v1/health_pb.js";
import { RouterServer } from "../services/router/router-server.ts";
import { StatusServer } from "../services/status/status-server.ts";
import { startEtcd, type TestEtcd } from "./helpers/etcd.ts";
import { waitFor } from "./helpers/wait.ts";

process.env.DSAT_LOG_LEVEL ??= "error";

let etcd: TestEtcd;
let kv: Etcd3;
let status: StatusServer;
let router: RouterServer;
let client: DsatClient;
/** Everything a test started, closed in after.always whatever happened. */
const closers: (() => Promise<unknown>)[] = [];
const keys = new Keys();

test.before(async () => {
  etcd = await startEtcd();
  kv = connectEtcd({ endpoints: etcd.endpoint });
  status = await StatusServer.start({ etcd: etcd.endpoint, leaseTtlSeconds: 2 });
  router = await RouterServer.start({ etcd: etcd.endpoint, leaseTtlSeconds: 2 });
  client = createClient({ etcd: etcd.endpoint });
});

test.after.always(async () => {
  for (const close of closers.reverse()) await close().catch(() => {});
  await client?.close();
  await router?.close();
  await status?.close();
  kv?.close();
  await etcd?.close();
});

/** A gate that a handler waits on, and that the test opens. */
function gate(): { promise: Promise<void>; open(): void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

/**
 * A worker for a stage of its own (and a one-stage pipeline of the same name), whose
 * tasks wait until the test opens their gate.
 */
async function holdingWorker(stage: string): Promise<{ worker: Worker; release(): void }> {
  await client.applyPipeline({ name: stage, stages: [{ name: stage }] });
  const g = gate();
  const worker = await createWorker({
    stage,
    handler: async (_input, ctx) => {
      await g.promise;
      return { by: ctx.workerId };
    },
    etcd: etcd.endpoint,
    leaseTtlSeconds: 2,
  });
  closers.push(() => worker.close());
  await waitFor(
    async () => (await client.listWorkers()).flatMap((v) => v.workers).some((w) => w.id === worker.id && w.connected),
    { what: `the router to connect to worker ${worker.id}` },
  );
  return { worker, release: g.open };
}

const check = async (address: string, service = "") =>
  (await clientTo(Health, address).check({ service }, { timeoutMs: 5_000 })).status;

/**
 * Records, in the order this process sees them, the health changes of a server (a Watch
 * stream) and the deletion of its member key (an etcd watch). Resolves once both watches
 * are live.
 */
async function recordStop(address: string, memberKey: string, service = ""): Promise<{ events: string[]; stop(): Promise<void> }> {
  const events: string[] = [];
  const abort = new AbortController();
  const watcher = await kv.watch().key(memberKey).create();
  watcher.on("delete", () => events.push("etcd: member key deleted"));
  watcher.on("put", (kv) => {
    if (parseMember(kv.value)?.draining) events.push("etcd: member marked draining");
  });
  let first = false;
  void (async () => {
    try {
      for await (const res of clientTo(Health, address).watch({ service }, { signal: abort.signal })) {
        first = true;
        events.push(`health: ${ServingStatus[res.status]}`);
      }
    } catch {
      // The server went away at the end of the stop, or the test aborted the stream.
    }
  })();
  await waitFor(() => first, { what: `the first health Watch answer from ${address}` });
  return {
    events,
    stop: async () => {
      abort.abort();
      await watcher.cancel();
    },
  };
}

/** Index of the first event that starts with `prefix`, for the order assertions. */
const at = (events: string[], prefix: string) => events.findIndex((e) => e.startsWith(prefix));

test.serial("every server answers Check with SERVING once registered, for itself and each of its services", async (t) => {
  const { worker } = await holdingWorker("check");
  const servers = [
    { kind: "router", address: router.address, key: keys.member("router", router.id), services: ["dsat.v1.RouterService", "dsat.v1.WorkerService"] },
    { kind: "worker", address: worker.address, key: keys.member("worker", worker.id), services: ["dsat.v1.WorkerService"] },
    {
      kind: "status",
      address: status.address,
      key: keys.member("status", status.id),
      services: ["dsat.v1.StatusService", "dsat.v1.PipelineService"],
    },
  ];
  for (const s of servers) {
    t.true(await kv.get(s.key).exists(), `${s.kind} is registered at ${s.key}`);
    for (const service of ["", ...s.services]) {
      t.is(await check(s.address, service), ServingStatus.SERVING, `${s.kind} "${service}"`);
    }
    const unknown = await t.throwsAsync(check(s.address, "no.such.Service"));
    t.is(ConnectError.from(unknown).code, Code.NotFound, `${s.kind}: an unknown service is NOT_FOUND`);
    const list = await clientTo(Health, s.address).list({});
    t.deepEqual(Object.keys(list.statuses).sort(), ["", ...s.services].sort(), `${s.kind}: List`);
    for (const v of Object.values(list.statuses)) t.is(v.status, ServingStatus.SERVING);
  }
});

test.serial("a worker that drains with a task running goes NOT_SERVING before its member key leaves etcd", async (t) => {
  const { worker, release } = await holdingWorker("drain-busy");
  const result = client.run("drain-busy", {});
  await waitFor(() => worker.inFlight === 1, { what: "the task to run on the worker" });

  const rec = await recordStop(worker.address, keys.member("worker", worker.id));
  t.teardown(rec.stop);
  let drainedAt = 0;
  const drained = worker.drain().then(() => (drainedAt = Date.now()));
  await waitFor(() => at(rec.events, "etcd") >= 0 && at(rec.events, "health: NOT_SERVING") >= 0, {
    what: "both NOT_SERVING and the member key's deletion",
  });
  t.log(rec.events.join(" → "));
  t.is(rec.events[0], "health: SERVING");
  t.true(
    at(rec.events, "health: NOT_SERVING") < at(rec.events, "etcd"),
    `NOT_SERVING must come before the member key leaves: ${rec.events.join(" → ")}`,
  );

  // Still draining: the task holds, the server answers, and says NOT_SERVING.
  t.is(drainedAt, 0);
  t.is(worker.inFlight, 1);
  t.is(await check(worker.address), ServingStatus.NOT_SERVING);
  t.is(await check(worker.address, "dsat.v1.WorkerService"), ServingStatus.NOT_SERVING);

  // The running task ends normally, and only then does the drain end.
  const releasedAt = Date.now();
  release();
  await drained;
  t.true(drainedAt >= releasedAt);
  t.log(`drain ended ${drainedAt - releasedAt} ms after the task was released`);
  const r = await result;
  t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  t.is(r.output.json<{ by: string }>().by, worker.id);
  const gone = await t.throwsAsync(check(worker.address));
  t.is(ConnectError.from(gone).code, Code.Unavailable);
});

test.serial("a worker that drains with nothing running goes NOT_SERVING before its member key leaves etcd", async (t) => {
  const { worker } = await holdingWorker("drain-idle");
  const rec = await recordStop(worker.address, keys.member("worker", worker.id));
  t.teardown(rec.stop);
  await worker.drain();
  await waitFor(() => at(rec.events, "etcd") >= 0 && at(rec.events, "health: NOT_SERVING") >= 0, {
    what: "both NOT_SERVING and the member key's deletion",
  });
  t.log(rec.events.join(" → "));
  t.true(at(rec.events, "health: NOT_SERVING") < at(rec.events, "etcd"), rec.events.join(" → "));
});

test.serial("a router that drains with a task held goes NOT_SERVING, is marked draining, and leaves etcd once done", async (t) => {
  const { worker, release } = await holdingWorker("router-drain");
  const result = client.run("router-drain", {});
  await waitFor(() => worker.inFlight === 1 && router.taskCount === 1, { what: "the task to run" });

  const rec = await recordStop(router.address, keys.member("router", router.id), "dsat.v1.RouterService");
  t.teardown(rec.stop);
  let drainedAt = 0;
  const drained = router.drain().then(() => (drainedAt = Date.now()));
  // A draining router stays in etcd, marked draining (clients stop choosing it, and other
  // routers do not take over what it finishes), until what it holds has ended.
  await waitFor(() => at(rec.events, "etcd: member marked draining") >= 0 && at(rec.events, "health: NOT_SERVING") >= 0, {
    what: "both NOT_SERVING and the draining mark",
  });
  t.log(rec.events.join(" → "));
  t.is(rec.events[0], "health: SERVING");
  t.true(
    at(rec.events, "health: NOT_SERVING") < at(rec.events, "etcd: member marked draining"),
    `NOT_SERVING must come before the member is marked draining: ${rec.events.join(" → ")}`,
  );
  t.is(at(rec.events, "etcd: member key deleted"), -1, "it does not leave while it holds a task");

  // Still draining: it says NOT_SERVING and refuses new tasks with UNAVAILABLE.
  t.is(drainedAt, 0);
  t.is(await check(router.address), ServingStatus.NOT_SERVING);
  const refused = await t.throwsAsync(clientTo(RouterService, router.address).submit({ pipeline: "router-drain" }, { timeoutMs: 5_000 }));
  t.is(ConnectError.from(refused).code, Code.Unavailable);

  const releasedAt = Date.now();
  release();
  await drained;
  t.true(drainedAt >= releasedAt);
  t.log(`drain ended ${drainedAt - releasedAt} ms after the task was released`);
  await waitFor(() => at(rec.events, "etcd: member key deleted") >= 0, { what: "the router's key to leave etcd" });
  const r = await result;
  t.is(r.state, State.SUCCEEDED, r.error?.message);
  t.is((await client.getState(r.taskId)).state, State.SUCCEEDED);
});

test.serial("a status server that closes goes NOT_SERVING before its member key leaves etcd", async (t) => {
  const rec = await recordStop(status.address, keys.member("status", status.id), "dsat.v1.StatusService");
  t.teardown(rec.stop);
  const started = Date.now();
  await status.close();
  // A Watch stays open for as long as the server serves; close must end it rather than
  // wait out its 5 s grace for it (a load balancer or a probe keeps one open all the time).
  const closeMs = Date.now() - started;
  t.log(`close took ${closeMs} ms with a health Watch open`);
  t.true(closeMs < 2_000, `an open health Watch held close for ${closeMs} ms`);
  await waitFor(() => at(rec.events, "etcd") >= 0 && at(rec.events, "health: NOT_SERVING") >= 0, {
    what: "both NOT_SERVING and the member key's deletion",
  });
  t.log(rec.events.join(" → "));
  t.true(at(rec.events, "health: NOT_SERVING") < at(rec.events, "etcd"), rec.events.join(" → "));
});
