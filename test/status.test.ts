import { create, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  clientTo,
  Code,
  ConnectError,
  connectEtcd,
  Keys,
  listMembers,
  MemberKind,
  MemberSchema,
  PipelineService,
  createLogger,
  registerMember,
  ReportRequestSchema,
  type PipelineSchema,
  State,
  StatusService,
  TaskStateSchema,
  type Transition,
  TransitionSchema,
} from "@dsat/sdk";
import test from "ava";
import type { Etcd3 } from "etcd3";
import { MetricsRegistry } from "../services/common/metrics.ts";
import { resolveStatusOptions } from "../services/status/options.ts";
import { StatusServer } from "../services/status/status-server.ts";
import { TaskStore } from "../services/status/task-store.ts";
import { spawn } from "node:child_process";
import { fillPastQuota, startEtcd, type TestEtcd } from "./helpers/etcd.ts";
import { parseMetrics } from "./helpers/metrics.ts";
import { ROOT, startService } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

// Refusals are expected here; keep the servers' warnings out of the test output.
process.env.DSAT_LOG_LEVEL ??= "error";

let etcd: TestEtcd;
let server: StatusServer;
let other: StatusServer;
let kv: Etcd3;

test.before(async () => {
  etcd = await startEtcd();
  server = await StatusServer.start({ etcd: etcd.endpoint });
  other = await StatusServer.start({ etcd: etcd.endpoint });
  kv = connectEtcd({ endpoints: etcd.endpoint });
});

test.after.always(async () => {
  await server?.close();
  await other?.close();
  kv?.close();
  await etcd?.close();
});

const status = () => clientTo(StatusService, server.address);
const pipelines = () => clientTo(PipelineService, server.address);

function step(
  taskId: string,
  stage: string,
  attempt: number,
  from: State,
  to: State,
  extra: MessageInitShape<typeof TransitionSchema> = {},
): Transition {
  return create(TransitionSchema, { taskId, stage, attempt, from, to, memberId: "test", ...extra });
}

/** The transitions of a task that runs through `stages` and succeeds (after its creation). */
function lifecycle(taskId: string, stages: readonly string[]): Transition[] {
  const out = [step(taskId, "", 0, State.PENDING, State.RUNNING)];
  for (const s of stages) out.push(...stageRun(taskId, s));
  out.push(step(taskId, "", 0, State.RUNNING, State.SUCCEEDED, { output: new TextEncoder().encode("done") }));
  return out;
}

function stageRun(taskId: string, stage: string): Transition[] {
  return [
    step(taskId, stage, 1, State.UNSPECIFIED, State.PENDING),
    step(taskId, stage, 1, State.PENDING, State.DISPATCHED, { workerId: "w-1" }),
    step(taskId, stage, 1, State.DISPATCHED, State.RUNNING, { workerId: "w-1" }),
    step(taskId, stage, 1, State.RUNNING, State.SUCCEEDED, { output: new Uint8Array([1, 2]) }),
  ];
}

async function createTasks(ids: readonly string[], pipeline = "p", address = server.address) {
  const res = await clientTo(StatusService, address).report({
    routerId: "router-test",
    created: ids.map((id) => ({ id, pipeline, pipelineVersion: 1n })),
  });
  for (const o of res.created) if (!o.accepted) throw new Error(`create refused: ${o.reason}`);
  return res;
}

async function reportOne(t: Transition, address = server.address) {
  const res = await clientTo(StatusService, address).report({ transitions: [t] });
  const o = res.transitions[0];
  if (!o) throw new Error("no outcome");
  return o;
}

/** The value stored in etcd for a task, decoded. */
async function stored(taskId: string) {
  const buf = await kv.get(new Keys().task(taskId)).buffer();
  return buf ? fromBinary(TaskStateSchema, buf) : undefined;
}

async function codeOf(p: Promise<unknown>): Promise<Code | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return ConnectError.from(err).code;
  }
}

/** The key of a transition, to compare lists of them regardless of time. */
function describe(t: Transition | undefined): string {
  return t ? `${t.seq}:${t.stage}/${t.attempt}:${State[t.from]}->${State[t.to]}` : "none";
}

/** Runs a Watch to its end in the background; `got` fills as messages arrive. */
function watch(taskId: string, afterSeq = 0n, address = server.address) {
  const got: Transition[] = [];
  const done = (async () => {
    for await (const res of clientTo(StatusService, address).watch({ taskId, afterSeq }, { timeoutMs: 30_000 })) {
      if (res.transition) got.push(res.transition);
    }
    return got;
  })();
  return { got, done };
}

