// The Python reference worker (examples/python-worker) in a real mesh: real etcd, status,
// router and TypeScript workers as processes, Python workers as /usr/bin/python3 processes.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import type { NetworkInterfaceInfo } from "node:os";
import { create } from "@bufbuild/protobuf";
import test, { type ExecutionContext } from "ava";
import {
  AsyncQueue,
  advertisedAddress,
  bindTarget,
  Code,
  ConnectError,
  clientTo,
  connectEtcd,
  Keys,
  parseMember,
  type ProcessRequest,
  ProcessRequestSchema,
  State,
  stateName,
  type TaskState,
  WorkerService,
} from "@dsat/sdk";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../sdk/src/gen/grpc/health/v1/health_pb.js";
import {
  ServerReflection,
  type ServerReflectionRequest,
  ServerReflectionRequestSchema,
} from "../sdk/src/gen/grpc/reflection/v1/reflection_pb.js";
import { Span_SpanKind } from "../sdk/src/gen/opentelemetry/proto/trace/v1/trace_pb.js";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { nanos, runWatchingProgress } from "./helpers/progress.ts";
import { type OtlpReceiver, type ReceivedSpan, startOtlpReceiver } from "./helpers/otlp-receiver.ts";
import { ROOT, type ServiceProcess, startProcess } from "./helpers/processes.ts";
import { revokeLeaseOf } from "./helpers/leases.ts";
import { waitFor } from "./helpers/wait.ts";
import { sameAttemptOnTwoStreams } from "./helpers/worker-streams.ts";

interface Trail {
  v: number;
  path: string[];
}

const PYTHON = "/usr/bin/python3";
const pythonWorkers: ServiceProcess[] = [];
let mesh: TestMesh;
/** Where the Python workers that trace send their spans (the mesh's own processes do not trace). */
let receiver: OtlpReceiver;

/**
 * Starts examples/python-worker/main.py for a stage and waits for its `ready` line: the same
 * shape as the TypeScript services' ServiceProcess, so tests treat both alike. `env` adds to
 * the test's environment (undefined removes a variable).
 */
async function startPythonWorker(
  stage: string,
  handler: string,
  extra: string[] = [],
  env: Record<string, string | undefined> = {},
): Promise<ServiceProcess> {
  const p = await startProcess(
    `python worker ${stage}`,
    PYTHON,
    ["examples/python-worker/main.py", "--etcd", mesh.etcd.endpoint, "--lease-ttl", "2", "--stage", stage, "--handler", handler, ...extra],
    { PYTHONDONTWRITEBYTECODE: "1", DSAT_EXIT_WITH_PARENT: undefined, ...env },
  );
  pythonWorkers.push(p);
  return p;
}

/** Waits until the router has a live stream to every one of these workers. */
async function connected(...ids: string[]): Promise<void> {
  await waitFor(async () => {
    const views = await mesh.client.listWorkers();
    const live = new Set(views.flatMap((v) => v.workers).filter((w) => w.connected).map((w) => w.id));
    return ids.every((id) => live.has(id));
  }, { what: `the router to connect to ${ids.join(", ")}` });
}

/**
 * The task's state once StatusService has stored its end. `run` resolves when the router
 * ends the task, which can be a moment before StatusService has stored the last transitions.
 */
async function storedState(taskId: string, end: State): Promise<TaskState> {
  return waitFor(async () => {
    const s = await mesh.client.getState(taskId);
    return s.state === end ? s : undefined;
  }, { what: `StatusService to store task ${taskId} as ${stateName(end)}` });
}

/** An environment without the test's own OTEL_* variables: a process started with it does not trace. */
function untracedEnv(): Record<string, string | undefined> {
  return Object.fromEntries(Object.keys(process.env).filter((k) => k.startsWith("OTEL_")).map((k) => [k, undefined]));
}

