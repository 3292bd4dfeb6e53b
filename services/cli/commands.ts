import { existsSync, readFileSync } from "node:fs";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  clientTo,
  Code,
  type DsatClient,
  defaultEtcdEndpoints,
  isTaskTerminal,
  MemberKind,
  type Pipeline,
  State,
  StatusService,
  stateName,
  type TopologyResponse,
  type TaskState,
  type Transition,
  connectEtcd,
  dsatError,
  toDsatError,
} from "@dsat/sdk";
import { loadPipelineFile } from "./pipeline-file.ts";
import { bar, ms, table } from "./render.ts";
import { renderTimeline } from "./trace-chart.ts";
import { readTopology, statusAddresses, UP_FILE } from "./satellite.ts";

/** Where the CLI finds etcd: --etcd, DSAT_ETCD, the `dsat up` of this folder, else 127.0.0.1:2379. */
export function resolveEtcd(flag: string | undefined): string {
  if (flag) return flag;
  if (process.env.DSAT_ETCD) return process.env.DSAT_ETCD;
  if (existsSync(UP_FILE)) {
    try {
      const up = JSON.parse(readFileSync(UP_FILE, "utf8")) as { etcd?: string };
      if (up.etcd) return up.etcd;
    } catch {
      // A torn file: fall through to the default.
    }
  }
  return defaultEtcdEndpoints();
}

/**
 * Fails with a message a person can act on when etcd does not answer within a few seconds
 * (every command but `up` and `demo` needs it).
 */
export async function checkEtcd(endpoints: string): Promise<void> {
  const etcd = connectEtcd({ endpoints, callTimeoutMs: 3_000 });
  try {
    await etcd.get("/dsat/v1/probe").string();
  } catch (err) {
    const why = toDsatError(err).rawMessage.replace(/^\d+ [A-Z_]+: /, "").split(". ")[0];
    throw dsatError(
      Code.Unavailable,
      `cannot reach etcd at ${endpoints} (${why}). Start a local mesh with \`dsat up\`, or pass --etcd HOST:PORT (or set DSAT_ETCD).`,
    );
  } finally {
    etcd.close();
  }
}

/** The payload argument: JSON text, @file for a file's bytes, or nothing. */
export function readPayload(arg: string | undefined): unknown {
  if (arg === undefined) return undefined;
  if (arg.startsWith("@")) return new Uint8Array(readFileSync(arg.slice(1)));
  try {
    return JSON.parse(arg);
  } catch {
    return arg;
  }
}

const out = (s: string) => process.stdout.write(`${s}\n`);

function when(ts: { seconds: bigint; nanos: number } | undefined): string {
  return ts ? timestampDate(ts as never).toISOString().slice(11, 23) : "";
}

function short(s: string): string {
  return s.length > 36 ? `${s.slice(0, 33)}...` : s;
}

export async function pipelineApply(client: DsatClient, file: string): Promise<void> {
  const f = loadPipelineFile(file);
  const { pipeline, changed } = await client.applyPipeline(f.pipeline);
  out(`${pipeline.name}: version ${pipeline.version}${changed ? " applied" : " unchanged"}`);
}

export async function pipelineList(client: DsatClient): Promise<void> {
  const list = await client.listPipelines();
  out(table(["PIPELINE", "VERSION", "STAGES"], list.map((p: Pipeline) => [p.name, Number(p.version), graphText(p)])));
}

function graphText(p: Pipeline): string {
  if (p.edges.length === 0) return p.stages.map((s) => s.name).join(" -> ");
  return p.edges.map((e) => `${e.from}${e.port ? `[${e.port}]` : ""}->${e.to}`).join(", ");
}

export async function submit(client: DsatClient, pipeline: string, payload: unknown, opts: { wait: boolean; id?: string }): Promise<number> {
  if (opts.wait) {
    const r = await client.run(pipeline, payload, { taskId: opts.id });
    out(`${r.taskId} ${stateName(r.state)}`);
    if (r.ok) out(r.output.text());
    else out(`${r.error?.code}: ${r.error?.message}`);
    return r.ok ? 0 : 1;
  }
  out(await client.submit(pipeline, payload, { taskId: opts.id }));
  return 0;
}