// ---------------------------------------------------------------------------- Report and GetState

test("a task created and driven through a one-stage lifecycle has the right state", async (t) => {
  const id = "life-1";
  const res = await status().report({
    routerId: "router-test",
    created: [{ id, pipeline: "p", pipelineVersion: 3n }],
    transitions: [step(id, "", 0, State.PENDING, State.RUNNING)],
  });
  t.deepEqual(
    res.created.map((o) => [o.accepted, o.duplicate]),
    [[true, false]],
  );
  t.true(res.transitions[0]?.accepted);
  for (const tr of lifecycle(id, ["a"]).slice(1)) {
    const o = await reportOne(tr);
    t.true(o.accepted, o.reason);
    t.false(o.duplicate);
  }
  const { state } = await status().getState({ taskId: id, includeHistory: true });
  t.is(state?.state, State.SUCCEEDED);
  t.is(state?.task?.pipeline, "p");
  t.is(state?.task?.pipelineVersion, 3n);
  t.truthy(state?.task?.createdAt);
  t.is(state?.routerId, "router-test");
  t.is(new TextDecoder().decode(state?.output), "done");
  t.is(state?.seq, 7n);
  t.deepEqual(
    state?.history.map((h) => h.seq),
    [1n, 2n, 3n, 4n, 5n, 6n, 7n],
  );
  t.is(state?.stages.length, 1);
  t.is(state?.stages[0]?.name, "a");
  t.is(state?.stages[0]?.state, State.SUCCEEDED);
  t.is(state?.stages[0]?.workerId, "w-1");
  t.truthy(state?.stages[0]?.startedAt);
  t.truthy(state?.stages[0]?.endedAt);

  const snapshot = await status().getState({ taskId: id });
  t.is(snapshot.state?.history.length, 0, "no history unless asked for");
  t.is(snapshot.state?.seq, 7n);
  // What GetState says is what etcd holds, and another instance says the same.
  t.is((await stored(id))?.history.length, 7);
  const fromOther = await clientTo(StatusService, other.address).getState({ taskId: id, includeHistory: true });
  t.deepEqual(fromOther.state?.history.map(describe), state?.history.map(describe));
});

test("creating a task that exists is a refused duplicate and changes nothing", async (t) => {
  await createTasks(["dup-create"]);
  const res = await status().report({ routerId: "other-router", created: [{ id: "dup-create", pipeline: "q" }] });
  t.deepEqual(
    res.created.map((o) => ({ accepted: o.accepted, duplicate: o.duplicate, reason: o.reason })),
    [{ accepted: false, duplicate: true, reason: "task dup-create exists" }],
  );
  const s = await stored("dup-create");
  t.is(s?.routerId, "router-test");
  t.is(s?.task?.pipeline, "p");
  t.is(s?.seq, 1n);
});

test("a create of a task that a status server never saw is found in etcd: duplicate, replay, and new tasks of the same Report stored once", async (t) => {
  // `other` has not cached these tasks: it takes a created task to be new without reading
  // etcd, and learns otherwise from the fenced put.
  await createTasks(["cold-dup", "cold-replay"]);
  const res = await clientTo(StatusService, other.address).report({
    routerId: "router-test",
    created: [
      { id: "cold-new-1", pipeline: "p" },
      { id: "cold-replay", pipeline: "p" },
      { id: "cold-new-2", pipeline: "p" },
    ],
  });
  t.deepEqual(
    res.created.map((o) => ({ accepted: o.accepted, duplicate: o.duplicate })),
    [
      { accepted: true, duplicate: false },
      { accepted: true, duplicate: true },
      { accepted: true, duplicate: false },
    ],
  );
  const dup = await clientTo(StatusService, other.address).report({
    routerId: "other-router",
    created: [{ id: "cold-dup", pipeline: "q" }],
  });
  t.deepEqual(
    dup.created.map((o) => ({ accepted: o.accepted, duplicate: o.duplicate, reason: o.reason })),
    [{ accepted: false, duplicate: true, reason: "task cold-dup exists" }],
  );
  for (const id of ["cold-dup", "cold-replay", "cold-new-1", "cold-new-2"]) {
    const s = await stored(id);
    t.is(s?.routerId, "router-test", id);
    t.is(s?.task?.pipeline, "p", id);
    t.is(s?.seq, 1n, id);
  }
});