/** The environment of a Python worker that traces to this file's OTLP receiver: only these OTEL_* variables. */
function tracedEnv(extra: Record<string, string> = {}): Record<string, string | undefined> {
  return { ...untracedEnv(), OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, ...extra };
}

/** A W3C trace context of our own, as a client that traces would send it in the task's headers. */
function clientTraceContext(sampled: boolean): { traceId: string; spanId: string; traceparent: string } {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-${sampled ? "01" : "00"}` };
}

/** The one span of a task's attempt at the receiver, once it has come. */
async function runSpanOf(taskId: string): Promise<ReceivedSpan> {
  return waitFor(() => receiver.spans.find((s) => s.attributes["dsat.task.id"] === taskId), {
    timeoutMs: 15_000,
    what: `the Python worker's span of task ${taskId} at the OTLP receiver`,
  });
}


const ms = (n: number) => ({ seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1e6 });

test.before(async (t) => {
  const gen = spawnSync("bash", ["scripts/ensure-python.sh"], { cwd: ROOT, encoding: "utf8", timeout: 300_000 });
  if (gen.status !== 0) {
    t.fail(`scripts/ensure-python.sh failed (${gen.status ?? gen.signal}):\n${gen.stdout}\n${gen.stderr}`);
    throw new Error("the Python worker cannot run without its packages and stubs");
  }
  receiver = await startOtlpReceiver();
  // The router does not trace, so a client's traceparent reaches the workers as it was sent.
  mesh = await startMesh({ leaseTtlSeconds: 2, env: untracedEnv() });
  await Promise.all([
    mesh.client.applyPipeline({ name: "mixed", stages: [{ name: "add" }, { name: "shout" }, { name: "double" }] }),
    mesh.client.applyPipeline({ name: "py-throws", stages: [{ name: "explode" }] }),
    mesh.client.applyPipeline({ name: "py-overruns", stages: [{ name: "dawdle", timeout: ms(500) }] }),
    mesh.client.applyPipeline({ name: "py-holds", stages: [{ name: "pyhold", timeout: ms(10_000) }] }),
    mesh.client.applyPipeline({ name: "py-cancels", stages: [{ name: "pycancel" }] }),
    mesh.client.applyPipeline({ name: "py-drains", stages: [{ name: "pydrain" }] }),
    mesh.client.applyPipeline({ name: "py-reregisters", stages: [{ name: "pyreg" }] }),
    mesh.client.applyPipeline({ name: "py-traced", stages: [{ name: "pytraced" }] }),
    mesh.client.applyPipeline({ name: "py-traced-fails", stages: [{ name: "pytracefail" }] }),
    mesh.client.applyPipeline({ name: "py-progress", stages: [{ name: "pyprogress" }] }),
    mesh.client.applyPipeline({ name: "py-progress-burst", stages: [{ name: "pyburst" }] }),
  ]);
});

test.after.always(async () => {
  await Promise.all(pythonWorkers.map((p) => p.kill9()));
  await mesh?.close();
  await receiver?.close();
});

test.serial("a mixed pipeline TypeScript -> Python -> TypeScript: every task succeeds and outputs chain", async (t) => {
  const [add, shout, double] = await Promise.all([
    mesh.addWorker("add", "add"),
    startPythonWorker("shout", "stages:shout", ["--concurrency", "4"]),
    mesh.addWorker("double", "double"),
  ]);
  await connected(add.id, shout.id, double.id);
  const started = Date.now();
  const N = 100;
  const results = await Promise.all(Array.from({ length: N }, (_, i) => mesh.client.run("mixed", { v: i, path: [] })));
  t.log(`${N} tasks through add (TS) -> shout (Python) -> double (TS) in ${Date.now() - started} ms`);
  results.forEach((r, i) => {
    t.is(stateName(r.state), "SUCCEEDED", `task ${r.taskId}: ${r.error?.message}`);
    const out = r.output.json<Trail>();
    t.is(out.v, (i + 1) * 10 * 2);
    t.deepEqual(out.path, [add.id, shout.id, double.id]);
  });
  const s = await storedState(results[0]?.taskId ?? "", State.SUCCEEDED);
  const py = s.stages.find((x) => x.name === "shout");
  t.is(py?.state, State.SUCCEEDED);
  t.is(py?.workerId, shout.id, "StatusService records the Python worker's own transitions");
});

