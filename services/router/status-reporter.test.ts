import { create } from "@bufbuild/protobuf";
import {
  Code,
  createLogger,
  dsatError,
  type Member,
  MemberSchema,
  type ReportRequest,
  ReportResponseSchema,
  type RunningGrpcServer,
  State,
  StatusService,
  addService,
  startGrpcServer,
  TaskSchema,
  type Transition,
  TransitionSchema,
} from "@dsat/sdk";
import test, { type ExecutionContext } from "ava";
import { waitFor } from "../../test/helpers/wait.ts";
import { StatusReporter, type StatusReporterOptions } from "./status-reporter.ts";

/**
 * The reporter's batching against a StatusService peer on loopback (real gRPC) that
 * records each Report and answers when the test lets it: what goes in which Report is
 * what these tests check.
 */
interface Peer {
  readonly reports: ReportRequest[];
  /** Reports received and not answered yet. */
  readonly pending: (() => void)[];
  holdAnswers: boolean;
  /** When set, every Report fails with this code. */
  refuseWith: Code | undefined;
  readonly server: RunningGrpcServer;
  readonly member: Member;
}

async function startPeer(): Promise<Peer> {
  const reports: ReportRequest[] = [];
  const pending: (() => void)[] = [];
  const peer = { reports, pending, holdAnswers: false, refuseWith: undefined } as Omit<Peer, "server" | "member"> & {
    holdAnswers: boolean;
    refuseWith: Code | undefined;
  };
  const handlers = new Proxy(
    {
      report: async (req: ReportRequest) => {
        reports.push(req);
        if (peer.holdAnswers) await new Promise<void>((resolve) => pending.push(resolve));
        if (peer.refuseWith !== undefined) throw dsatError(peer.refuseWith, "etcd is out of space (test)");
        const ok = { accepted: true };
        return create(ReportResponseSchema, {
          created: req.created.map(() => ok),
          transitions: req.transitions.map(() => ok),
        });
      },
    },
    {
      get: (target, key) =>
        (target as Record<string | symbol, unknown>)[key] ??
        (async () => {
          throw dsatError(Code.Unimplemented, "not in this test");
        }),
    },
  );
  // biome-ignore lint/suspicious/noExplicitAny: a partial StatusService, the rest unimplemented
  const server = await startGrpcServer([StatusService], (s) => addService(s, StatusService, handlers as any), {
    host: "127.0.0.1",
    port: 0,
  });
  const member = create(MemberSchema, { id: "status-test", address: server.address });
  return Object.assign(peer, { server, member }) as Peer;
}

function reporter(peer: Peer, options: Partial<StatusReporterOptions> = {}): StatusReporter {
  return new StatusReporter("router-test", () => [peer.member], createLogger({}, "silent"), options);
}

/**
 * Makes the reporter busy: a Report of one transition (task "z") that the peer holds
 * unanswered until answerHeld; resolves once it is the `nth` Report the peer got.
 */
async function makeBusy(peer: Peer, r: StatusReporter, nth: number): Promise<{ done: Promise<void> }> {
  peer.holdAnswers = true;
  const done = r.sendDurable(step("z", "", State.PENDING, State.RUNNING));
  await waitFor(() => peer.reports.length === nth, { timeoutMs: 5_000, what: "the busy report" });
  return { done };
}

/** Answers every Report the peer holds, and those to come. */
function answerHeld(peer: Peer): void {
  peer.holdAnswers = false;
  for (const answer of peer.pending.splice(0)) answer();
}

const step = (taskId: string, stage: string, from: State, to: State): Transition =>
  create(TransitionSchema, { taskId, stage, attempt: 1, from, to });

const ids = (r: ReportRequest) => r.transitions.map((t) => `${t.taskId}:${t.stage}:${State[t.to]}`);

