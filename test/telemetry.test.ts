// Tracing and metrics of real router, status and worker processes: spans go over OTLP
// (HTTP/protobuf) to a real receiver in this test, metrics are scraped from each process.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import test, { type ExecutionContext } from "ava";
import { context, trace } from "@opentelemetry/api";
import {
  activeTracer,
  clientTo,
  createClient,
  encodePayload,
  RouterService,
  State,
  shutdownTelemetry,
  startTelemetry,
  stateName,
  type TaskError,
  type TaskState,
} from "@dsat/sdk";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { type OtlpReceiver, type ReceivedSpan, startOtlpReceiver } from "./helpers/otlp-receiver.ts";
import { scrape } from "./helpers/metrics.ts";
import { ROOT, type ServiceProcess, startService } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

const PIPELINE = "traced";
const STAGES = ["add", "flaky", "double"] as const;
/** Spans of one task of PIPELINE: one submit, and a dispatch and a run per attempt (flaky runs twice). */
const ATTEMPTS = [
  ["add", 1],
  ["flaky", 1],
  ["flaky", 2],
  ["double", 1],
] as const;

let receiver: OtlpReceiver;
let mesh: TestMesh;
/** Every task run through the mesh by this file, for the metrics check. */
const taskIds: string[] = [];

test.before(async () => {
  receiver = await startOtlpReceiver();
  const otel = {
    OTEL_TRACES_EXPORTER: "otlp",
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
    OTEL_BSP_SCHEDULE_DELAY: "50",
    OTEL_TRACES_SAMPLER: "parentbased_always_on",
    OTEL_SERVICE_NAME: undefined,
  };
  // This process is a client that traces too: its spans go to the same receiver. (The
  // OpenTelemetry SDK reads process.env; the servers started below get `otel` as theirs.)
  for (const [k, v] of Object.entries(otel)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  const started = await startTelemetry({ serviceName: "dsat-test" });
  if (!started.tracing) throw new Error("tracing did not start in the test process");
  mesh = await startMesh({ env: otel, metrics: true });
  await mesh.client.applyPipeline({
    name: PIPELINE,
    stages: [
      { name: "add" },
      { name: "flaky", retry: { maxAttempts: 2, initialBackoff: { seconds: 0n, nanos: 10_000_000 } } },
      { name: "double" },
    ],
  });
  await Promise.all([
    mesh.addWorker("add", "add"),
    mesh.addWorker("flaky", "failFirst", [], "test/fixtures/flaky.ts"),
    mesh.addWorker("double", "doubleTraced", [], "test/fixtures/flaky.ts"),
  ]);
  await waitFor(
    async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).filter((w) => w.connected).length === STAGES.length,
    { what: "the router to connect to the three workers" },
  );
});

test.after.always(async () => {
  await mesh?.close();
  await shutdownTelemetry();
  await receiver?.close();
});

/** The spans of a task once all of them (submit, 4 dispatches, 4 runs) have arrived. */
async function spansOf(taskId: string): Promise<ReceivedSpan[]> {
  return waitFor(
    () => {
      const spans = receiver.spans.filter((s) => s.attributes["dsat.task.id"] === taskId);
      const submit = spans.some((s) => s.name === `submit ${PIPELINE}`);
      const runs = spans.filter((s) => s.name.startsWith("run ")).length;
      const dispatches = spans.filter((s) => s.name.startsWith("dispatch ")).length;
      return submit && runs === ATTEMPTS.length && dispatches === ATTEMPTS.length ? spans : undefined;
    },
    { timeoutMs: 15_000, what: `the spans of task ${taskId} at the OTLP receiver` },
  );
}

/** How a task ended. */
interface Ended {
  taskId: string;
  state: State;
  ok: boolean;
  error?: TaskError;
}

/** Runs a task of PIPELINE (by `run`, default client.run) and returns its state with history. */
async function runTask(v: number, run: () => Promise<Ended> = () => mesh.client.run(PIPELINE, { v, path: [] })): Promise<TaskState> {
  const r = await run();
  taskIds.push(r.taskId);
  if (!r.ok) throw new Error(`task ${r.taskId} ended ${stateName(r.state)}: ${r.error?.message}`);
  return mesh.client.getState(r.taskId, { history: true });
}