test.serial("a Python handler that raises gives FAILED with its message", async (t) => {
  const w = await startPythonWorker("explode", "stages:explode");
  await connected(w.id);
  const r = await mesh.client.run("py-throws", "x");
  t.is(stateName(r.state), "FAILED");
  t.regex(r.error?.message ?? "", /stage "explode" failed \(attempt 1\): python boom on "x"/);
  t.is(r.error?.code, "UNKNOWN");
  const s = await storedState(r.taskId, State.FAILED);
  t.is(s.stages[0]?.state, State.FAILED);
  t.is(s.stages[0]?.workerId, w.id);
});

test.serial("a Python handler that overruns its stage timeout gives TIMED_OUT and frees its slot", async (t) => {
  const w = await startPythonWorker("dawdle", "stages:dawdle");
  await connected(w.id);
  const started = Date.now();
  // Two in a row on one slot: the second can only end in time if the first one's handler
  // saw its cancel event and gave its thread back.
  for (let i = 0; i < 2; i++) {
    const r = await mesh.client.run("py-overruns", {});
    t.is(stateName(r.state), "TIMED_OUT");
    t.regex(r.error?.message ?? "", /stage "dawdle" timed out \(attempt 1\): stage "dawdle" ran over its timeout of 500 ms \(attempt 1\)/);
    t.is(r.error?.code, "DEADLINE_EXCEEDED");
  }
  t.true(Date.now() - started < 5_000, `two 500 ms timeouts took ${Date.now() - started} ms`);
});

test.serial("a task cancelled while a Python handler runs it stops there and frees the slot", async (t) => {
  const w = await startPythonWorker("pycancel", "stages:hold");
  await connected(w.id);
  const taskId = `py-cancel-${Date.now()}`;
  const long = mesh.client.run("py-cancels", { ms: 60_000 }, { taskId });
  await waitFor(async () => (await mesh.client.getState(taskId)).stages[0]?.state === State.RUNNING, {
    what: "the Python worker to report RUNNING",
  });
  await mesh.client.cancel(taskId, "changed my mind");
  const r = await long;
  t.is(stateName(r.state), "CANCELLED");
  // Its only slot is free again at once: a short task behind it ends well within its deadline.
  const next = await mesh.client.run("py-cancels", { ms: 10 }, { deadline: 5_000 });
  t.is(stateName(next.state), "SUCCEEDED", next.error?.message);
  t.deepEqual(next.output.json(), { held: 10, by: w.id });
});

test.serial("a Python worker killed with -9 while it holds tasks: every task is redelivered and succeeds", async (t) => {
  const [doomed, survivor] = await Promise.all([
    startPythonWorker("pyhold", "stages:hold", ["--concurrency", "4"]),
    startPythonWorker("pyhold", "stages:hold", ["--concurrency", "4"]),
  ]);
  await connected(doomed.id, survivor.id);
  const inFlight = Array.from({ length: 8 }, () => mesh.client.run("py-holds", { ms: 1500 }));
  await waitFor(async () => {
    const views = await mesh.client.listWorkers();
    const w = views.flatMap((v) => v.workers).find((x) => x.id === doomed.id);
    return (w?.inFlight ?? 0) > 0;
  }, { what: "a task running on the doomed Python worker" });
  await doomed.kill9();

  await waitFor(async () => !(await mesh.client.members()).some((m) => m.id === doomed.id), {
    timeoutMs: 2_000 + 2_000,
    what: "the killed Python worker's member record to lapse",
  });
  const results = await Promise.all(inFlight);
  for (const r of results) {
    t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
    t.is(r.output.json<{ by: string }>().by, survivor.id);
  }
  const states = await Promise.all(results.map((r) => mesh.client.getState(r.taskId)));
  t.true(states.some((s) => (s.stages[0]?.attempt ?? 0) > 1), "at least one task was dispatched again");
});