test("an idle reporter sends a transition at once; while busy, a task's steps are held and go with its awaited one, in order", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  // idleReleaseBelow 0: held steps wait for their task's awaited item even at low load.
  const r = reporter(peer, { lingerMs: 60_000, idleReleaseBelow: 0 });
  t.teardown(() => r.close());

  r.send(step("a", "s1", State.UNSPECIFIED, State.PENDING));
  await waitFor(() => peer.reports.length === 1, { timeoutMs: 5_000, what: "the first report" });
  t.deepEqual(ids(peer.reports[0] as ReportRequest), ["a:s1:PENDING"]);

  // Busy: the next Report is not answered until the test says so.
  const { done: busy } = await makeBusy(peer, r, 2);
  r.send(step("a", "s1", State.PENDING, State.DISPATCHED));
  r.send(step("b", "s1", State.PENDING, State.DISPATCHED));
  r.send(step("a", "s1", State.DISPATCHED, State.RUNNING));
  const end = r.sendDurable(step("a", "", State.RUNNING, State.SUCCEEDED));
  t.is(r.backlog, 5, "the Report in flight, a's two steps and b's one held, a's end queued");
  answerHeld(peer);
  await Promise.all([busy, end]);
  // a's held steps went before its end, in order; b's step stays held (no awaited item yet).
  t.deepEqual(ids(peer.reports[2] as ReportRequest), ["a:s1:DISPATCHED", "a:s1:RUNNING", "a::SUCCEEDED"]);
  t.is(r.backlog, 1);
  await r.flush();
  t.deepEqual(ids(peer.reports.at(-1) as ReportRequest), ["b:s1:DISPATCHED"]);
  t.is(r.backlog, 0);
});

test("a held transition goes by itself once it has waited lingerMs", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, { lingerMs: 50, idleReleaseBelow: 0 });
  t.teardown(() => r.close());
  const { done: busy } = await makeBusy(peer, r, 1);
  r.send(step("c", "s1", State.PENDING, State.DISPATCHED));
  answerHeld(peer);
  await busy;
  await waitFor(() => peer.reports.length === 2, { timeoutMs: 5_000, what: "the lingering transition's report" });
  t.deepEqual(ids(peer.reports[1] as ReportRequest), ["c:s1:DISPATCHED"]);
});

test("with lingerMs 0 nothing is held: every transition is in the next Report", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, { lingerMs: 0 });
  t.teardown(() => r.close());
  const { done: busy } = await makeBusy(peer, r, 1);
  r.send(step("d", "s1", State.PENDING, State.DISPATCHED));
  r.send(step("e", "s1", State.PENDING, State.DISPATCHED));
  answerHeld(peer);
  await busy;
  await waitFor(() => peer.reports.length === 2, { timeoutMs: 5_000, what: "the second report" });
  t.deepEqual(ids(peer.reports[1] as ReportRequest), ["d:s1:DISPATCHED", "e:s1:DISPATCHED"]);
});

test("Reports stay under StatusService's message limit: large payloads go in separate Reports", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, { maxBatchBytes: 3 * 1024 * 1024 });
  t.teardown(() => r.close());
  const { done: busy } = await makeBusy(peer, r, 1);
  const big = (id: string) => create(TaskSchema, { id, pipeline: "p", payload: new Uint8Array(2 * 1024 * 1024) });
  const created = [r.create(big("t1"), []), r.create(big("t2"), []), r.create(big("t3"), [])];
  answerHeld(peer);
  await busy;
  t.deepEqual(await Promise.all(created), [true, true, true]);
  t.deepEqual(
    peer.reports.slice(1).map((rep) => rep.created.map((c) => c.id)),
    [["t1"], ["t2"], ["t3"]],
  );
});