/** The one span named so with these stage and attempt. */
function find(spans: readonly ReceivedSpan[], kind: "dispatch" | "run", stage: string, attempt: number): ReceivedSpan {
  const found = spans.filter((s) => s.name === `${kind} ${stage}` && s.attributes["dsat.attempt"] === attempt);
  if (found.length !== 1) throw new Error(`${found.length} spans "${kind} ${stage}" of attempt ${attempt}`);
  return found[0] as ReceivedSpan;
}

/** Checks the spans of a task: one trace, the parents, attributes, and every transition once as an event in FSM order. */
function checkTrace(t: ExecutionContext, state: TaskState, spans: readonly ReceivedSpan[]): ReceivedSpan {
  const taskId = state.task?.id ?? "";
  t.is(spans.length, 1 + 2 * ATTEMPTS.length, spans.map((s) => s.name).join(", "));
  const traceIds = new Set(spans.map((s) => s.traceId));
  t.is(traceIds.size, 1, "one trace per task");
  const submit = spans.find((s) => s.name === `submit ${PIPELINE}`) as ReceivedSpan;
  t.is(submit.service, "dsat-router");
  t.is(submit.attributes["dsat.state"], "SUCCEEDED");
  t.not(submit.statusCode, 2);
  t.true(submit.endTimeUnixNano >= submit.startTimeUnixNano);

  for (const [stage, attempt] of ATTEMPTS) {
    const dispatch = find(spans, "dispatch", stage, attempt);
    const run = find(spans, "run", stage, attempt);
    t.is(dispatch.parentSpanId, submit.spanId, `dispatch ${stage}#${attempt} is a child of the submission`);
    t.is(run.parentSpanId, dispatch.spanId, `run ${stage}#${attempt} is a child of its dispatch`);
    t.is(dispatch.service, "dsat-router");
    t.is(run.service, "dsat-worker");
    const dispatched = state.history.find((h) => h.stage === stage && h.attempt === attempt && h.to === State.DISPATCHED);
    t.truthy(dispatched?.workerId);
    t.is(dispatch.attributes["dsat.worker.id"], dispatched?.workerId);
    t.is(run.attributes["dsat.worker.id"], dispatched?.workerId);
    const failed = stage === "flaky" && attempt === 1;
    t.is(run.attributes["dsat.state"], failed ? "FAILED" : "SUCCEEDED");
    t.is(run.statusCode, failed ? 2 : 0, `run ${stage}#${attempt} status`);
    t.is(dispatch.statusCode, failed ? 2 : 0, `dispatch ${stage}#${attempt} status`);
    if (failed) t.regex(String(run.attributes["dsat.error.message"]), /flaky: attempt 1 .* fails on purpose/);
    // Each span lies within its parent.
    t.true(dispatch.startTimeUnixNano >= submit.startTimeUnixNano && dispatch.endTimeUnixNano <= submit.endTimeUnixNano);
  }

  // Every stored transition is exactly one event, on the span of whoever made it, at its time.
  const key = (stage: unknown, attempt: unknown, s: unknown) => `${stage}:${attempt}:${s}`;
  // An event says what its span does not: on an attempt's span (dispatch, run) the state,
  // which the span's stage, attempt and worker complete; on the task's span, those too.
  const attemptSpan = (s: ReceivedSpan) => s.name.startsWith("dispatch ") || s.name.startsWith("run ");
  const attr = (s: ReceivedSpan, e: ReceivedSpan["events"][number], k: string) =>
    attemptSpan(s) ? (e.attributes[k] ?? s.attributes[k]) : e.attributes[k];
  const events = spans.flatMap((s) =>
    s.events.map((e, index) => ({ span: s, index, e, key: key(attr(s, e, "dsat.stage"), attr(s, e, "dsat.attempt"), e.attributes["dsat.state"]) })),
  );
  const history = state.history.map((h) => ({ h, key: key(h.stage, h.attempt, stateName(h.to)) }));
  t.deepEqual(events.map((x) => x.key).sort(), history.map((x) => x.key).sort(), "the events are the transitions, each once");
  for (const x of events) {
    t.is(x.e.attributes["dsat.state"], x.e.name);
    t.is(x.span.attributes["dsat.task.id"], taskId);
    if (attemptSpan(x.span)) {
      for (const k of ["dsat.task.id", "dsat.stage", "dsat.attempt", "dsat.worker.id"]) t.false(k in x.e.attributes, `${k} only on the span`);
    }
  }
  let last = 0n;
  const order = new Map<ReceivedSpan, number>();
  history.forEach(({ h, key: k }, i) => {
    const ev = events.find((x) => x.key === k);
    if (!ev) return;
    const ns = BigInt(h.time?.seconds ?? 0n) * 1_000_000_000n + BigInt(h.time?.nanos ?? 0);
    // StatusService stamps the task's first PENDING itself; every other transition keeps its maker's time.
    if (i > 0) t.is(ev.e.timeUnixNano, ns, `time of ${k}`);
    t.true(ev.e.timeUnixNano >= last, `${k} is not before the transition stored before it`);
    last = ev.e.timeUnixNano;
    // Within a span, events come in the order of the history.
    t.true(ev.index >= (order.get(ev.span) ?? 0), `${k} in order on "${ev.span.name}"`);
    order.set(ev.span, ev.index);
    if (!attemptSpan(ev.span) && h.workerId) t.is(ev.e.attributes["dsat.worker.id"], h.workerId, `worker of ${k}`);
    if (h.error) t.is(ev.e.attributes["dsat.error.message"], h.error.message);
  });
  // Who recorded what: the worker its RUNNING and the end of its attempt, the router the rest.
  for (const x of events) {
    const byWorker = x.span.name.startsWith("run ");
    const s = String(x.e.attributes["dsat.state"]);
    t.is(byWorker, ["RUNNING", "SUCCEEDED", "FAILED"].includes(s) && attr(x.span, x.e, "dsat.stage") !== "", `${x.key} on ${x.span.name}`);
  }
  return submit;
}