test("an illegal transition is refused and not stored", async (t) => {
  const id = "illegal-1";
  await createTasks([id]);
  for (const tr of stageRun(id, "b")) t.true((await reportOne(tr)).accepted);
  const o = await reportOne(step(id, "b", 1, State.RUNNING, State.PENDING));
  t.false(o.accepted);
  t.false(o.duplicate);
  t.is(o.reason, 'illegal transition at stage "b" attempt 1: RUNNING -> PENDING (the stage is SUCCEEDED)');
  const skip = await reportOne(step(id, "c", 1, State.PENDING, State.RUNNING));
  t.false(skip.accepted);
  t.regex(skip.reason, /stage "c".*the stage is UNSPECIFIED/);
  const s = await stored(id);
  t.is(s?.seq, 5n);
  t.is(s?.history.length, 5);
  t.is(s?.stages.find((x) => x.name === "b")?.state, State.SUCCEEDED);
});

test("a replayed transition is a duplicate and is stored once", async (t) => {
  const id = "replay-1";
  await createTasks([id]);
  const run = stageRun(id, "a");
  for (const tr of run) t.true((await reportOne(tr)).accepted);
  const before = await stored(id);
  // The same transition again, alone and twice in one request.
  const again = await status().report({ transitions: [run[2] as Transition, run[2] as Transition, run[0] as Transition] });
  t.deepEqual(
    again.transitions.map((o) => [o.accepted, o.duplicate]),
    [
      [true, true],
      [true, true],
      [true, true],
    ],
  );
  const after = await stored(id);
  t.is(after?.seq, before?.seq);
  t.is(after?.history.filter((h) => h.stage === "a" && h.to === State.RUNNING).length, 1);
  // Creation plus its transitions sent again in one request: all duplicates.
  const whole = await status().report({ routerId: "router-test", created: [{ id }], transitions: run });
  t.true(whole.created[0]?.duplicate);
  t.true(whole.transitions.every((o) => o.accepted && o.duplicate));
  t.is((await stored(id))?.seq, before?.seq);
});

test("a transition of an unknown task is refused", async (t) => {
  const o = await reportOne(step("never-created", "a", 1, State.UNSPECIFIED, State.PENDING));
  t.false(o.accepted);
  t.is(o.reason, "unknown task never-created");
  t.is(await stored("never-created"), undefined);
});

test("a second task-level terminal transition is refused: one terminal result", async (t) => {
  const id = "terminal-1";
  await createTasks([id]);
  t.true((await reportOne(step(id, "", 0, State.PENDING, State.RUNNING))).accepted);
  t.true((await reportOne(step(id, "", 0, State.RUNNING, State.FAILED, { error: { code: "UNKNOWN", message: "boom" } }))).accepted);
  const second = await reportOne(step(id, "", 0, State.RUNNING, State.SUCCEEDED));
  t.false(second.accepted);
  t.regex(second.reason, /already ended FAILED/);
  // Both in one request, to another instance: still only one.
  const id2 = "terminal-2";
  await createTasks([id2]);
  await reportOne(step(id2, "", 0, State.PENDING, State.RUNNING));
  const both = await clientTo(StatusService, other.address).report({
    transitions: [step(id2, "", 0, State.RUNNING, State.CANCELLED), step(id2, "", 0, State.RUNNING, State.SUCCEEDED)],
  });
  t.deepEqual(
    both.transitions.map((o) => o.accepted),
    [true, false],
  );
  const s = await stored(id);
  t.is(s?.state, State.FAILED);
  t.is(s?.error?.message, "boom");
  t.is(s?.history.filter((h) => h.stage === "" && h.to >= State.SUCCEEDED).length, 1);
  t.is((await stored(id2))?.state, State.CANCELLED);
});

test("a created task may be followed by its transitions in the same request", async (t) => {
  const id = "same-request";
  const res = await status().report({ routerId: "router-test", created: [{ id, pipeline: "p" }], transitions: lifecycle(id, ["a", "b"]) });
  t.true(res.created[0]?.accepted);
  t.true(res.transitions.every((o) => o.accepted && !o.duplicate));
  const s = await stored(id);
  t.is(s?.state, State.SUCCEEDED);
  t.is(s?.seq, BigInt(1 + lifecycle(id, ["a", "b"]).length));
  t.deepEqual(
    s?.stages.map((x) => x.name),
    ["a", "b"],
  );
});

// ---------------------------------------------------------------------------- GetState errors

test("GetState: NOT_FOUND for an unknown task, INVALID_ARGUMENT without an id", async (t) => {
  const err = await status()
    .getState({ taskId: "no-such-task" })
    .then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
  t.is(err?.code, Code.NotFound);
  t.is(err?.rawMessage, 'task "no-such-task" not found');
  t.is(await codeOf(status().getState({ taskId: "" })), Code.InvalidArgument);
});

// ---------------------------------------------------------------------------- Watch