/** `dsat watch ID`: the task's transitions as they happen, one line each, until it ends. */
export async function watch(client: DsatClient, taskId: string): Promise<number> {
  out(table(["TIME", "STAGE", "ATTEMPT", "TRANSITION", "BY", "NOTE"], []));
  let last: Transition | undefined;
  for await (const t of client.watch(taskId)) {
    last = t;
    const note = t.error ? `${t.error.code}: ${t.error.message}` : t.port ? `port ${t.port}` : t.detail;
    out(
      [
        when(t.time).padEnd(12),
        (t.stage || "(task)").padEnd(12),
        String(t.attempt || "").padEnd(7),
        `${stateName(t.from)} → ${stateName(t.to)}`.padEnd(26),
        short(t.workerId || t.memberId).padEnd(36),
        note,
      ].join("  "),
    );
  }
  const ok = last !== undefined && isTaskTerminal(last.to) && last.to === State.SUCCEEDED;
  return ok ? 0 : 1;
}

export async function state(client: DsatClient, taskId: string): Promise<void> {
  const s: TaskState = await client.getState(taskId);
  out(`task      ${s.task?.id}`);
  out(`pipeline  ${s.task?.pipeline} v${s.task?.pipelineVersion}`);
  out(`state     ${stateName(s.state)}`);
  if (s.error) out(`error     ${s.error.code}: ${s.error.message}`);
  if (s.output.length > 0) out(`output    ${new TextDecoder().decode(s.output).slice(0, 500)}`);
  out("");
  out(
    table(
      ["STAGE", "STATE", "ATTEMPT", "WORKER", "STARTED", "ENDED", "ERROR"],
      s.stages.map((st) => [
        st.name,
        stateName(st.state),
        st.attempt,
        short(st.workerId),
        when(st.startedAt),
        when(st.endedAt),
        st.error ? `${st.error.code}: ${st.error.message}` : "",
      ]),
    ),
  );
}

/** `dsat trace ID`: the task's timeline from its stored history, as a text Gantt chart. */
export async function trace(client: DsatClient, taskId: string): Promise<void> {
  const s = await client.getState(taskId, { history: true });
  out(renderTimeline(s, { width: Math.max(20, Math.min(60, (process.stdout.columns ?? 120) - 80)) }));
}

/** `dsat members`: who is up, their stage, version and load (as the routers see it). */
export async function members(client: DsatClient): Promise<void> {
  const list = await client.members();
  const load = new Map<string, string>();
  const refused = new Map<string, string>();
  try {
    for (const view of await client.listWorkers()) {
      for (const w of view.workers) {
        if (w.refusedCode) refused.set(w.id, w.refusedMessage);
        else load.set(w.id, `${w.inFlight}/${w.capacity}`);
      }
    }
  } catch {
    // No router: load is unknown.
  }
  const kind = (k: MemberKind) => (k === MemberKind.ROUTER ? "router" : k === MemberKind.WORKER ? "worker" : k === MemberKind.STATUS ? "status" : "?");
  const rows = list
    .sort((a, b) => a.kind - b.kind || a.stage.localeCompare(b.stage) || a.id.localeCompare(b.id))
    .map((m) => [
      kind(m.kind),
      m.id,
      m.address,
      m.stage || "-",
      m.version,
      m.kind === MemberKind.WORKER ? (refused.has(m.id) ? "REFUSED" : (load.get(m.id) ?? `?/${m.capacity}`)) : "-",
      m.runtime,
      m.startedAt ? `${Math.round((Date.now() - timestampDate(m.startedAt).getTime()) / 1000)}s` : "",
    ]);
  out(table(["KIND", "ID", "ADDRESS", "STAGE", "VERSION", "LOAD", "RUNTIME", "UP"], rows));
  for (const [id, why] of refused) out(`refused ${id}: ${why}`);
}

export async function list(client: DsatClient, opts: { pipeline?: string; state?: string; limit: number }): Promise<void> {
  const states = opts.state
    ? opts.state.split(",").map((s) => {
        const v = (State as unknown as Record<string, number>)[s.trim().toUpperCase()];
        if (v === undefined) throw dsatError(Code.InvalidArgument, `unknown state "${s}" (use PENDING, RUNNING, SUCCEEDED, FAILED, TIMED_OUT, CANCELLED…)`);
        return v as State;
      })
    : [];
  const res = await client.list({ pipeline: opts.pipeline ?? "", states, pageSize: opts.limit });
  out(
    table(
      ["TASK", "PIPELINE", "STATE", "STAGES", "UPDATED"],
      res.tasks.map((s) => [s.task?.id ?? "", s.task?.pipeline ?? "", stateName(s.state), s.stages.map((x) => `${x.name}:${stateName(x.state)}`).join(" "), when(s.updatedAt)]),
    ),
  );
  if (res.nextPageToken) out(`… more (page token ${res.nextPageToken})`);
}

