// The index of unfinished tasks (services/status/open-index.ts), against a real etcd and
// real status servers: kept with every write, read by ClaimTasks instead of every record,
// and built for records that older status servers wrote.
import { create, toBinary, toJsonString } from "@bufbuild/protobuf";
import {
  clientTo,
  connectEtcd,
  Keys,
  MemberKind,
  MemberSchema,
  registerMember,
  State,
  StatusService,
  TaskStateSchema,
  TransitionSchema,
} from "@dsat/sdk";
import test from "ava";
import type { Etcd3 } from "etcd3";
import { StatusServer } from "../services/status/status-server.ts";
import { startEtcd, type TestEtcd } from "./helpers/etcd.ts";
import { waitFor } from "./helpers/wait.ts";

process.env.DSAT_LOG_LEVEL ??= "error";

// Each test has an etcd of its own: the index is a property of the whole store.
async function setup(t: { teardown(fn: () => Promise<void> | void): void }) {
  const etcd: TestEtcd = await startEtcd();
  const kv: Etcd3 = connectEtcd({ endpoints: etcd.endpoint });
  const servers: StatusServer[] = [];
  t.teardown(async () => {
    for (const s of servers) await s.close();
    kv.close();
    await etcd.close();
  });
  const start = async () => {
    const s = await StatusServer.start({ etcd: etcd.endpoint });
    servers.push(s);
    return s;
  };
  return { etcd, kv, start };
}

const keys = new Keys();

/** The index entries in etcd, as "router/task". */
async function entries(kv: Etcd3): Promise<string[]> {
  const all = await kv.getAll().prefix(keys.openTasks()).keys();
  return all.map((k) => {
    const e = keys.parseOpenTask(k);
    return e ? `${e.routerId}/${e.taskId}` : `unparsed ${k}`;
  }).sort();
}

/** Puts task records straight into etcd, as a status server of an older dsat (no index) would. */
async function putRecords(kv: Etcd3, records: { id: string; routerId: string; state: State }[]): Promise<void> {
  for (let i = 0; i < records.length; i += 100) {
    const chunk = records.slice(i, i + 100);
    await kv.kv.txn({
      success: chunk.map((r) => ({
        request_put: {
          key: Buffer.from(keys.task(r.id)),
          value: Buffer.from(
            toBinary(TaskStateSchema, create(TaskStateSchema, { task: { id: r.id, pipeline: "p" }, routerId: r.routerId, state: r.state })),
          ),
        },
      })),
    });
  }
}

/** Registers a status server of 0.1.1, which does not keep the index. */
const registerOlderStatus = (kv: Etcd3, id: string) =>
  registerMember(kv, create(MemberSchema, { id, kind: MemberKind.STATUS, address: "127.0.0.1:9", version: "0.1.1" }), {
    leaseTtlSeconds: 10,
  });

const end = (taskId: string, to: State) =>
  create(TransitionSchema, { taskId, stage: "", attempt: 0, from: State.PENDING, to, memberId: "test" });

test("the index follows each record: an entry while the task is unfinished, under the router that drives it", async (t) => {
  const { kv, start } = await setup(t);
  const server = await start();
  await waitFor(() => server.openIndexUsable, { what: "the index to be complete" });
  const status = clientTo(StatusService, server.address);

  await status.report({ routerId: "router-a", created: ["t1", "t2", "t3"].map((id) => ({ id, pipeline: "p" })) });
  t.deepEqual(await entries(kv), ["router-a/t1", "router-a/t2", "router-a/t3"]);

  await status.report({ routerId: "router-a", transitions: [end("t1", State.CANCELLED)] });
  t.deepEqual(await entries(kv), ["router-a/t2", "router-a/t3"], "an ended task leaves the index");

  const claimed = await status.claimTasks({ fromRouterId: "router-a", toRouterId: "router-b", pageSize: 100 });
  t.deepEqual(claimed.tasks.map((s) => s.task?.id).sort(), ["t2", "t3"]);
  t.deepEqual(await entries(kv), ["router-b/t2", "router-b/t3"], "a claim moves the entries with the tasks");

  // A task stored once, created and ended in one Report, never has an entry.
  await status.report({ routerId: "router-b", created: [{ id: "t4", pipeline: "p" }], transitions: [end("t4", State.CANCELLED)] });
  t.deepEqual(await entries(kv), ["router-b/t2", "router-b/t3"]);
});