test("Watch from before completion and from after it give the same ordered transitions", async (t) => {
  const id = "watch-1";
  await createTasks([id]);
  const live = watch(id);
  const onOther = watch(id, 0n, other.address);
  // The watches are open (they got the creation) before the task runs.
  await waitFor(() => live.got.length >= 1 && onOther.got.length >= 1, { what: "the first transition on both watches" });
  for (const tr of lifecycle(id, ["a", "b"])) {
    t.true((await reportOne(tr, tr.stage === "b" ? other.address : server.address)).accepted);
  }
  // A stage transition after the terminal one is not part of any Watch.
  t.true((await reportOne(step(id, "z", 1, State.UNSPECIFIED, State.PENDING))).accepted);
  const before = await live.done;
  const before2 = await onOther.done;
  const after = await watch(id).done;
  t.is(before.length, 1 + lifecycle(id, ["a", "b"]).length);
  t.deepEqual(before.map(describe), after.map(describe));
  t.deepEqual(before2.map(describe), after.map(describe));
  t.deepEqual(
    after.map((x) => x.seq),
    after.map((_, i) => BigInt(i + 1)),
  );
  const last = after[after.length - 1];
  t.is(last?.stage, "");
  t.is(last?.to, State.SUCCEEDED);
});

test("Watch with after_seq resumes without repeats", async (t) => {
  const id = "watch-resume";
  await createTasks([id]);
  const steps = lifecycle(id, ["a"]);
  for (const tr of steps.slice(0, 3)) await reportOne(tr);
  const resumed = watch(id, 3n);
  await waitFor(() => resumed.got.length >= 1, { what: "the transitions after seq 3" });
  for (const tr of steps.slice(3)) await reportOne(tr);
  const got = await resumed.done;
  t.deepEqual(
    got.map((x) => x.seq),
    [4n, 5n, 6n, 7n],
  );
  // Resuming after the terminal transition ends at once, with nothing.
  t.deepEqual(await watch(id, 7n).done, []);
});

test("Watch of an unknown task is NOT_FOUND", async (t) => {
  t.is(await codeOf(watch("watch-unknown").done), Code.NotFound);
  t.is(await codeOf(watch("").done), Code.InvalidArgument);
});

test("a cancelled Watch lets go of its etcd watcher and the server carries on", async (t) => {
  const id = "watch-cancel";
  await createTasks([id]);
  const ac = new AbortController();
  const got: Transition[] = [];
  const done = (async () => {
    for await (const res of status().watch({ taskId: id }, { signal: ac.signal })) if (res.transition) got.push(res.transition);
  })();
  await waitFor(() => got.length === 1, { what: "the first transition" });
  ac.abort();
  t.is(await codeOf(done), Code.Canceled);
  t.true((await reportOne(step(id, "", 0, State.PENDING, State.RUNNING))).accepted);
  t.is((await status().getState({ taskId: id })).state?.state, State.RUNNING);
});

// ---------------------------------------------------------------------------- List

test("List filters by pipeline and state and pages through every task once", async (t) => {
  const ids = Array.from({ length: 25 }, (_, i) => `list-${String(i).padStart(2, "0")}`);
  await createTasks(ids, "listed");
  // Every third task runs, so that a state filter has something to tell apart.
  const running = ids.filter((_, i) => i % 3 === 0);
  await status().report({ transitions: running.map((id) => step(id, "", 0, State.PENDING, State.RUNNING)) });

  const seen: string[] = [];
  let token = "";
  let pages = 0;
  do {
    const res = await status().list({ pipeline: "listed", pageSize: 10, pageToken: token });
    t.true(res.tasks.length <= 10);
    t.true(res.tasks.every((x) => x.history.length === 0));
    seen.push(...res.tasks.map((x) => x.task?.id ?? ""));
    token = res.nextPageToken;
    pages++;
  } while (token && pages < 10);
  t.is(pages, 3);
  t.deepEqual(seen, ids);

  const onlyRunning = await status().list({ pipeline: "listed", states: [State.RUNNING], pageSize: 100 });
  t.deepEqual(
    onlyRunning.tasks.map((x) => x.task?.id),
    running,
  );
  t.is(onlyRunning.nextPageToken, "");
  const pendingOrRunning = await status().list({ pipeline: "listed", states: [State.PENDING, State.RUNNING] });
  t.is(pendingOrRunning.tasks.length, 25);
  t.is((await status().list({ pipeline: "no-such-pipeline" })).tasks.length, 0);
  t.is(await codeOf(status().list({ pageToken: "bm90LWEta2V5" })), Code.InvalidArgument);
});