test.serial("a task through three stages, one retried: one trace, the right parents, each transition an event in FSM order", async (t) => {
  const state = await runTask(1);
  t.deepEqual(
    state.stages.map((s) => `${s.name}:${stateName(s.state)}:${s.attempt}`),
    ["add:SUCCEEDED:1", "flaky:SUCCEEDED:2", "double:SUCCEEDED:1"],
  );
  const spans = await spansOf(state.task?.id ?? "");
  const submit = checkTrace(t, state, spans);
  t.is(submit.parentSpanId, "", "without a client context the submission is the root");

  // A span the handler makes itself (OpenTelemetry's API, the SDK's tracer) is a child of its
  // run span, from the same process and resource.
  const run = find(spans, "run", "double", 1);
  const own = await waitFor(() => receiver.spans.find((s) => s.name === "double work" && s.traceId === submit.traceId), {
    what: "the handler's own span",
  });
  t.is(own.parentSpanId, run.spanId);
  t.is(own.service, "dsat-worker");

  // A line the handler logs (at warn, the default level) names its trace, span and task.
  const failed = find(spans, "run", "flaky", 1);
  const worker = mesh.workers.find((w) => w.id === failed.attributes["dsat.worker.id"]) as ServiceProcess;
  const line = await waitFor(
    () =>
      worker
        .stderr()
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .find((l) => l.msg === "failing attempt 1 on purpose" && l.task === state.task?.id),
    { what: "the handler's log line" },
  );
  t.is(line.level, "warn");
  t.is(line.trace_id, failed.traceId);
  t.is(line.span_id, failed.spanId);

  // dsat trace: the same task as a timeline, from StatusService alone.
  const r = spawnSync(join(ROOT, "services/cli/bin/dsat"), ["trace", state.task?.id ?? "", "--etcd", mesh.etcd.endpoint], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: 30_000,
  });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, new RegExp(`^task ${state.task?.id}  pipeline ${PIPELINE} v1  SUCCEEDED  in \\d`));
  t.regex(r.stdout, /^\(task\)\s.*SUCCEEDED.*\|━+\|$/m);
  for (const [stage, attempt] of ATTEMPTS) {
    const worker = find(spans, "run", stage, attempt).attributes["dsat.worker.id"];
    const row = r.stdout.split("\n").find((l) => new RegExp(`^${stage}\\s+${attempt}\\s`).test(l));
    t.truthy(row, `a row for ${stage} attempt ${attempt}:\n${r.stdout}`);
    t.true(row?.includes(String(worker).slice(0, 25)), `the row names the worker: ${row}`);
    t.regex(row ?? "", stage === "flaky" && attempt === 1 ? /\sFAILED\s/ : /\sSUCCEEDED\s/);
    t.regex(row ?? "", /\|[ ·▒█]*█[ ·▒█]*\|$/, "a bar with its running part");
  }
  t.regex(r.stdout, /errors:\n {2}flaky attempt 1: UNKNOWN: flaky: attempt 1/);
});