test("ClaimTasks reads the index, not every record: one call finds a dead router's tasks behind 6,000 ended ones", async (t) => {
  const { kv, start } = await setup(t);
  // 6,000 ended records first in key order: more than one call may read (5,000).
  await putRecords(kv, Array.from({ length: 6000 }, (_, i) => ({ id: `a-${String(i).padStart(5, "0")}`, routerId: "router-old", state: State.SUCCEEDED })));
  const server = await start();
  await waitFor(() => server.openIndexUsable, { what: "the index to be complete" });
  const status = clientTo(StatusService, server.address);
  await status.report({ routerId: "router-dead", created: ["z-1", "z-2", "z-3"].map((id) => ({ id, pipeline: "p" })) });

  const one = await status.claimTasks({ toRouterId: "router-live", pageSize: 200 });
  t.deepEqual(one.tasks.map((s) => s.task?.id).sort(), ["z-1", "z-2", "z-3"], "every unregistered router's unfinished task");
  t.is(one.nextPageToken, "", "in one call: the ended records were not read");
  t.true(one.tasks.every((s) => s.routerId === "router-live"));
  t.deepEqual(await entries(kv), ["router-live/z-1", "router-live/z-2", "router-live/z-3"]);
});

test("ClaimTasks pages through the index with include_own: own tasks first (marked), then the others, each once", async (t) => {
  const { kv, start } = await setup(t);
  const server = await start();
  await waitFor(() => server.openIndexUsable, { what: "the index to be complete" });
  const status = clientTo(StatusService, server.address);
  const own = ["own-1", "own-2", "own-3"];
  const theirs = ["x-1", "x-2", "x-3", "x-4", "x-5"];
  await status.report({ routerId: "router-me", created: own.map((id) => ({ id, pipeline: "p" })) });
  await status.report({ routerId: "router-gone", created: theirs.map((id) => ({ id, pipeline: "p" })) });

  // Two pages without include_own: two of the gone router's tasks move.
  const first = await status.claimTasks({ fromRouterId: "router-gone", toRouterId: "router-me", pageSize: 2 });
  t.deepEqual(first.tasks.map((s) => s.task?.id), ["x-1", "x-2"]);
  t.not(first.nextPageToken, "");
  // Then, as after a call whose answer was lost, include_own with the token: every own task
  // comes back first (x-1 and x-2 among them), then the rest of the gone router's.
  const got: string[] = [];
  const owned: string[] = [];
  let token = first.nextPageToken;
  for (let calls = 0; calls < 20; calls++) {
    const res = await status.claimTasks({ fromRouterId: "router-gone", toRouterId: "router-me", pageSize: 2, pageToken: token, includeOwn: true });
    got.push(...res.tasks.map((s) => s.task?.id ?? ""));
    owned.push(...res.alreadyOwned);
    token = res.nextPageToken;
    if (!token) break;
  }
  t.is(token, "", "the pages end");
  t.deepEqual([...got].sort(), [...own, ...theirs].sort(), "every task once");
  t.deepEqual([...owned].sort(), [...own, "x-1", "x-2"].sort(), "own ones said so");
  t.deepEqual(await entries(kv), [...own, ...theirs].map((id) => `router-me/${id}`).sort());

  // A token that is neither a task key nor one of the index is refused.
  const bad = await status.claimTasks({ fromRouterId: "router-gone", toRouterId: "router-me", pageToken: "c:bm9wZQ" }).catch((e: unknown) => e);
  t.regex(String(bad), /page_token is not one that ClaimTasks returned/);
});

