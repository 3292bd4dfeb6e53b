import { create } from "@bufbuild/protobuf";
import test from "ava";
import {
  AsyncQueue,
  Code,
  DSAT_VERSION,
  ConnectError,
  clientTo,
  type ProcessRequest,
  ProcessRequestSchema,
  State,
  stateName,
  WorkerService,
} from "@dsat/sdk";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { waitFor } from "./helpers/wait.ts";
import { sameAttemptOnTwoStreams } from "./helpers/worker-streams.ts";

let mesh: TestMesh;

test.before(async () => {
  mesh = await startMesh({ leaseTtlSeconds: 2 });
  await mesh.client.applyPipeline({ name: "throws", stages: [{ name: "boom" }] });
  await mesh.client.applyPipeline({
    name: "overruns",
    stages: [{ name: "overrun", timeout: { seconds: 0n, nanos: 500_000_000 } }],
  });
  await mesh.client.applyPipeline({ name: "holds", stages: [{ name: "hold" }] });
  await mesh.client.applyPipeline({ name: "echoes", stages: [{ name: "echo" }] });
  await Promise.all([mesh.addWorker("boom", "boom"), mesh.addWorker("overrun", "overrun")]);
});

test.after.always(async () => {
  await mesh?.close();
});

test.serial("a handler that throws gives FAILED with its message", async (t) => {
  const r = await mesh.client.run("throws", "x");
  t.is(stateName(r.state), "FAILED");
  t.regex(r.error?.message ?? "", /stage "boom" failed \(attempt 1\): boom on "x"/);
  const s = await mesh.client.getState(r.taskId);
  t.is(s.state, State.FAILED);
  t.is(s.stages[0]?.state, State.FAILED);
  t.regex(s.error?.message ?? "", /boom on "x"/);
});

test.serial("a handler that overruns its stage timeout gives TIMED_OUT", async (t) => {
  const r = await mesh.client.run("overruns", {});
  t.is(stateName(r.state), "TIMED_OUT");
  t.regex(r.error?.message ?? "", /ran over its timeout of 500 ms/);
  t.is(r.error?.code, "DEADLINE_EXCEEDED");
});

test.serial("a worker killed with -9 leaves the membership within its lease TTL and gets no new task", async (t) => {
  const doomed = await mesh.addWorker("hold", "hold", ["--concurrency", "4"]);
  const survivor = await mesh.addWorker("hold", "hold", ["--concurrency", "4"]);
  await waitFor(async () => {
    const views = await mesh.client.listWorkers();
    return views.flatMap((v) => v.workers).filter((w) => w.stage === "hold" && w.connected).length === 2;
  }, { what: "two hold workers connected" });

  // Tasks in flight on both; the one on the doomed worker must go to the survivor.
  const inFlight = Array.from({ length: 8 }, () => mesh.client.run("holds", { ms: 1500 }));
  await waitFor(async () => {
    const views = await mesh.client.listWorkers();
    const w = views.flatMap((v) => v.workers).find((x) => x.id === doomed.id);
    return (w?.inFlight ?? 0) > 0;
  }, { what: "a task running on the doomed worker" });
  const killedAt = Date.now();
  await doomed.kill9();

  // Gone from etcd within the TTL (2 s) plus etcd's lease-expiry granularity.
  await waitFor(async () => !(await mesh.client.members()).some((m) => m.id === doomed.id), {
    timeoutMs: 2_000 + 2_000,
    what: "the killed worker's member record to lapse",
  });
  t.log(`member record gone ${Date.now() - killedAt} ms after kill -9 (lease TTL 2000 ms)`);

  const first = await Promise.all(inFlight);
  for (const r of first) t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  t.true(first.every((r) => r.output.json<{ by: string }>().by === survivor.id), "redelivered tasks ran on the survivor");

  const later = await Promise.all(Array.from({ length: 20 }, () => mesh.client.run("holds", { ms: 1 })));
  for (const r of later) {
    t.is(stateName(r.state), "SUCCEEDED");
    t.is(r.output.json<{ by: string }>().by, survivor.id);
  }
  const redelivered = await Promise.all(first.map((r) => mesh.client.getState(r.taskId)));
  t.true(redelivered.some((s) => (s.stages[0]?.attempt ?? 0) > 1), "at least one task was dispatched again");
});

test.serial("a worker of another X.Y is refused with FAILED_PRECONDITION", async (t) => {
  const alien = await mesh.addWorker("echo", "echo", ["--protocol-version", "9.9.0"]);
  const good = await mesh.addWorker("echo", "echo");
  const refused = await waitFor(async () => {
    const views = await mesh.client.listWorkers();
    return views.flatMap((v) => v.workers).find((w) => w.id === alien.id && w.refusedCode !== 0);
  }, { what: "the router to refuse the 9.9.0 worker" });
  t.is(refused.refusedCode, Code.FailedPrecondition);
  t.regex(refused.refusedMessage, new RegExp(`runs dsat 9\\.9\\.0 but router \\S+ runs ${DSAT_VERSION.replaceAll(".", "\\.")}`));
  const results = await Promise.all(Array.from({ length: 10 }, (_, i) => mesh.client.run("echoes", i)));
  for (const r of results) t.is(r.output.json<{ by: string }>().by, good.id);

  // The worker side refuses a router of another X.Y the same way.
  const requests = new AsyncQueue<ProcessRequest>();
  requests.push(create(ProcessRequestSchema, {}));
  const stream = clientTo(WorkerService, good.address).process(requests, {
    headers: { "dsat-version": "3.1.0", "dsat-router-id": "router-from-the-future" },
  });
  const err = await t.throwsAsync(async () => {
    for await (const _ of stream) {
      // Nothing arrives before the refusal.
    }
  });
  requests.end();
  t.is(ConnectError.from(err).code, Code.FailedPrecondition);
  t.regex(err?.message ?? "", new RegExp(`router router-from-the-future runs dsat 3\\.1\\.0 but worker \\S+ runs ${DSAT_VERSION.replaceAll(".", "\\.")}`));
});

test.serial("two routers that give a worker the same attempt get two runs, and a cancel from one stops only its own", async (t) => {
  // A router that took a task over from another (presumed dead, but alive) can dispatch an
  // attempt number the other had dispatched too: each is its own run, answered on its stream.
  const w = await mesh.addWorker("twostreams", "hold", ["--concurrency", "2"]);
  const seen = await sameAttemptOnTwoStreams(w.address, "twostreams");
  t.deepEqual(seen.a, ["RUNNING", "CANCELLED"]);
  t.deepEqual(seen.b, ["RUNNING", "SUCCEEDED"]);
});