test.serial("a client's own span is the parent of the task's spans (run, submit, and gRPC metadata alone)", async (t) => {
  const tracer = activeTracer();
  if (!tracer) throw new Error("no tracer in the test process");
  const parent = tracer.startSpan("test-client");
  const ctx = trace.setSpan(context.active(), parent);
  const viaRun = await context.with(ctx, () => runTask(2));
  const viaSubmit = await context.with(ctx, () =>
    runTask(3, async () => {
      const id = await mesh.client.submit(PIPELINE, { v: 3, path: [] });
      for await (const _ of mesh.client.watch(id)) {
        // to its end
      }
      const s = await mesh.client.getState(id);
      return { taskId: id, state: s.state, ok: s.state === State.SUCCEEDED, error: s.error };
    }),
  );
  parent.end();
  const sc = parent.spanContext();
  for (const state of [viaRun, viaSubmit]) {
    const submit = checkTrace(t, state, await spansOf(state.task?.id ?? ""));
    t.is(submit.traceId, sc.traceId, "the task is in the client's trace");
    t.is(submit.parentSpanId, sc.spanId, "the submission is a child of the client's span");
    t.is(state.task?.headers.traceparent, `00-${sc.traceId}-${sc.spanId}-01`, "the task carries the client's context");
  }
  const client = await waitFor(() => receiver.spans.find((s) => s.spanId === sc.spanId), { what: "the client's span" });
  t.is(client.service, "dsat-test");

  // A client that puts the context only in the gRPC metadata of Submit.
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const spanId = "00f067aa0ba902b7";
  const router = mesh.routers[0] as ServiceProcess;
  const viaMetadata = await runTask(4, async () => {
    const { taskId } = await clientTo(RouterService, router.address).submit(
      { pipeline: PIPELINE, payload: encodePayload({ v: 4, path: [] }) },
      { headers: { traceparent: `00-${traceId}-${spanId}-01` } },
    );
    for await (const _ of mesh.client.watch(taskId)) {
      // to its end
    }
    const s = await mesh.client.getState(taskId);
    return { taskId, state: s.state, ok: s.state === State.SUCCEEDED, error: s.error };
  });
  const submit = checkTrace(t, viaMetadata, await spansOf(viaMetadata.task?.id ?? ""));
  t.is(submit.traceId, traceId);
  t.is(submit.parentSpanId, spanId);
});