test.serial("SIGTERM drains a Python worker: it leaves etcd, finishes what it runs, exits 0", async (t) => {
  const w = await startPythonWorker("pydrain", "stages:hold", ["--concurrency", "2"]);
  await connected(w.id);
  const taskId = `py-drain-${Date.now()}`;
  const run = mesh.client.run("py-drains", { ms: 1000 }, { taskId });
  await waitFor(async () => (await mesh.client.getState(taskId)).stages[0]?.state === State.RUNNING, {
    what: "the Python worker to report RUNNING",
  });
  const health = clientTo(Health, w.address);
  t.is((await health.check({ service: "dsat.v1.WorkerService" })).status, ServingStatus.SERVING);
  w.child.kill("SIGTERM");
  await waitFor(async () => !(await mesh.client.members()).some((m) => m.id === w.id), {
    timeoutMs: 1_000,
    what: "the draining worker to revoke its lease",
  });
  t.is((await health.check({ service: "" })).status, ServingStatus.NOT_SERVING, "NOT_SERVING while it drains");
  const r = await run;
  t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  t.is(r.output.json<{ by: string }>().by, w.id, "the task ended on the worker that drained");
  t.is(await w.exited, 0, w.stderr());
});

test.serial("a Python worker serves health and reflection like every dsat server", async (t) => {
  const w = await startPythonWorker("reflect-py", "stages:shout");
  t.is((await clientTo(Health, w.address).check({ service: "" })).status, ServingStatus.SERVING);
  const requests = new AsyncQueue<ServerReflectionRequest>();
  requests.push(create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "*" } }));
  requests.push(create(ServerReflectionRequestSchema, {
    messageRequest: { case: "fileContainingSymbol", value: "dsat.v1.WorkerService" },
  }));
  requests.end();
  const answers = [];
  for await (const res of clientTo(ServerReflection, w.address).serverReflectionInfo(requests)) answers.push(res.messageResponse);
  const [list, files] = answers;
  t.deepEqual(
    list?.case === "listServicesResponse" ? list.value.service.map((x) => x.name).sort() : list,
    ["dsat.v1.WorkerService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"],
  );
  t.is(files?.case, "fileDescriptorResponse");
  t.true(files?.case === "fileDescriptorResponse" && files.value.fileDescriptorProto.length >= 3, "worker.proto and what it imports");
  await w.kill9();
});

test.serial("versions: a Python worker of another X.Y is refused, and it refuses a router of another X.Y", async (t) => {
  const alien = await startPythonWorker("echo-py", "stages:shout", ["--protocol-version", "9.9.0"]);
  const refused = await waitFor(async () => {
    const views = await mesh.client.listWorkers();
    return views.flatMap((v) => v.workers).find((w) => w.id === alien.id && w.refusedCode !== 0);
  }, { what: "the router to refuse the 9.9.0 Python worker" });
  t.is(refused.refusedCode, Code.FailedPrecondition);

  const good = await startPythonWorker("echo-py", "stages:shout");
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
  t.is(
    ConnectError.from(err).rawMessage,
    `router router-from-the-future runs dsat 3.1.0 but worker ${good.id} runs 0.1.0: their X.Y must match`,
  );
});

test.serial("two routers that give a Python worker the same attempt get two runs, and a cancel from one stops only its own", async (t) => {
  const w = await startPythonWorker("pytwostreams", "stages:hold", ["--concurrency", "2"]);
  const seen = await sameAttemptOnTwoStreams(w.address, "pytwostreams");
  t.deepEqual(seen.a, ["RUNNING", "CANCELLED"]);
  t.deepEqual(seen.b, ["RUNNING", "SUCCEEDED"]);
});