// ---------------------------------------------------------------------------- pipelines

function definition(name: string, stages: string[], edges: [string, string][] = []) {
  return {
    name,
    stages: stages.map((s) => ({ name: s, timeout: durationFromMs(5_000) })),
    edges: edges.map(([from, to]) => ({ from, to })),
  };
}

test("pipelines: apply, get, list; an unchanged apply keeps the version, a change bumps it", async (t) => {
  const first = await pipelines().applyPipeline({ pipeline: definition("ingest", ["fetch", "parse"]) });
  t.true(first.changed);
  t.is(first.pipeline?.version, 1n);
  const same = await pipelines().applyPipeline({ pipeline: { ...definition("ingest", ["fetch", "parse"]), version: 42n } });
  t.false(same.changed);
  t.is(same.pipeline?.version, 1n);
  const changed = await pipelines().applyPipeline({ pipeline: definition("ingest", ["fetch", "parse", "store"]) });
  t.true(changed.changed);
  t.is(changed.pipeline?.version, 2n);
  await pipelines().applyPipeline({ pipeline: definition("another", ["x"]) });

  const current = await clientTo(PipelineService, other.address).getPipeline({ name: "ingest" });
  t.is(current.pipeline?.version, 2n);
  t.deepEqual(
    current.pipeline?.stages.map((s) => s.name),
    ["fetch", "parse", "store"],
  );
  const v1 = await pipelines().getPipeline({ name: "ingest", version: 1n });
  t.deepEqual(
    v1.pipeline?.stages.map((s) => s.name),
    ["fetch", "parse"],
  );
  const list = await pipelines().listPipelines({});
  t.deepEqual(
    list.pipelines.filter((p) => p.name === "another" || p.name === "ingest").map((p) => [p.name, p.version]),
    [
      ["another", 1n],
      ["ingest", 2n],
    ],
  );
  const names = list.pipelines.map((p) => p.name);
  t.deepEqual(names, [...names].sort());

  const missing = await pipelines()
    .getPipeline({ name: "ingest", version: 9n })
    .catch((e: unknown) => ConnectError.from(e));
  t.true(missing instanceof ConnectError);
  t.is((missing as ConnectError).code, Code.NotFound);
  t.regex((missing as ConnectError).rawMessage, /pipeline "ingest" version 9/);
  t.is(await codeOf(pipelines().getPipeline({ name: "nope" })), Code.NotFound);
  t.is(await codeOf(pipelines().getPipeline({ name: "" })), Code.InvalidArgument);
});

test("pipelines: invalid definitions are refused with INVALID_ARGUMENT naming the fault", async (t) => {
  const cases: [string, MessageInitShape<typeof PipelineSchema> | undefined, RegExp][] = [
    ["cycle", definition("cyclic", ["a", "b", "c"], [["a", "b"], ["b", "c"], ["c", "b"]]), /cycle/],
    ["unknown stage in an edge", definition("edgy", ["a", "b"], [["a", "ghost"]]), /unknown stage "ghost"/],
    ["no name", definition("", ["a"]), /no name/],
    ["duplicate stage", definition("twice", ["a", "a"]), /stage "a" is defined twice/],
    ["missing pipeline", undefined, /pipeline is required/],
  ];
  for (const [what, pipeline, re] of cases) {
    const err = await pipelines()
      .applyPipeline({ pipeline })
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    t.is(err?.code, Code.InvalidArgument, what);
    t.regex(err?.rawMessage ?? "", re, what);
  }
  const problems = await pipelines()
    .applyPipeline({ pipeline: definition("", ["a", "a"]) })
    .catch((e: unknown) => ConnectError.from(e));
  t.regex((problems as ConnectError).rawMessage, /no name; .*defined twice/, "every problem, joined");
  t.is(await codeOf(pipelines().getPipeline({ name: "cyclic" })), Code.NotFound, "nothing stored");
});

// ---------------------------------------------------------------------------- two instances

