import { spawnSync } from "node:child_process";
import { connect } from "node:http2";
import { join } from "node:path";
import test from "ava";
import { Code, ConnectError, createClient, State, stateName } from "@dsat/sdk";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { ROOT } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

let mesh: TestMesh;

test.before(async () => {
  mesh = await startMesh({ leaseTtlSeconds: 2, routers: 2, status: 2 });
  const ms = (v: number) => ({ seconds: BigInt(Math.floor(v / 1000)), nanos: (v % 1000) * 1e6 });
  await mesh.client.applyPipeline({
    name: "retries",
    stages: [{ name: "flaky", retry: { maxAttempts: 3, initialBackoff: ms(20), maxBackoff: ms(100) } }],
  });
  await mesh.client.applyPipeline({
    name: "strict",
    stages: [{ name: "flaky", retry: { maxAttempts: 3, initialBackoff: ms(20), nonRetryableCodes: ["UNKNOWN"] } }],
  });
  await mesh.client.applyPipeline({ name: "holds", stages: [{ name: "hold" }] });
  await mesh.client.applyPipeline({ name: "echoes", stages: [{ name: "echo" }] });
  await Promise.all([
    mesh.addWorker("flaky", "flaky"),
    mesh.addWorker("hold", "hold", ["--concurrency", "2"]),
    mesh.addWorker("echo", "echo", ["--concurrency", "8"]),
  ]);
});

test.after.always(async () => {
  await mesh?.close();
});

const history = async (id: string) =>
  (await mesh.client.getState(id, { history: true })).history.map((t) => `${t.stage || "task"}#${t.attempt}:${stateName(t.to)}`);

test.serial("a stage that fails is retried by its policy, with RETRYING and the attempt on every transition", async (t) => {
  const r = await mesh.client.run("retries", { failures: 2 });
  t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  t.is(r.output.json<{ attempt: number }>().attempt, 3);
  const h = (await history(r.taskId)).filter((s) => s.startsWith("flaky"));
  t.deepEqual(h, [
    "flaky#1:PENDING",
    "flaky#1:DISPATCHED",
    "flaky#1:RUNNING",
    "flaky#1:FAILED",
    "flaky#1:RETRYING",
    "flaky#2:DISPATCHED",
    "flaky#2:RUNNING",
    "flaky#2:FAILED",
    "flaky#2:RETRYING",
    "flaky#3:DISPATCHED",
    "flaky#3:RUNNING",
    "flaky#3:SUCCEEDED",
  ]);
});

test.serial("retries are bounded, and codes marked never-retry are not retried", async (t) => {
  const used = await mesh.client.run("retries", { failures: 5 });
  t.is(stateName(used.state), "FAILED");
  t.regex(used.error?.message ?? "", /stage "flaky" failed \(attempt 3\): flaky failure on attempt 3/);
  const strict = await mesh.client.run("strict", { failures: 5 });
  t.is(stateName(strict.state), "FAILED");
  t.regex(strict.error?.message ?? "", /\(attempt 1\)/);
  const invalid = await mesh.client.run("retries", { failures: 5, code: "INVALID_ARGUMENT" });
  t.regex(invalid.error?.message ?? "", /\(attempt 1\): bad input on attempt 1/);
  t.is(invalid.error?.code, "INVALID_ARGUMENT");
});