test.serial("a Python worker that loses its lease registers again and gets tasks again", async (t) => {
  const etcd = connectEtcd({ endpoints: mesh.etcd.endpoint });
  try {
    const w = await startPythonWorker("pyreg", "stages:hold");
    await connected(w.id);
    await revokeLeaseOf(etcd, "worker", w.id);
    await connected(w.id);
    const r = await mesh.client.run("py-reregisters", { ms: 10 }, { deadline: 5_000 });
    t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
    t.is(r.output.json<{ by: string }>().by, w.id);
    t.regex(w.stderr(), /lease lost; registering again/);
    await w.kill9();
  } finally {
    etcd.close();
  }
});

// Regression: a worker whose record goes and comes back while its link still runs a task
// must not stay "leaving" in the router.
test.serial("a worker that loses its lease while it runs a task gets tasks again once it registers again", async (t) => {
  const etcd = connectEtcd({ endpoints: mesh.etcd.endpoint });
  try {
    const w = await startPythonWorker("pyreg", "stages:hold");
    await connected(w.id);
    const taskId = `py-rereg-${Date.now()}`;
    const run = mesh.client.run("py-reregisters", { ms: 2000 }, { taskId });
    await waitFor(async () => (await mesh.client.getState(taskId)).stages[0]?.state === State.RUNNING, {
      what: "the Python worker to report RUNNING",
    });
    await revokeLeaseOf(etcd, "worker", w.id);
    t.is(stateName((await run).state), "SUCCEEDED");
    const next = await mesh.client.run("py-reregisters", { ms: 10 }, { deadline: 5_000 });
    t.is(stateName(next.state), "SUCCEEDED", next.error?.message);
  } finally {
    etcd.close();
  }
});

test.serial("a Python worker with OTEL_* set exports a run span per attempt, child of the task's traceparent, each transition it made an event", async (t) => {
  const w = await startPythonWorker("pytraced", "stages:shout", [], tracedEnv());
  t.true(w.tracing, "its ready line says it traces");
  await connected(w.id);
  // Parent-based sampling (the default): a client context that is not sampled gets no span.
  const unsampled = await mesh.client.run("py-traced", { v: 1, path: [] }, { headers: { traceparent: clientTraceContext(false).traceparent } });
  t.is(stateName(unsampled.state), "SUCCEEDED", unsampled.error?.message);

  const client = clientTraceContext(true);
  const r = await mesh.client.run("py-traced", { v: 2, path: [] }, { headers: { traceparent: client.traceparent, tracestate: "dsat=test" } });
  t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  const span = await runSpanOf(r.taskId);
  t.is(span.service, "dsat-worker");
  t.is(span.name, "run pytraced");
  t.is(span.kind, Span_SpanKind.CONSUMER);
  // The router does not trace here, so the client's context reaches the worker as it was sent.
  t.is(span.traceId, client.traceId, "the trace of the task's traceparent");
  t.is(span.parentSpanId, client.spanId, "a child of the task's traceparent");
  t.regex(span.spanId, /^[0-9a-f]{16}$/);
  t.not(span.spanId, client.spanId);
  t.deepEqual(span.attributes, {
    "dsat.task.id": r.taskId,
    "dsat.pipeline": "py-traced",
    "dsat.stage": "pytraced",
    "dsat.attempt": 1,
    "dsat.worker.id": w.id,
    "dsat.state": "SUCCEEDED",
  });
  t.is(span.statusCode, 0, "SUCCEEDED is no error");

  // Its events are the transitions it made, in order, each at the time StatusService stored for it.
  t.deepEqual(span.events.map((e) => e.name), ["RUNNING", "SUCCEEDED"]);
  await storedState(r.taskId, State.SUCCEEDED);
  const { history } = await mesh.client.getState(r.taskId, { history: true });
  for (const e of span.events) {
    t.deepEqual(e.attributes, { "dsat.state": e.name }, "the span says the task, stage, attempt and worker; the event what is new");
    t.is(e.timeUnixNano, nanos(history.find((h) => h.stage === "pytraced" && stateName(h.to) === e.name)), `time of ${e.name}`);
  }
  t.true(span.startTimeUnixNano <= (span.events[0]?.timeUnixNano ?? 0n) && (span.events.at(-1)?.timeUnixNano ?? 0n) <= span.endTimeUnixNano);
  // The unsampled task's span ended first: had it been exported, it would have come no later.
  t.false(receiver.spans.some((s) => s.attributes["dsat.task.id"] === unsampled.taskId), "no span for an unsampled parent");
  await w.kill9();
});