test.serial("a task its client does not sample leaves no span anywhere: the router and the workers follow the decision", async (t) => {
  const traceId = "5bf92f3577b34da6a3ce929d0e0e4737";
  const router = mesh.routers[0] as ServiceProcess;
  const unsampled = await runTask(5, async () => {
    const { taskId } = await clientTo(RouterService, router.address).submit(
      { pipeline: PIPELINE, payload: encodePayload({ v: 5, path: [] }) },
      { headers: { traceparent: `00-${traceId}-10f067aa0ba902b8-00` } },
    );
    for await (const _ of mesh.client.watch(taskId)) {
      // to its end
    }
    const s = await mesh.client.getState(taskId);
    return { taskId, state: s.state, ok: s.state === State.SUCCEEDED, error: s.error };
  });
  // A sampled task after it, through the same processes: once its spans are in, any span of
  // the first would be in too (each process exports its spans in the order they end).
  const sampled = await runTask(6);
  checkTrace(t, sampled, await spansOf(sampled.task?.id ?? ""));
  const leaked = receiver.spans.filter((s) => s.traceId === traceId || s.attributes["dsat.task.id"] === unsampled.task?.id);
  t.deepEqual(
    leaked.map((s) => `${s.service}: ${s.name}`),
    [],
  );
});

test.serial("the metrics endpoints agree with the tasks run", async (t) => {
  t.true(taskIds.length >= 4, "the tests before ran tasks");
  const states = await Promise.all(taskIds.map((id) => mesh.client.getState(id, { history: true })));
  const expected = new Map<string, number>();
  for (const s of states) {
    for (const h of s.history) {
      const k = `${h.stage}|${stateName(h.to)}`;
      expected.set(k, (expected.get(k) ?? 0) + 1);
    }
  }
  const router = await scrape(mesh.routers[0] as ServiceProcess);
  const get = (name: string, labels: Record<string, string> = {}) =>
    router.filter((m) => m.name === name && Object.entries(labels).every(([k, v]) => m.labels[k] === v));
  const transitions = new Map(get("dsat_transitions_total").map((m) => [`${m.labels.stage}|${m.labels.state}`, m.value]));
  t.deepEqual(Object.fromEntries([...transitions].sort()), Object.fromEntries([...expected].sort()), "dsat_transitions_total is the histories");
  const n = taskIds.length;
  t.is(get("dsat_task_duration_seconds_count", { pipeline: PIPELINE, state: "SUCCEEDED" })[0]?.value, n);
  t.is(get("dsat_task_duration_seconds_bucket", { pipeline: PIPELINE, state: "SUCCEEDED", le: "+Inf" })[0]?.value, n);
  for (const [stage, runs] of [["add", n], ["flaky", 2 * n], ["double", n]] as const) {
    t.is(get("dsat_stage_queue_wait_seconds_count", { stage })[0]?.value, runs, `queue waits at ${stage}`);
    t.is(get("dsat_stage_run_seconds_count", { stage })[0]?.value, runs, `runs at ${stage}`);
    t.is(get("dsat_router_queue_depth", { stage })[0]?.value, 0, `queue of ${stage}`);
    t.is(get("dsat_router_stage_in_flight", { stage })[0]?.value, 0);
    t.is(get("dsat_router_stage_capacity", { stage })[0]?.value, 1);
  }
  t.is(get("dsat_router_tasks")[0]?.value, 0);
  t.is(get("dsat_router_status_backlog", { kind: "held" })[0]?.value, 0, "nothing held once every task ended");
  t.is(get("dsat_router_status_backlog", { kind: "queued" })[0]?.value, 0);
  const reports = get("dsat_router_status_reports")[0]?.value ?? 0;
  t.true(reports > 0);
  t.is(get("dsat_router_status_report_seconds_count", { result: "ok" })[0]?.value, reports, "a round trip per Report");
  t.is(get("dsat_router_batch_items_count", { hop: "status" })[0]?.value, reports);
  // Every transition counted went in a Report, but the task's own PENDING: StatusService
  // makes that one from the created task, which went in its place.
  t.is(
    get("dsat_router_batch_items_sum", { hop: "status" })[0]?.value,
    [...transitions.values()].reduce((a, v) => a + v, 0),
    "the items of the Reports are the tasks and transitions",
  );

  const status = await scrape(mesh.status[0] as ServiceProcess);
  const txns = status.filter((m) => m.name === "dsat_status_etcd_txns_total");
  const committed = txns.find((m) => m.labels.result === "committed")?.value ?? 0;
  t.true(committed >= n, `${committed} committed transactions for ${n} tasks`);
  const keysCount = status.find((m) => m.name === "dsat_status_etcd_txn_keys_count")?.value;
  t.is(keysCount, txns.reduce((a, m) => a + m.value, 0), "one batch size per transaction");
  const answered = txns.filter((m) => m.labels.result !== "error").reduce((a, m) => a + m.value, 0);
  t.is(status.find((m) => m.name === "dsat_status_etcd_txn_seconds_count")?.value, answered, "a duration per answered transaction");
  t.is(status.find((m) => m.name === "dsat_status_report_seconds_count")?.value, reports, "every Report of the router answered");
  t.is(status.find((m) => m.name === "dsat_status_cached_tasks")?.value, 0, "no task kept once every task ended");

  for (const w of mesh.workers) {
    const m = await scrape(w);
    t.is(m.find((x) => x.name === "dsat_worker_capacity")?.value, 1);
    t.is(m.find((x) => x.name === "dsat_worker_in_flight")?.value, 0);
    t.is(m.find((x) => x.name === "dsat_worker_capacity")?.labels.worker, w.id);
  }
});