test("a rolling upgrade: while an older status server is registered claims read every record; once it left, the records it wrote are indexed", async (t) => {
  const { kv, start } = await setup(t);
  // An older status server, and records that it wrote: no index entries.
  const old = await registerOlderStatus(kv, "status-0.1.1");
  await putRecords(kv, [
    { id: "legacy-1", routerId: "router-gone", state: State.RUNNING },
    { id: "legacy-2", routerId: "router-gone", state: State.RUNNING },
    { id: "legacy-3", routerId: "router-gone", state: State.PENDING },
    { id: "legacy-done", routerId: "router-gone", state: State.SUCCEEDED },
  ]);
  const server = await start();
  const status = clientTo(StatusService, server.address);
  await server.openIndexSettled();
  t.false(server.openIndexUsable, "not used while an older status server is registered");
  t.false(await kv.get(keys.openIndexMarker()).exists());
  // The claim still finds the unindexed records, by reading every record.
  const one = await status.claimTasks({ fromRouterId: "router-gone", toRouterId: "router-a", pageSize: 1 });
  t.deepEqual(one.tasks.map((s) => s.task?.id), ["legacy-1"]);

  // A stale entry, as an older server leaves when it ends a task that a newer one indexed.
  await kv.put(keys.openTask("router-gone", "legacy-done")).value("");

  await old.close();
  await waitFor(() => server.openIndexUsable, { what: "the index to be built once the older server left" });
  t.true(await kv.get(keys.openIndexMarker()).exists(), "the marker says the index is complete");
  t.deepEqual(await entries(kv), ["router-a/legacy-1", "router-gone/legacy-2", "router-gone/legacy-3", "router-gone/legacy-done"]);

  // A claim begun with a full scan goes on with it; the next one begun afresh reads the
  // index, and drops the stale entry.
  const rest = await status.claimTasks({ fromRouterId: "router-gone", toRouterId: "router-a", pageSize: 100, pageToken: one.nextPageToken });
  t.deepEqual(rest.tasks.map((s) => s.task?.id).sort(), ["legacy-2", "legacy-3"]);
  const none = await status.claimTasks({ fromRouterId: "router-gone", toRouterId: "router-a", pageSize: 100 });
  t.deepEqual(none.tasks, []);
  t.deepEqual(await entries(kv), ["router-a/legacy-1", "router-a/legacy-2", "router-a/legacy-3"], "the stale entry is deleted");

  // An older server comes back (a rollback): the marker goes, and claims read every record again.
  const again = await registerOlderStatus(kv, "status-0.1.1-b");
  await waitFor(() => !server.openIndexUsable, { what: "the index to be set aside" });
  await waitFor(async () => !(await kv.get(keys.openIndexMarker()).exists()), { what: "the marker to be deleted" });
  await again.close();
  await waitFor(() => server.openIndexUsable, { what: "the index to be built again" });
});

test("status servers upgraded together: one of them builds the index, the others take its marker", async (t) => {
  const { kv, start } = await setup(t);
  const old = await registerOlderStatus(kv, "status-0.1.1");
  const legacy = Array.from({ length: 3_000 }, (_, i) => ({
    id: `legacy-${String(i).padStart(4, "0")}`,
    routerId: `router-${i % 3}`,
    state: i % 2 === 0 ? State.RUNNING : State.SUCCEEDED,
  }));
  await putRecords(kv, legacy);
  const servers = await Promise.all([start(), start(), start()]);
  for (const s of servers) await s.openIndexSettled();
  t.true(servers.every((s) => !s.openIndexUsable));

  // The older server leaves: each newer one wants the index at once, one of them builds it.
  await old.close();
  await waitFor(() => servers.every((s) => s.openIndexUsable), { what: "every status server to read the index", timeoutMs: 30_000 });
  t.deepEqual(
    servers.map((s) => s.openIndexBuilds).sort(),
    [0, 0, 1],
    "the records were read by one status server",
  );
  t.is((await entries(kv)).length, 1_500, "every unfinished record has its entry");
  t.false(await kv.get(keys.openIndexBuildLock()).exists(), "the build lock is released");
});

