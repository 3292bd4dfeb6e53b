// etcd out of space (its NOSPACE alarm) in a real mesh: Submit is refused at once with
// RESOURCE_EXHAUSTED and what to do, and what was stored before stays readable.
import { Code, ConnectError, stateName } from "@dsat/sdk";
import test from "ava";
import { fillPastQuota } from "./helpers/etcd.ts";
import { startOneStageMesh, type TestMesh } from "./helpers/mesh.ts";

let mesh: TestMesh;

test.before(async () => {
  mesh = await startOneStageMesh({ etcdArgs: ["--quota-backend-bytes", String(4 * 1024 * 1024)] }, "tiny", "echo", "echo");
});

test.after.always(async () => {
  await mesh?.close();
});

test("Submit on an etcd out of space is RESOURCE_EXHAUSTED at once, saying what to do; an earlier task stays readable", async (t) => {
  const before = await mesh.client.run("tiny", { n: 1 }, { deadline: 10_000 });
  t.is(stateName(before.state), "SUCCEEDED");

  t.true(await fillPastQuota(mesh.etcd.endpoint), "etcd refused a write once past its 4 MB quota");

  const started = Date.now();
  const err = await mesh.client.submit("tiny", { n: 2 }).then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  t.log(`Submit refused after ${Date.now() - started} ms: ${err?.rawMessage}`);
  t.is(err?.code, Code.ResourceExhausted);
  t.regex(err?.rawMessage ?? "", /out of space/);
  t.regex(err?.rawMessage ?? "", /--task-retention-ms/);
  // A run (which may start its task before storing it) is refused the same way, and the
  // task it started is stopped: its client gets the refusal, not a result.
  const runErr = await mesh.client.run("tiny", { n: 3 }).then(
    (r) => new Error(`a result came: ${stateName(r.state)}`),
    (e: unknown) => ConnectError.from(e),
  );
  t.is((runErr as ConnectError).code, Code.ResourceExhausted, runErr.message);
  t.regex((runErr as ConnectError).rawMessage ?? "", /out of space/);
  const state = await mesh.client.getState(before.taskId);
  t.is(stateName(state.state), "SUCCEEDED", "reads go on");
});