test("two instances reporting interleaved transitions of the same 50 tasks lose none", async (t) => {
  const ids = Array.from({ length: 50 }, (_, i) => `race-${i}`);
  await createTasks(ids, "race", other.address);
  const servers = [server.address, other.address];
  const refusals: string[] = [];
  const send = async (tr: Transition, address: string) => {
    const o = await reportOne(tr, address);
    if (!o.accepted || o.duplicate) refusals.push(`${describe(tr)} ${o.reason}`);
  };
  await Promise.all(
    ids.map(async (id, n) => {
      await send(step(id, "", 0, State.PENDING, State.RUNNING), servers[n % 2] as string);
      // Two stages at once, each alternating between the instances, in opposite phase:
      // both instances write the same key at the same time, with stale caches.
      await Promise.all(
        ["a", "b"].map(async (stage, k) => {
          for (const [i, tr] of stageRun(id, stage).entries()) await send(tr, servers[(i + k + n) % 2] as string);
        }),
      );
      await send(step(id, "", 0, State.RUNNING, State.SUCCEEDED), servers[(n + 1) % 2] as string);
    }),
  );
  t.deepEqual(refusals, []);
  for (const id of ids) {
    const s = await stored(id);
    t.is(s?.state, State.SUCCEEDED, id);
    t.is(s?.history.length, 11, id);
    t.deepEqual(
      s?.history.map((h) => h.seq),
      Array.from({ length: 11 }, (_, i) => BigInt(i + 1)),
      id,
    );
    t.is(s?.seq, 11n, id);
    t.is(new Set(s?.history.map((h) => `${h.stage}/${h.from}->${h.to}`)).size, 11, id);
    t.deepEqual(s?.stages.map((x) => x.state), [State.SUCCEEDED, State.SUCCEEDED], id);
  }
});

// ---------------------------------------------------------------------------- membership

test("task states are stored compact while every status server reads them, whole while an older one is registered", async (t) => {
  const both = () => [server, other];
  await waitFor(() => both().every((s) => s.compactHistory), { what: "both status servers to write compact states" });
  const raw = async (id: string) => {
    const buf = await kv.get(new Keys().task(id)).buffer();
    if (!buf) throw new Error(`task ${id} is not stored`);
    return fromBinary(TaskStateSchema, buf);
  };
  const run = async (id: string) => {
    await createTasks([id]);
    const res = await status().report({ transitions: lifecycle(id, ["a", "b"]) });
    t.true(res.transitions.every((o) => o.accepted));
  };

  const compact = `compact-${Date.now()}`;
  await run(compact);
  const stored1 = await raw(compact);
  t.is(stored1.history.length, 11);
  t.true(stored1.history.every((h) => h.taskId === ""), "compact: no task id in the stored history");
  t.is(stored1.history.at(-1)?.output.length, 0, "compact: the task's result is stored once, in its output");
  t.is(new TextDecoder().decode(stored1.output), "done");
  // Every reader through StatusService sees whole transitions, from either server.
  for (const address of [server.address, other.address]) {
    const got = await clientTo(StatusService, address).getState({ taskId: compact, includeHistory: true });
    t.deepEqual(got.state?.history.map((h) => h.taskId), Array(11).fill(compact));
    t.is(new TextDecoder().decode(got.state?.history.at(-1)?.output), "done");
    const w = watch(compact, 0n, address);
    const watched = await w.done;
    t.deepEqual(watched.map((h) => h.taskId), Array(11).fill(compact));
    t.is(new TextDecoder().decode(watched.at(-1)?.output), "done");
  }

  // A status server of dsat 0.1.0 joins: the others write whole states until it leaves.
  const old = await registerMember(
    kv,
    create(MemberSchema, { id: "status-0.1.0", kind: MemberKind.STATUS, address: "127.0.0.1:9", version: "0.1.0" }),
    { leaseTtlSeconds: 10 },
  );
  try {
    await waitFor(() => both().every((s) => !s.compactHistory), { what: "both status servers to write whole states" });
    const whole = `whole-${Date.now()}`;
    await run(whole);
    const stored2 = await raw(whole);
    t.deepEqual(stored2.history.map((h) => h.taskId), Array(11).fill(whole));
    t.is(new TextDecoder().decode(stored2.history.at(-1)?.output), "done");
  } finally {
    await old.close();
  }
  await waitFor(() => both().every((s) => s.compactHistory), { what: "compact states again once the old server left" });
});

