// A status outage longer than the router's give-up time, with real processes: the status
// server is killed with -9 while a task runs; a task submitted during the outage is refused
// (UNAVAILABLE) once the give-up time has passed instead of waiting for it; the running
// task's end, which its worker delivers during the outage, is kept and stored once a new
// status server comes up, exactly once.
import { Code, ConnectError, Payload, stateName } from "@dsat/sdk";
import test from "ava";
import { startOneStageMesh, type TestMesh } from "./helpers/mesh.ts";
import { type ServiceProcess, startService } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

const GIVE_UP_MS = 1_500;
let mesh: TestMesh;
let replacement: ServiceProcess | undefined;

test.before(async () => {
  mesh = await startOneStageMesh({ routerArgs: ["--status-give-up-ms", String(GIVE_UP_MS)] }, "outage", "hold", "hold");
});

test.after.always(async () => {
  await replacement?.kill9();
  await mesh?.close();
});

test("past the give-up time new tasks are refused; a running task's end waits for the next status server and is stored once", async (t) => {
  const running = await mesh.client.submit("outage", { ms: 2_500 });
  await waitFor(async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).some((w) => w.inFlight > 0), {
    what: "the task to run on the worker",
  });
  const status = mesh.status[0];
  if (!status) throw new Error("no status server");
  await status.kill9();

  // Submitted during the outage: refused once the give-up time has passed.
  const refuse = async (taskId: string) => {
    const started = Date.now();
    const err = await mesh.client.submit("outage", { ms: 1 }, { taskId }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    t.log(`${taskId}: refused after ${Date.now() - started} ms: ${err?.rawMessage}`);
    t.is(err?.code, Code.Unavailable);
    return Date.now() - started;
  };
  const first = await refuse("submitted-as-the-outage-began");
  t.true(first >= GIVE_UP_MS - 200, "not before the give-up time");
  t.true(first < GIVE_UP_MS + 10_000, "soon after it");

  // The running task's worker finishes during the outage: the router holds its end and
  // sends it again and again. A task submitted now waits behind it in the same lane, and
  // is refused all the same, within the retry interval.
  await waitFor(
    async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).every((w) => w.dispatched >= 1n && w.inFlight === 0),
    { what: "the worker to deliver the running task's end to the router" },
  );
  t.true((await refuse("submitted-behind-an-end")) < 5_000);

  // A new status server: the end goes in, once.
  replacement = await startService("services/status/main.ts", ["--etcd", mesh.etcd.endpoint, "--lease-ttl", "2"]);
  const state = await waitFor(
    async () => {
      const s = await mesh.client.getState(running, { history: true }).catch(() => undefined);
      return s && stateName(s.state) === "SUCCEEDED" ? s : undefined;
    },
    { what: "the running task's end to be stored", timeoutMs: 30_000 },
  );
  const ends = state.history.filter((h) => h.stage === "" && ["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"].includes(stateName(h.to)));
  t.is(ends.length, 1, "exactly one end");
  t.deepEqual(new Payload(state.output).json(), { held: 2_500, by: mesh.workers[0]?.id });

  // The refused tasks were never stored, nor run.
  for (const id of ["submitted-as-the-outage-began", "submitted-behind-an-end"]) {
    const refused = await mesh.client.getState(id).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    t.is(refused?.code, Code.NotFound, id);
  }
});