/**
 * `dsat retry ID`: a dead letter (a task that FAILED, TIMED_OUT or was CANCELLED, its input
 * kept in StatusService) submitted again as a new task with the same pipeline, input and
 * headers. The new task's id is printed; the old task stays as it ended.
 */
export async function retry(client: DsatClient, taskId: string, wait: boolean): Promise<number> {
  const s = await client.getState(taskId);
  if (!s.task) throw dsatError(Code.Internal, `task ${taskId} has no stored input`);
  if (s.state !== State.FAILED && s.state !== State.TIMED_OUT && s.state !== State.CANCELLED) {
    throw dsatError(
      Code.FailedPrecondition,
      `task ${taskId} is ${stateName(s.state)}: only a task that FAILED, TIMED_OUT or was CANCELLED can be retried`,
    );
  }
  const headers: Record<string, string> = { ...s.task.headers, "dsat-retry-of": taskId };
  delete headers.traceparent;
  delete headers.tracestate;
  const payload = s.task.payload;
  if (wait) {
    const r = await client.run(s.task.pipeline, payload, { headers });
    out(`${r.taskId} ${stateName(r.state)} (retry of ${taskId})`);
    if (r.ok) out(r.output.text());
    else out(`${r.error?.code}: ${r.error?.message}`);
    return r.ok ? 0 : 1;
  }
  out(await client.submit(s.task.pipeline, payload, { headers }));
  return 0;
}

function memberKindLabel(k: MemberKind): string {
  return k === MemberKind.ROUTER ? "router" : k === MemberKind.WORKER ? "worker" : k === MemberKind.STATUS ? "status" : "?";
}

/** One frame of `dsat top`: the load per stage (a bar of in-flight over capacity), the routers and the members. */
export function renderTopology(t: TopologyResponse, now: Date = new Date()): string {
  const lines = [`dsat top  ${now.toISOString().slice(11, 19)}  ${t.members.length} members`, ""];
  lines.push(
    t.stages.length === 0
      ? "no stage has workers"
      : table(
          ["STAGE", "WORKERS", "IN-FLIGHT/CAPACITY", "QUEUED", "AVG RUN"],
          t.stages.map((s) => [s.stage, s.workers, bar(s.inFlight, s.capacity, 20), s.queued, s.avgRunMs > 0 ? ms(s.avgRunMs) : "-"]),
        ),
  );
  for (const r of t.routers) if (r.error) lines.push(`router ${r.routerId} (${r.address}) did not answer: ${r.error}`);
  lines.push("");
  const rows = [...t.members]
    .sort((a, b) => a.kind - b.kind || a.stage.localeCompare(b.stage) || a.id.localeCompare(b.id))
    .map((m) => [memberKindLabel(m.kind), m.id, m.address, m.stage || "-", m.draining ? "draining" : ""]);
  lines.push(table(["KIND", "ID", "ADDRESS", "STAGE", ""], rows));
  return lines.join("\n");
}

/**
 * `dsat top`: the mesh's load, redrawn from WatchTopology every second. With `once`, one
 * frame and done; when stdout is not a terminal, frames follow one another (no redraw).
 */
export async function top(client: DsatClient, options: { once: boolean }): Promise<number> {
  if (options.once) {
    out(renderTopology(await readTopology(client)));
    return 0;
  }
  const tty = process.stdout.isTTY === true;
  const abort = new AbortController();
  const stop = () => abort.abort();
  process.once("SIGINT", stop);
  try {
    for (;;) {
      const [address] = await statusAddresses(client);
      try {
        for await (const t of clientTo(StatusService, address as string).watchTopology({ intervalMs: 1000 }, { signal: abort.signal })) {
          // Clear the screen and go home, so that the frame is redrawn in place.
          if (tty) process.stdout.write("\x1b[2J\x1b[H");
          out(renderTopology(t));
          if (!tty) out("");
        }
      } catch (err) {
        if (abort.signal.aborted) return 0;
        process.stderr.write(`dsat top: ${toDsatError(err).rawMessage}; trying again\n`);
      }
      if (abort.signal.aborted) return 0;
      await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    process.off("SIGINT", stop);
  }
}