test.serial("a traced Python worker exports what it buffered when SIGTERM drains it; a failed attempt's span has status ERROR", async (t) => {
  // Exports would wait 10 minutes: only the flush on the way out can deliver the span.
  const w = await startPythonWorker("pytracefail", "stages:explode", [], tracedEnv({ OTEL_BSP_SCHEDULE_DELAY: "600000", OTEL_SERVICE_NAME: "py-exploder" }));
  await connected(w.id);
  const client = clientTraceContext(true);
  const r = await mesh.client.run("py-traced-fails", "x", { headers: { traceparent: client.traceparent } });
  t.is(stateName(r.state), "FAILED");
  await storedState(r.taskId, State.FAILED);
  t.false(receiver.spans.some((s) => s.attributes["dsat.task.id"] === r.taskId), "nothing exported before the drain");
  w.child.kill("SIGTERM");
  t.is(await w.exited, 0, w.stderr());
  const span = await runSpanOf(r.taskId);
  t.is(span.service, "py-exploder", "OTEL_SERVICE_NAME names the service");
  t.is(span.parentSpanId, client.spanId);
  t.is(span.statusCode, 2);
  t.is(span.statusMessage, 'UNKNOWN: python boom on "x"');
  t.is(span.attributes["dsat.state"], "FAILED");
  t.is(span.attributes["dsat.error.code"], "UNKNOWN");
  t.is(span.attributes["dsat.error.message"], 'python boom on "x"');
  t.deepEqual(span.events.map((e) => e.name), ["RUNNING", "FAILED"]);
  t.like(span.events[1]?.attributes, { "dsat.state": "FAILED", "dsat.error.code": "UNKNOWN", "dsat.error.message": 'python boom on "x"' });
});

test.serial("progress from a Python handler reaches a Watch live as RUNNING -> RUNNING with its details in order; the record keeps the latest", async (t) => {
  const w = await startPythonWorker("pyprogress", "stages:progress3", [], tracedEnv());
  await connected(w.id);
  const { result: r, seen } = await runWatchingProgress(mesh, "py-progress", "pyprogress", { ms: 300 });
  t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  t.deepEqual(r.output.json(), { ms: 300 }, "progress3 returns its input");
  // Sent 300 ms apart: each goes at once, and the Watch sees each live, before the stage's end.
  t.deepEqual(seen.map((s) => s.detail), ["1/3", "2/3", "3/3"]);
  t.true(seen.every((s) => !s.stageEnded), "every progress came before the stage ended");
  await storedState(r.taskId, State.SUCCEEDED);
  const state = await mesh.client.getState(r.taskId, { history: true });
  const kept = state.history.filter((h) => h.from === State.RUNNING && h.to === State.RUNNING);
  t.deepEqual(kept.map((h) => h.detail), ["3/3"], "one progress entry per attempt: the latest");
  t.is(kept[0]?.workerId, w.id);
  // Tracing on: each progress is a RUNNING event of the attempt's span, at its own time.
  const span = await runSpanOf(r.taskId);
  t.deepEqual(span.events.map((e) => e.name), ["RUNNING", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]);
  t.deepEqual(span.events.slice(1, 4).map((e) => e.timeUnixNano), seen.map((s) => s.at));
  await w.kill9();
});