test("with several lanes, Reports of different tasks are in flight at once", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, { lanes: 4 });
  t.teardown(() => r.close());
  peer.holdAnswers = true;
  const done = Array.from({ length: 40 }, (_, i) => r.sendDurable(step(`task-${i}`, "", State.PENDING, State.RUNNING)));
  await waitFor(() => peer.reports.length === 4, { timeoutMs: 5_000, what: "one report per lane" });
  t.is(new Set(peer.reports.flatMap((rep) => rep.transitions.map((x) => x.taskId))).size, 40);
  answerHeld(peer);
  await Promise.all(done);
});

test("at low load (steps of few tasks held) a lane that goes idle sends what it held at once", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, { lingerMs: 60_000, idleReleaseBelow: 16 });
  t.teardown(() => r.close());
  const { done: busy } = await makeBusy(peer, r, 1);
  r.send(step("f", "s1", State.DISPATCHED, State.RUNNING));
  t.is(r.backlog, 2, "held while the lane is busy");
  answerHeld(peer);
  await busy;
  // No 60 s linger: one task's steps were held, so the lane let go once idle.
  await waitFor(() => peer.reports.length === 2, { timeoutMs: 5_000, what: "the held step's report" });
  t.deepEqual(ids(peer.reports[1] as ReportRequest), ["f:s1:RUNNING"]);
});

test("under load (steps of many tasks held) an idle lane keeps holding until each task's awaited item", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, { lingerMs: 60_000, idleReleaseBelow: 16 });
  t.teardown(() => r.close());
  const { done: busy } = await makeBusy(peer, r, 1);
  for (let i = 0; i < 20; i++) r.send(step(`g${i}`, "s1", State.DISPATCHED, State.RUNNING));
  answerHeld(peer);
  await busy;
  t.is(r.backlog, 20, "still held: twenty tasks' steps are not low load");
  t.is(peer.reports.length, 1);
  await r.sendDurable(step("g3", "", State.RUNNING, State.SUCCEEDED));
  t.deepEqual(ids(peer.reports.at(-1) as ReportRequest), ["g3:s1:RUNNING", "g3::SUCCEEDED"]);
  t.is(r.backlog, 19);
});

test("out of space (RESOURCE_EXHAUSTED): a new task is refused at once with the cause; accepted tasks' steps are sent again until stored", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  // giveUpAfterMs of a minute: the create must be refused long before that.
  const r = reporter(peer, { giveUpAfterMs: 60_000 });
  t.teardown(() => r.close());
  peer.refuseWith = Code.ResourceExhausted;
  peer.holdAnswers = true;
  const step1 = r.sendDurable(step("old", "", State.PENDING, State.RUNNING));
  const created = r.create(create(TaskSchema, { id: "new", pipeline: "p" }), [step("new", "s1", State.UNSPECIFIED, State.PENDING)]);
  await waitFor(() => peer.pending.length === 1, { timeoutMs: 5_000, what: "the first report" });
  answerHeld(peer);
  const err = await created.then(
    () => undefined,
    (e: unknown) => e as { code?: Code; rawMessage?: string },
  );
  t.is(err?.code, Code.ResourceExhausted);
  t.regex(err?.rawMessage ?? "", /out of space/);
  // The accepted task's step is still being sent; once StatusService stores again, it is.
  await waitFor(() => peer.reports.length >= 3, { timeoutMs: 5_000, what: "the step to be sent again" });
  t.true(peer.reports.slice(1).every((rep) => rep.created.length === 0), "the refused task is not sent again");
  peer.refuseWith = undefined;
  await step1;
  t.deepEqual(ids(peer.reports.at(-1) as ReportRequest), ["old::RUNNING"]);
});

/** A reporter with a give-up time of 200 ms, against a peer that refuses everything (UNAVAILABLE) until told otherwise. */
async function outage(t: ExecutionContext) {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, { giveUpAfterMs: 200 });
  t.teardown(() => r.close());
  peer.refuseWith = Code.Unavailable;
  return { peer, r };
}

/** The error a promise is rejected with, or undefined if it resolves. */
const refusal = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e as { code?: Code },
  );