test("a build lock whose holder is gone does not stop the index: once its lease ends, a status server builds", async (t) => {
  const { kv, start } = await setup(t);
  await putRecords(kv, [{ id: "legacy-1", routerId: "router-gone", state: State.RUNNING }]);
  // A status server that took the lock and died: its lease is not kept alive.
  const lease = kv.lease(60, { autoKeepAlive: false });
  await lease.put(keys.openIndexBuildLock()).value("");
  const server = await start();
  await server.openIndexSettled();
  t.false(server.openIndexUsable, "no build while another holds the lock");
  t.is(server.openIndexBuilds, 0);
  t.false(await kv.get(keys.openIndexMarker()).exists());
  // Claims still find the task, by reading every record.
  const status = clientTo(StatusService, server.address);
  const claimed = await status.claimTasks({ fromRouterId: "router-gone", toRouterId: "router-a", pageSize: 10 });
  t.deepEqual(claimed.tasks.map((s) => s.task?.id), ["legacy-1"]);

  // The lease ends (revoked here rather than waited out): the server, looking again, builds.
  await lease.revoke();
  await waitFor(() => server.openIndexUsable, { what: "the index to be built once the lock is free", timeoutMs: 30_000 });
  t.is(server.openIndexBuilds, 1);
  t.deepEqual(await entries(kv), ["router-a/legacy-1"]);
});

test("ClaimTasks trusts the index only as of one revision: a marker deleted, or an older status server registered, just before the claim sends it to the records", async (t) => {
  const { kv, start } = await setup(t);
  const server = await start();
  await waitFor(() => server.openIndexUsable, { what: "the index to be complete" });
  const status = clientTo(StatusService, server.address);

  // The marker deleted behind this server's back (as another status server does when it sees
  // an older peer), and a record without an entry (as an older server writes).
  await kv.delete().key(keys.openIndexMarker());
  await putRecords(kv, [{ id: "unindexed-1", routerId: "router-gone", state: State.RUNNING }]);
  const one = await status.claimTasks({ fromRouterId: "router-gone", toRouterId: "router-a", pageSize: 10 });
  t.deepEqual(one.tasks.map((s) => s.task?.id), ["unindexed-1"], "found by reading the records");
  await waitFor(() => server.openIndexUsable, { what: "the index to be built again" });
  t.true(await kv.get(keys.openIndexMarker()).exists());

  // An older status server that registers and writes a record in the same revision: a claim
  // sent at once, before the membership watch may have told this server, reads the records.
  const older = create(MemberSchema, { id: "status-0.1.1", kind: MemberKind.STATUS, address: "127.0.0.1:9", version: "0.1.1" });
  const lease = kv.lease(30);
  t.teardown(() => lease.revoke().catch(() => {}));
  const leaseId = await lease.grant();
  const record = create(TaskStateSchema, { task: { id: "unindexed-2", pipeline: "p" }, routerId: "router-gone", state: State.RUNNING });
  await kv.kv.txn({
    success: [
      { request_put: { key: Buffer.from(keys.member("status", older.id)), value: Buffer.from(toJsonString(MemberSchema, older)), lease: leaseId } },
      { request_put: { key: Buffer.from(keys.task("unindexed-2")), value: Buffer.from(toBinary(TaskStateSchema, record)) } },
    ],
  });
  const two = await status.claimTasks({ fromRouterId: "router-gone", toRouterId: "router-a", pageSize: 10 });
  t.deepEqual(two.tasks.map((s) => s.task?.id), ["unindexed-2"]);
});