test("a status server keeps only unfinished tasks in memory: an ended task read back for a replay is not kept", async (t) => {
  const metrics = new MetricsRegistry();
  const fresh = await StatusServer.start({ etcd: etcd.endpoint, metrics });
  try {
    const cached = () => parseMetrics(metrics.render()).find((m) => m.name === "dsat_status_cached_tasks")?.value;
    t.is(cached(), 0);
    const running = `cache-running-${Date.now()}`;
    const ended = `cache-ended-${Date.now()}`;
    // Both driven through the shared server: the fresh one never saw them.
    await createTasks([running, ended]);
    const endedSteps = lifecycle(ended, ["a"]);
    const started = step(running, "", 0, State.PENDING, State.RUNNING);
    for (const o of (await status().report({ transitions: [...endedSteps, started] })).transitions) t.true(o.accepted, o.reason);
    // Replays to the fresh server: each task is read from etcd.
    const last = endedSteps.at(-1) as Transition;
    const replayed = await clientTo(StatusService, fresh.address).report({ transitions: [last, started] });
    t.deepEqual(replayed.transitions.map((o) => [o.accepted, o.duplicate]), [[true, true], [true, true]]);
    t.is(cached(), 1, "the running task is kept, the ended one is not");
    // The running task ends through the fresh server: it leaves the cache.
    const end = step(running, "", 0, State.RUNNING, State.FAILED, { error: { code: "E", message: "stopped" } });
    t.true((await clientTo(StatusService, fresh.address).report({ transitions: [end] })).transitions[0]?.accepted);
    t.is(cached(), 0);
  } finally {
    await fresh.close();
  }
});