test.serial("Python progress goes at most every 100 ms: what comes faster is coalesced into the latest, and what waits at the end is dropped", async (t) => {
  // Traced, so that the span shows every progress the worker sent: the router may hold a
  // step back (--status-linger-ms) and StatusService keeps only the latest of an attempt, so
  // a Watch need not see them all.
  const w = await startPythonWorker("pyburst", "stages:progress_burst", [], tracedEnv());
  await connected(w.id);
  const { result: r, seen } = await runWatchingProgress(mesh, "py-progress-burst", "pyburst", null);
  t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  // Sent: "1" at once; of "2" … "100", which came within 100 ms of it, only "100", 100 ms
  // later; "last" 300 ms on, at once; "dropped" right after it would wait 100 ms, but the
  // attempt ends first.
  const span = await runSpanOf(r.taskId);
  t.deepEqual(span.events.map((e) => e.name), ["RUNNING", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"], "three progress reports sent");
  const sent = span.events.slice(1, 4).map((e) => e.timeUnixNano);
  const gapMs = Number((sent[1] ?? 0n) - (sent[0] ?? 0n)) / 1e6;
  t.true(gapMs >= 99, `the coalesced report went 100 ms after the first, not ${gapMs} ms`);
  await storedState(r.taskId, State.SUCCEEDED);
  const state = await mesh.client.getState(r.taskId, { history: true });
  const kept = state.history.filter((h) => h.from === State.RUNNING && h.to === State.RUNNING);
  t.deepEqual(kept.map((h) => h.detail), ["last"], "the latest sent is \"last\", not \"dropped\"");
  t.is(nanos(kept[0]), sent[2] ?? 0n, "the third report sent is \"last\"");
  // What the Watch saw is some of the three, in order, never one of those coalesced away.
  const details = seen.map((s) => s.detail);
  t.deepEqual(details, ["1", "100", "last"].filter((d) => details.includes(d)), details.join(", "));
  t.is(details.at(-1), "last");
  t.true(seen.every((s) => !s.stageEnded));
  await w.kill9();
});

/** The address in a worker's member record in etcd ("" when it has none). */
async function registeredAddress(id: string): Promise<string> {
  const etcd = connectEtcd({ endpoints: mesh.etcd.endpoint });
  try {
    const kv = (await etcd.get(new Keys().member("worker", id)).exec()).kvs[0];
    return kv ? (parseMember(kv.value)?.address ?? "") : "";
  } finally {
    etcd.close();
  }
}

test.serial("--advertise: a Python worker listening on 0.0.0.0 registers the address given, and the router reaches it there", async (t) => {
  // 127.0.0.2 is loopback too (Linux routes 127.0.0.0/8 to lo): the router can only reach
  // the worker through it if it dials what etcd says rather than where the worker listens.
  const w = await startPythonWorker("pyadvertised", "stages:hold", ["--host", "0.0.0.0", "--advertise", "127.0.0.2"], {
    DSAT_ADVERTISE: undefined,
  });
  t.regex(w.address, /^127\.0\.0\.2:\d+$/, "the ready line says the address given, with the port bound");
  t.is(await registeredAddress(w.id), w.address, "etcd says the same address");
  await mesh.client.applyPipeline({ name: "py-advertised", stages: [{ name: "pyadvertised" }] });
  await connected(w.id);
  const r = await mesh.client.run("py-advertised", { ms: 1 }, { deadline: 10_000 });
  t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
  t.deepEqual(r.output.json(), { held: 1, by: w.id });
  await w.kill9();
});

test.serial("a Python worker on 0.0.0.0 registers what a TypeScript server would (never 0.0.0.0); DSAT_ADVERTISE host:port is taken as it is", async (t) => {
  const [wildcard, mapped] = await Promise.all([
    startPythonWorker("pywildcard", "stages:hold", ["--host", "0.0.0.0"], { DSAT_ADVERTISE: undefined }),
    // Port 1 stands for a port mapped elsewhere (as in a container): registered, not dialled here.
    startPythonWorker("pymapped", "stages:hold", ["--host", "0.0.0.0"], { DSAT_ADVERTISE: "127.0.0.3:1" }),
  ]);
  try {
    const port = Number(wildcard.address.slice(wildcard.address.lastIndexOf(":") + 1));
    t.notRegex(wildcard.address, /^0\.0\.0\.0:/);
    t.is(wildcard.address, advertisedAddress("0.0.0.0", port), "this machine's first non-internal IPv4, as Node lists them");
    t.is(await registeredAddress(wildcard.id), wildcard.address);
    t.is(mapped.address, "127.0.0.3:1");
    t.is(await registeredAddress(mapped.id), "127.0.0.3:1");
  } finally {
    await Promise.all([wildcard.kill9(), mapped.kill9()]);
  }
});

test("advertised_address in Python gives what advertisedAddress gives in TypeScript", (t) => {
  const nic = (address: string, family: "IPv4" | "IPv6", internal: boolean): NetworkInterfaceInfo =>
    ({ address, family, internal, netmask: "", mac: "", cidr: null }) as NetworkInterfaceInfo;
  const lo = [nic("127.0.0.1", "IPv4", true), nic("::1", "IPv6", true)];
  const machine = { lo, eth0: [nic("fe80::1", "IPv6", false), nic("10.1.2.3", "IPv4", false)] };
  const cases: [host: string, advertise: string][] = [
    ["127.0.0.1", ""], ["10.9.9.9", ""], ["::1", ""], ["0.0.0.0", ""], ["::", ""], ["", ""],
    ["0.0.0.0", "router-1.internal"], ["0.0.0.0", " 203.0.113.5:30001 "], ["0.0.0.0", "2001:db8::5"],
    ["0.0.0.0", "[2001:db8::5]:30001"], ["0.0.0.0", "[2001:db8::5]"], ["0.0.0.0", "host:notaport"], ["::", "   "],
  ];
  // Each case with an interface of 10.1.2.3, then with loopback alone, then with this machine's own.
  const got = inPython(
    t,
    "from dsat_worker import advertised_address as a",
    "[[a(h, 7001, v, lambda: '10.1.2.3'), a(h, 7001, v, lambda: None), a(h, 7001, v)] for h, v in cases]",
    cases,
  );
  t.deepEqual(
    got,
    cases.map(([h, v]) => [advertisedAddress(h, 7001, v, machine), advertisedAddress(h, 7001, v, { lo }), advertisedAddress(h, 7001, v)]),
  );
});

/** The JSON of a Python expression over `cases` (JSON), with dsat_worker importable; fails the test when Python does. */
function inPython(t: ExecutionContext, imports: string, expression: string, cases: unknown): unknown {
  const script = [
    "import json, sys",
    "sys.path.insert(0, 'examples/python-worker')",
    imports,
    "cases = json.load(sys.stdin)",
    `print(json.dumps(${expression}))`,
  ].join("\n");
  const py = spawnSync(PYTHON, ["-c", script], { cwd: ROOT, input: JSON.stringify(cases), encoding: "utf8", timeout: 30_000 });
  t.is(py.status, 0, py.stderr);
  return JSON.parse(py.stdout);
}

test("bind_target in Python binds what bindTarget binds in TypeScript (an empty host is every interface)", (t) => {
  const hosts = ["127.0.0.1", "", "  ", "0.0.0.0", "::", "::1", "[::1]", "localhost"];
  t.deepEqual(
    inPython(t, "from dsat_worker import bind_target", "[bind_target(h, 7001) for h in cases]", hosts),
    hosts.map((h) => bindTarget(h, 7001)),
  );
});