test("a long status outage: new tasks are refused after giveUpAfterMs, accepted tasks' steps are never given up", async (t) => {
  const { peer, r } = await outage(t);
  const end = r.sendDurable(step("accepted", "", State.RUNNING, State.SUCCEEDED));
  const err = await refusal(r.create(create(TaskSchema, { id: "late", pipeline: "p" }), []));
  t.is(err?.code, Code.Unavailable, "the new task is refused once giveUpAfterMs has passed");
  // Well past giveUpAfterMs the accepted task's end is still being sent…
  const sent = peer.reports.length;
  await waitFor(() => peer.reports.length >= sent + 3, { timeoutMs: 10_000, what: "more attempts after the give-up time" });
  // …and stored once a status server takes it again.
  peer.refuseWith = undefined;
  await end;
  t.deepEqual(ids(peer.reports.at(-1) as ReportRequest), ["accepted::SUCCEEDED"]);
});

test("a new task queued behind accepted steps during a long outage is refused too, not left waiting for them", async (t) => {
  const { peer, r } = await outage(t);
  // The Report in flight holds only an accepted task's end: it is sent again and again…
  const end = r.sendDurable(step("accepted", "", State.RUNNING, State.SUCCEEDED));
  await waitFor(() => peer.reports.length >= 2, { timeoutMs: 5_000, what: "the end sent again" });
  // …and a task submitted meanwhile waits behind it: it is refused once the outage is long.
  const started = Date.now();
  const err = await refusal(r.create(create(TaskSchema, { id: "new", pipeline: "p" }), []));
  t.is(err?.code, Code.Unavailable);
  t.true(Date.now() - started < 5_000, "refused within the backoff, not after the outage");
  t.false(peer.reports.some((rep) => rep.created.some((c) => c.id === "new")), "never sent");
  peer.refuseWith = undefined;
  await end;
  t.deepEqual(ids(peer.reports.at(-1) as ReportRequest), ["accepted::SUCCEEDED"]);
});

test("close tells whoever still waits, instead of leaving them hanging", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, {});
  peer.refuseWith = Code.Unavailable;
  const end = r.sendDurable(step("pending", "", State.RUNNING, State.SUCCEEDED));
  await waitFor(() => peer.reports.length >= 1, { timeoutMs: 5_000, what: "the first attempt" });
  r.close();
  const err = await end.then(
    () => undefined,
    (e: unknown) => e as { code?: Code },
  );
  t.is(err?.code, Code.Unavailable);
});

test("a create held (hold): while busy it waits with its task's steps and goes with its end, in one Report; when idle it goes at once", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, { lingerMs: 60_000, idleReleaseBelow: 0 });
  t.teardown(() => r.close());
  const task = (id: string) => create(TaskSchema, { id, pipeline: "p" });

  // Idle: the create goes now, and resolves once stored.
  t.true(await r.create(task("idle"), [step("idle", "s1", State.UNSPECIFIED, State.PENDING)], true));
  t.deepEqual(peer.reports[0]?.created.map((x) => x.id), ["idle"]);

  const { done: busy } = await makeBusy(peer, r, 2);
  let stored = false;
  const created = r.create(task("h"), [step("h", "s1", State.UNSPECIFIED, State.PENDING)], true).then((isNew) => {
    stored = true;
    return isNew;
  });
  r.send(step("h", "s1", State.PENDING, State.DISPATCHED));
  answerHeld(peer);
  await busy;
  t.false(stored, "held: not stored while its task runs");
  t.is(r.held, 3, "the create, its first step and the next one");
  const end = r.sendDurable(step("h", "", State.RUNNING, State.SUCCEEDED));
  t.true(await created);
  await end;
  const last = peer.reports.at(-1) as ReportRequest;
  t.deepEqual(last.created.map((x) => x.id), ["h"], "the create went with the end");
  t.deepEqual(ids(last), ["h:s1:PENDING", "h:s1:DISPATCHED", "h::SUCCEEDED"]);
});