test.serial("off by default: with no OTEL_* variable no process exports a span", async (t) => {
  // An OpenTelemetry SDK left at its defaults would export to localhost:4318: listen there.
  const fallback = await startOtlpReceiver(4318, ["127.0.0.1", "::1"])
    .catch(() => startOtlpReceiver(4318, ["127.0.0.1"]))
    .catch(() => undefined);
  if (!fallback) t.log("port 4318 is taken here: only the test's own receiver is checked");
  const noOtel = Object.fromEntries(Object.keys(process.env).filter((k) => k.startsWith("OTEL_")).map((k) => [k, undefined]));
  const env = { ...noOtel, OTEL_TRACES_EXPORTER: undefined, OTEL_EXPORTER_OTLP_ENDPOINT: undefined };
  const prefix = "/dsat-untraced/";
  const common = ["--etcd", mesh.etcd.endpoint, "--lease-ttl", "2", "--prefix", prefix];
  const procs: ServiceProcess[] = [];
  const client = createClient({ etcd: mesh.etcd.endpoint, prefix });
  try {
    procs.push(await startService("services/status/main.ts", common, env));
    procs.push(await startService("services/router/main.ts", common, env));
    procs.push(
      await startService(
        "services/worker-host/main.ts",
        [...common, "--stage", "add", "--module", "test/fixtures/stages.ts", "--export", "add"],
        env,
      ),
    );
    for (const p of procs) {
      t.false(p.tracing, `${p.kind} says tracing is off`);
      t.is(p.metrics, undefined, `${p.kind} serves no metrics by default`);
    }
    await client.applyPipeline({ name: "untraced", stages: [{ name: "add" }] });
    // Even under a client's span (a traceparent in the task), a server without OTEL_* exports nothing.
    const parent = activeTracer()?.startSpan("untraced-client");
    const ctx = parent ? trace.setSpan(context.active(), parent) : context.active();
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await context.with(ctx, () => client.run("untraced", { v: i, path: [] }));
      t.true(r.ok, r.error?.message);
      ids.push(r.taskId);
    }
    parent?.end();
    // A stop flushes what is buffered: this is when an exporter would send.
    await Promise.all(procs.map((p) => p.stop()));
    t.true(procs.every((p) => p.child.exitCode === 0));
    t.is(fallback?.requests ?? 0, 0, "nothing was sent to the default OTLP endpoint");
    t.deepEqual(
      receiver.spans.filter((s) => ids.includes(String(s.attributes["dsat.task.id"]))).map((s) => `${s.service}: ${s.name}`),
      [],
      "no span of the untraced tasks reached the receiver",
    );
  } finally {
    await client.close();
    await Promise.all(procs.map((p) => p.kill9()));
    await fallback?.close();
  }
});