test("a StatusServer registers as a STATUS member and leaves on close", async (t) => {
  const extra = await StatusServer.start({ etcd: etcd.endpoint, id: "status-extra" });
  t.is(extra.id, "status-extra");
  const members = await listMembers(kv, new Keys().membersOf("status"));
  const me = members.find((m) => m.id === "status-extra");
  t.is(me?.kind, MemberKind.STATUS);
  t.is(me?.address, extra.address);
  t.is(me?.pid, process.pid);
  t.regex(me?.runtime ?? "", /^node\//);
  await extra.close();
  await extra.close();
  const after = await listMembers(kv, new Keys().membersOf("status"));
  t.false(after.some((m) => m.id === "status-extra"));
  t.true(after.some((m) => m.id === server.id) && after.some((m) => m.id === other.id));
});

test("StatusServer.start fails fast with UNAVAILABLE when etcd cannot be reached", async (t) => {
  const began = Date.now();
  const err = await StatusServer.start({ etcd: "127.0.0.1:1", connectTimeoutMs: 1_000 }).then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  t.is(err?.code, Code.Unavailable);
  t.regex(err?.rawMessage ?? "", /cannot reach etcd at 127\.0\.0\.1:1/);
  t.true(Date.now() - began < 10_000);
});

// ---------------------------------------------------------------------------- the process

test("main.ts serves after one ready line, and exits 0 on SIGTERM having left the mesh", async (t) => {
  const p = await startService("services/status/main.ts", ["--etcd", etcd.endpoint, "--port", "0", "--id", "status-process"]);
  t.is(p.kind, "status");
  t.is(p.id, "status-process");
  t.regex(p.address, /^127\.0\.0\.1:\d+$/);
  t.is(await codeOf(clientTo(StatusService, p.address).getState({ taskId: "nothing" })), Code.NotFound);
  await waitFor(async () => (await listMembers(kv, new Keys().membersOf("status"))).some((m) => m.id === "status-process"), {
    what: "the process's registration",
  });
  await p.stop();
  t.is(await p.exited, 0);
  t.false((await listMembers(kv, new Keys().membersOf("status"))).some((m) => m.id === "status-process"));
});

test("main.ts exits 1 with a clear message when etcd cannot be reached", async (t) => {
  const child = spawn(process.execPath, ["--conditions=@dsat/source", "services/status/main.ts", "--etcd", "127.0.0.1:1"], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on("data", (d: Buffer) => {
    err += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  t.is(code, 1);
  t.is(out, "");
  t.regex(err, /^dsat status: cannot reach etcd at 127\.0\.0\.1:1/);
});

// ---------------------------------------------------------------------------- retention

test("retention: an ended task's record goes from etcd once its lease runs out; an unfinished one stays", async (t) => {
  const short = await StatusServer.start({ etcd: etcd.endpoint, taskRetentionMs: 2_000 });
  t.teardown(() => short.close());
  const ended = "retention-ended";
  const running = "retention-running";
  await createTasks([ended, running], "p", short.address);
  for (const tr of lifecycle(ended, ["a"])) t.true((await reportOne(tr, short.address)).accepted);
  t.true((await reportOne(step(running, "", 0, State.PENDING, State.RUNNING), short.address)).accepted);

  const [endedKv] = (await kv.get(new Keys().task(ended)).exec()).kvs;
  const [runningKv] = (await kv.get(new Keys().task(running)).exec()).kvs;
  t.not(endedKv?.lease ?? "0", "0", "the ended task's record is under a lease");
  t.is(runningKv?.lease ?? "0", "0", "an unfinished task's record is under none");
  t.is((await clientTo(StatusService, short.address).getState({ taskId: ended })).state?.state, State.SUCCEEDED);

  // 2 s of retention, buckets of 1 s: gone within 3 s of the last write (and etcd's lease
  // checks run every 500 ms); the deadline leaves room for a slow machine.
  const started = Date.now();
  await waitFor(async () => (await codeOf(clientTo(StatusService, short.address).getState({ taskId: ended }))) === Code.NotFound, {
    timeoutMs: 15_000,
    what: "the ended task's record to expire",
  });
  t.log(`ended task's record gone ${Date.now() - started} ms after its end (retention 2000 ms)`);
  t.is((await stored(running))?.state, State.RUNNING, "the unfinished task is still there");
});

// ---------------------------------------------------------------------------- etcd out of space

test("etcd out of space: Report fails RESOURCE_EXHAUSTED saying what to do; what was stored stays readable", async (t) => {
  const small = await startEtcd(["--quota-backend-bytes", String(4 * 1024 * 1024)]);
  t.teardown(() => small.close());
  const store = await StatusServer.start({ etcd: small.endpoint });
  t.teardown(() => store.close());
  const before = "nospace-before";
  await createTasks([before], "p", store.address);
  // Fill etcd past its 4 MB quota with other keys: it raises its NOSPACE alarm.
  t.true(await fillPastQuota(small.endpoint), "etcd refused a write once past its quota");

  const err = await clientTo(StatusService, store.address)
    .report({ routerId: "router-test", created: [{ id: "nospace-after", pipeline: "p", pipelineVersion: 1n }] })
    .then(() => undefined, (e: unknown) => ConnectError.from(e));
  t.is(err?.code, Code.ResourceExhausted);
  t.regex(err?.rawMessage ?? "", /out of space/);
  t.regex(err?.rawMessage ?? "", /alarm disarm/);
  const { state } = await clientTo(StatusService, store.address).getState({ taskId: before });
  t.is(state?.task?.id, before, "reads still work");
});

test("two claims of one task by the same router at once: one moves it, the other says it was the router's already", async (t) => {
  const store = new TaskStore(kv, resolveStatusOptions({ etcd: kv }), createLogger({}, "silent"));
  const id = "claimed-twice";
  await store.report(create(ReportRequestSchema, { routerId: "router-a", created: [{ id, pipeline: "p", payload: new Uint8Array([1]) }] }));
  // Both claims are queued before the store takes its next batch, as when a router's claim of
  // a router that left and its claim of every unregistered router cross.
  const [first, second] = await Promise.all([
    store.claim([{ taskId: id, from: "router-a" }], "router-b"),
    store.claim([{ taskId: id, from: "router-a" }], "router-b"),
  ]);
  t.is(first[0]?.state.routerId, "router-b", "the first claim moved the task");
  t.false(first[0]?.alreadyOwned);
  t.is(second[0]?.state.routerId, "router-b");
  t.true(second[0]?.alreadyOwned, "the second one found it moved already: the router goes on with the run it has");
  t.is((await store.read(id))?.state.routerId, "router-b");
  // A claim from the wrong router is refused.
  t.deepEqual(await store.claim([{ taskId: id, from: "router-a" }], "router-c"), [undefined]);
  await store.close();
});

test("ClaimTasks with include_own also returns the caller's own unfinished tasks, marked already_owned, and moves only the others", async (t) => {
  const mine = "own-task-mine";
  const theirs = "own-task-theirs";
  const ended = "own-task-ended";
  const report = (routerId: string, id: string) =>
    status().report({ routerId, created: [{ id, pipeline: "p", payload: new Uint8Array([1]) }] });
  await report("router-own-me", mine);
  await report("router-own-me", ended);
  await status().report({ routerId: "router-own-me", transitions: [step(ended, "", 0, State.PENDING, State.CANCELLED)] });
  await report("router-own-gone", theirs);

  // Without include_own: only the other router's task, moved.
  const plain = await status().claimTasks({ fromRouterId: "router-own-gone", toRouterId: "router-own-me", pageSize: 1000 });
  t.deepEqual(plain.tasks.map((s) => s.task?.id), [theirs]);
  t.deepEqual(plain.alreadyOwned, []);
  // Again, with include_own (a retry after an answer was lost): both are the caller's now, and
  // said so; the ended one is not returned.
  const again = await status().claimTasks({ fromRouterId: "router-own-gone", toRouterId: "router-own-me", pageSize: 1000, includeOwn: true });
  t.deepEqual(again.tasks.map((s) => s.task?.id).sort(), [mine, theirs].sort());
  t.deepEqual([...again.alreadyOwned].sort(), [mine, theirs].sort());
  t.true(again.tasks.every((s) => s.routerId === "router-own-me"));
});