test.serial("cancel stops a running handler, a queued task, and works from any router", async (t) => {
  const [routerA, routerB] = mesh.routers.map((r) => r.address);
  const viaA = createClient({ etcd: mesh.etcd.endpoint, routers: [routerA as string] });
  const viaB = createClient({ etcd: mesh.etcd.endpoint, routers: [routerB as string] });
  try {
    // Two long tasks fill the hold worker's two slots; a third waits in the queue.
    const running = [await viaA.submit("holds", { ms: 20_000 }), await viaA.submit("holds", { ms: 20_000 })];
    await waitFor(async () => {
      const states = await Promise.all(running.map((id) => viaA.getState(id)));
      return states.every((s) => s.stages[0]?.state === State.RUNNING);
    }, { what: "both long tasks to run" });
    const queued = await viaA.submit("holds", { ms: 20_000 });
    t.is((await viaA.getState(queued)).stages[0]?.state, State.PENDING);

    // The queued one first, through the other router (etcd carries it to the one that drives it).
    await viaB.cancel(queued, "cancelled while queued");
    await waitFor(async () => (await viaA.getState(queued)).state === State.CANCELLED, { what: "the queued task to be CANCELLED" });
    await viaA.cancel(running[0] as string, "not needed any more");
    await viaB.cancel(running[1] as string, "cancelled through the other router");
    for (const id of running) {
      await waitFor(async () => (await viaA.getState(id)).state === State.CANCELLED, { what: `task ${id} to be CANCELLED` });
    }
    const s0 = await viaA.getState(running[0] as string);
    t.is(s0.stages[0]?.state, State.CANCELLED);
    t.is(s0.error?.message, "not needed any more");
    t.is((await viaA.getState(running[1] as string)).error?.message, "cancelled through the other router");
    const q = await history(queued);
    t.false(q.some((s) => s.endsWith("DISPATCHED")), "the queued task was never dispatched");
    // The slots are free again: a short task runs at once.
    const r = await viaA.run("holds", { ms: 1 });
    t.is(stateName(r.state), "SUCCEEDED");
    const err = await t.throwsAsync(viaB.cancel("no-such-task"));
    t.is(ConnectError.from(err).code, Code.NotFound);
  } finally {
    await viaA.close();
    await viaB.close();
  }
});

test.serial("a task deadline covers the whole pipeline: the task is TIMED_OUT when it passes", async (t) => {
  const r = await mesh.client.run("holds", { ms: 10_000 }, { deadline: 400 });
  t.is(stateName(r.state), "TIMED_OUT");
  t.regex(r.error?.message ?? "", /deadline/);
  const err = await t.throwsAsync(mesh.client.submit("holds", {}, { deadline: new Date(Date.now() - 1000) }));
  t.is(ConnectError.from(err).code, Code.DeadlineExceeded);
});

test.serial("a payload over the limit is RESOURCE_EXHAUSTED and the router keeps serving", async (t) => {
  const big = new Uint8Array(4 * 1024 * 1024 + 1);
  const err = await t.throwsAsync(mesh.client.submit("echoes", big));
  t.is(ConnectError.from(err).code, Code.ResourceExhausted);
  t.is(stateName((await mesh.client.run("echoes", 1)).state), "SUCCEEDED");
});

