import test from "ava";
import { Code, ConnectError, connectEtcd, createClient, Keys, parseMember, State, stateName } from "@dsat/sdk";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { startService } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

let mesh: TestMesh;

test.before(async () => {
  mesh = await startMesh({ leaseTtlSeconds: 2 });
  await mesh.client.applyPipeline({ name: "holds", stages: [{ name: "hold" }] });
});

test.after.always(async () => {
  await mesh?.close();
});

test.serial("a member whose lease is lost registers again under a new lease and keeps serving", async (t) => {
  const worker = await mesh.addWorker("hold", "hold");
  const etcd = connectEtcd({ endpoints: mesh.etcd.endpoint });
  try {
    const key = new Keys().member("worker", worker.id);
    const before = (await etcd.get(key).exec()).kvs[0];
    t.truthy(before, "the worker is registered");
    // Take the lease away behind the worker's back, as an etcd restart or a long pause would.
    await etcd.leaseClient.leaseRevoke({ ID: before?.lease ?? "0" });
    await waitFor(async () => (await etcd.get(key).exec()).kvs.length === 0, { what: "the key to go with its lease" });
    const after = await waitFor(async () => (await etcd.get(key).exec()).kvs[0], {
      timeoutMs: 10_000,
      what: "the worker to register again",
    });
    t.not(after.lease, before?.lease);
    const r = await mesh.client.run("holds", { ms: 1 });
    t.is(stateName(r.state), "SUCCEEDED");
    t.is(r.output.json<{ by: string }>().by, worker.id);
  } finally {
    etcd.close();
  }
});

test.serial("a full router answers RESOURCE_EXHAUSTED, and what it accepted still completes", async (t) => {
  const small = await startService("services/router/main.ts", [
    "--etcd", mesh.etcd.endpoint, "--lease-ttl", "2", "--max-tasks", "3",
  ]);
  const client = createClient({ etcd: mesh.etcd.endpoint, routers: [small.address] });
  try {
    await waitFor(async () => {
      const views = await client.listWorkers();
      return views[0]?.workers.some((w) => w.stage === "hold" && w.connected);
    }, { what: "the small router to connect to the hold worker" });
    const accepted = await Promise.all([1, 2, 3].map(() => client.submit("holds", { ms: 800 })));
    const err = await t.throwsAsync(client.submit("holds", { ms: 1 }));
    t.is(ConnectError.from(err).code, Code.ResourceExhausted);
    t.regex(err?.message ?? "", /holds 3 tasks, its limit; retry later or submit to another router/);
    for (const id of accepted) {
      const ended = await waitFor(async () => {
        const s = await client.getState(id);
        return s.state === State.PENDING || s.state === State.RUNNING ? undefined : s;
      }, { timeoutMs: 15_000, what: `task ${id} to end` });
      t.is(stateName(ended.state), "SUCCEEDED", `task ${id}`);
    }
  } finally {
    await client.close();
    await small.kill9();
  }
});

test.serial("back-pressure: SubmitStream waits while the router is full instead of refusing, and nothing is lost", async (t) => {
  const small = await startService("services/router/main.ts", [
    "--etcd", mesh.etcd.endpoint, "--lease-ttl", "2", "--max-tasks", "20",
  ]);
  const client = createClient({ etcd: mesh.etcd.endpoint, routers: [small.address] });
  try {
    await waitFor(async () => (await client.listWorkers())[0]?.workers.some((w) => w.stage === "hold" && w.connected), {
      what: "the small router to connect to the hold worker",
    });
    let peakQueued = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const [view] = await client.listWorkers();
        peakQueued = Math.max(peakQueued, view?.queued.hold ?? 0);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    // 200 tasks at once through one SubmitStream, ten times the router's limit.
    const results = await Promise.all(Array.from({ length: 200 }, () => client.run("holds", { ms: 5 })));
    sampling = false;
    await sampler;
    for (const r of results) t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
    t.true(peakQueued <= 20, `the router never queued more than its limit (peak ${peakQueued})`);
    t.log(`peak queue at the router: ${peakQueued} tasks (limit 20)`);
  } finally {
    await client.close();
    await small.kill9();
  }
});

test.serial("--advertise: a worker listening on 0.0.0.0 registers the address given, and the router reaches it there", async (t) => {
  // 127.0.0.2 is loopback too (Linux routes 127.0.0.0/8 to lo): the router can only reach
  // the worker through it if it dials what etcd says rather than where the worker listens.
  const worker = await mesh.addWorker("advertised", "echo", ["--host", "0.0.0.0", "--advertise", "127.0.0.2"]);
  const etcd = connectEtcd({ endpoints: mesh.etcd.endpoint });
  try {
    const kv = (await etcd.get(new Keys().member("worker", worker.id)).exec()).kvs[0];
    const member = kv ? parseMember(kv.value) : undefined;
    t.regex(member?.address ?? "", /^127\.0\.0\.2:\d+$/);
    t.is(worker.address, member?.address ?? "", "the ready line says the same address");
    await mesh.client.applyPipeline({ name: "advertised", stages: [{ name: "advertised" }] });
    await waitFor(
      async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).some((w) => w.id === worker.id && w.connected),
      { what: "the router to connect to the worker at its advertised address" },
    );
    const r = await mesh.client.run("advertised", { via: "127.0.0.2" }, { deadline: 10_000 });
    t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  } finally {
    etcd.close();
    await worker.stop();
  }
});