test("forget drops a task's unsent steps, held and queued, and tells whoever waits; the Report in flight and other tasks are kept", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const r = reporter(peer, { lingerMs: 60_000, idleReleaseBelow: 0 });
  t.teardown(() => r.close());
  // The Report in flight carries f's first step: it is sent already and stays.
  peer.holdAnswers = true;
  const first = r.sendDurable(step("f", "s1", State.PENDING, State.DISPATCHED));
  await waitFor(() => peer.reports.length === 1, { timeoutMs: 5_000, what: "the report in flight" });
  r.send(step("f", "s1", State.DISPATCHED, State.RUNNING)); // held
  const queued = r.sendDurable(step("f", "s1", State.RUNNING, State.SUCCEEDED)); // queued
  r.send(step("g", "s1", State.PENDING, State.DISPATCHED)); // another task's, held
  const other = r.sendDurable(step("g", "", State.RUNNING, State.SUCCEEDED));
  t.is(r.backlog, 5);
  r.forget("f");
  t.is(r.backlog, 3, "f's Report in flight, g's two steps");
  const err = await queued.then(
    () => undefined,
    (e: unknown) => e as { code?: Code },
  );
  t.is(err?.code, Code.Aborted);
  answerHeld(peer);
  await Promise.all([first, other]);
  t.deepEqual(ids(peer.reports[0] as ReportRequest), ["f:s1:DISPATCHED"]);
  t.deepEqual(peer.reports.slice(1).flatMap(ids), ["g:s1:DISPATCHED", "g::SUCCEEDED"]);
  t.is(r.backlog, 0);
});

/** A status server of the reporter's own process: records Reports, answers unless told to hang. */
function localStatus() {
  const reports: ReportRequest[] = [];
  const local = {
    closed: false,
    hangNext: 0,
    reports,
    report: (req: ReportRequest) => {
      reports.push(req);
      if (local.hangNext > 0) {
        local.hangNext--;
        return new Promise<never>(() => {});
      }
      const ok = { accepted: true, duplicate: false, reason: "" };
      return Promise.resolve({ created: req.created.map(() => ok), transitions: req.transitions.map(() => ok) });
    },
  };
  return local;
}

test("a status server of the router's own process takes its Reports, as objects; once it closes, they go to the registered ones", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const local = localStatus();
  const r = reporter(peer, { local });
  t.teardown(() => r.close());

  t.true(await r.create(create(TaskSchema, { id: "t1", pipeline: "p" }), [step("t1", "s1", State.UNSPECIFIED, State.PENDING)]));
  await r.sendDurable(step("t1", "", State.PENDING, State.RUNNING));
  t.deepEqual(local.reports.map((q) => [q.created.map((c) => c.id), ids(q), q.routerId]), [
    [["t1"], ["t1:s1:PENDING"], "router-test"],
    [[], ["t1::RUNNING"], "router-test"],
  ]);
  t.is(local.reports[0]?.$unknown, undefined, "nothing encoded for an in-process Report");
  t.is(peer.reports.length, 0, "no Report went over the network");

  local.closed = true;
  await r.sendDurable(step("t1", "", State.RUNNING, State.SUCCEEDED));
  t.is(local.reports.length, 2);
  t.deepEqual(peer.reports.map(ids), [["t1::SUCCEEDED"]], "a registered status server took it");
});

test("a Report that this process's status server does not answer within the deadline is sent again", async (t) => {
  const peer = await startPeer();
  t.teardown(() => peer.server.close());
  const local = localStatus();
  local.hangNext = 1;
  const r = reporter(peer, { local, reportTimeoutMs: 200 });
  t.teardown(() => r.close());
  await r.sendDurable(step("t2", "", State.PENDING, State.RUNNING));
  t.deepEqual(local.reports.map(ids), [["t2::RUNNING"], ["t2::RUNNING"]], "the same Report twice (Report is replay-safe)");
});