test.serial("garbage bytes on a call end that call alone", async (t) => {
  const address = mesh.routers[0]?.address as string;
  const session = connect(`http://${address}`);
  try {
    const status = await new Promise<string>((resolve, reject) => {
      const req = session.request({
        ":method": "POST",
        ":path": "/dsat.v1.RouterService/Submit",
        "content-type": "application/grpc",
        te: "trailers",
      });
      let grpcStatus = "";
      req.on("response", (h) => {
        if (h["grpc-status"]) grpcStatus = String(h["grpc-status"]);
      });
      req.on("trailers", (h) => {
        grpcStatus = String(h["grpc-status"] ?? grpcStatus);
      });
      req.on("end", () => resolve(grpcStatus));
      req.on("error", reject);
      req.resume();
      // A gRPC frame whose 9 bytes are not a SubmitRequest.
      req.end(Buffer.from([0, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
    });
    t.not(status, "0");
    t.not(status, "");
  } finally {
    session.close();
  }
  t.is(stateName((await mesh.client.run("echoes", 2)).state), "SUCCEEDED");
});

test.serial("a status server killed with -9 loses no transition, and a watch resumes without gaps or repeats", async (t) => {
  const ids = await Promise.all(Array.from({ length: 30 }, () => mesh.client.submit("holds", { ms: 300 })));
  const watched = ids[0] as string;
  const seen: bigint[] = [];
  // This client watches through the first status server, the one that is killed.
  const watcher = createClient({ etcd: mesh.etcd.endpoint, status: mesh.status.map((s) => s.address) });
  const watching = (async () => {
    for await (const tr of watcher.watch(watched)) seen.push(tr.seq);
  })();
  try {
    await waitFor(() => seen.length >= 2, { what: "the watch to be under way" });
    await mesh.status[0]?.kill9();
    await watching;
  } finally {
    await watcher.close();
  }
  const expected = (await mesh.client.getState(watched, { history: true })).history.map((h) => h.seq);
  t.deepEqual(seen, expected);
  for (const id of ids) {
    await waitFor(async () => (await mesh.client.getState(id)).state === State.SUCCEEDED, { timeoutMs: 20_000, what: `task ${id}` });
  }
  const h = await mesh.client.getState(ids[29] as string, { history: true });
  t.deepEqual(h.history.map((x) => x.seq), h.history.map((_, i) => BigInt(i + 1)));
});

test.serial("large payloads never share a message past the gRPC limit", async (t) => {
  const pad = "x".repeat(3 * 1024 * 1024);
  const results = await Promise.all([1, 2, 3].map((i) => mesh.client.run("holds", { ms: i, pad })));
  for (const r of results) t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
});

test.serial("dead letters: List finds failed tasks with their input, and dsat retry submits one again", async (t) => {
  const failed = await mesh.client.run("retries", { failures: 9 });
  t.is(stateName(failed.state), "FAILED");
  const page = await mesh.client.list({ pipeline: "retries", states: [State.FAILED], pageSize: 1000 });
  const dead = page.tasks.find((s) => s.task?.id === failed.taskId);
  t.truthy(dead, "List finds the failed task");
  t.deepEqual(JSON.parse(new TextDecoder().decode(dead?.task?.payload)), { failures: 9 });
  t.regex(dead?.error?.message ?? "", /flaky failure on attempt 3/);

  // A cancelled task, retried: the new task runs to its end.
  const id = await mesh.client.submit("holds", { ms: 1500 });
  await waitFor(async () => (await mesh.client.getState(id)).stages[0]?.state === State.RUNNING, { what: "the task to run" });
  await mesh.client.cancel(id, "cancelled to be retried");
  await waitFor(async () => (await mesh.client.getState(id)).state === State.CANCELLED, { what: "the task to be CANCELLED" });
  const r = spawnSync(join(ROOT, "services/cli/bin/dsat"), ["retry", id, "--wait", "--etcd", mesh.etcd.endpoint], {
    encoding: "utf8",
    timeout: 60_000,
  });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, new RegExp(`SUCCEEDED \\(retry of ${id}\\)`));
  const again = spawnSync(join(ROOT, "services/cli/bin/dsat"), ["retry", failed.taskId, "--etcd", mesh.etcd.endpoint], {
    encoding: "utf8",
    timeout: 60_000,
  });
  t.is(again.status, 0, again.stderr);
  const running = spawnSync(join(ROOT, "services/cli/bin/dsat"), ["retry", r.stdout.split(" ")[0] ?? "", "--etcd", mesh.etcd.endpoint], {
    encoding: "utf8",
    timeout: 60_000,
  });
  t.is(running.status, 1);
  t.regex(running.stderr, /is SUCCEEDED: only a task that FAILED, TIMED_OUT or was CANCELLED can be retried/);
});

test.serial("a task keeps the pipeline version it was submitted with when the pipeline changes mid-flight", async (t) => {
  const v1 = await mesh.client.applyPipeline({ name: "versioned", stages: [{ name: "hold" }] });
  const early = await mesh.client.submit("versioned", { ms: 1200 });
  await waitFor(async () => (await mesh.client.getState(early)).stages[0]?.state === State.RUNNING, { what: "the first task to run" });
  const v2 = await mesh.client.applyPipeline({ name: "versioned", stages: [{ name: "hold" }, { name: "echo" }] });
  t.is(v2.pipeline.version, v1.pipeline.version + 1n);
  const late = await mesh.client.run("versioned", { ms: 1 });
  const ended = await waitFor(async () => {
    const s = await mesh.client.getState(early);
    return s.state === State.SUCCEEDED ? s : undefined;
  }, { timeoutMs: 15_000, what: "the first task to end" });
  t.is(ended.task?.pipelineVersion, v1.pipeline.version);
  t.deepEqual(ended.stages.map((s) => s.name), ["hold"], "the first task ran version 1: hold only");
  const lateState = await mesh.client.getState(late.taskId);
  t.is(lateState.task?.pipelineVersion, v2.pipeline.version);
  t.deepEqual(lateState.stages.map((s) => s.name), ["hold", "echo"], "a task submitted after the change runs version 2");
});
