import { create } from "@bufbuild/protobuf";
import { Keys, State, TaskStateSchema } from "@dsat/sdk";
import test from "ava";
import { keepsOpenIndex, openIndexOps } from "./open-index.ts";

const keys = new Keys("/t/");
const state = (routerId: string, s: State) => create(TaskStateSchema, { routerId, state: s, task: { id: "a/b" } });
/** An op as "put <key>" or "delete <key>". */
const show = (ops: ReturnType<typeof openIndexOps>) =>
  ops.map((op) => (op.request_put ? `put ${op.request_put.key}` : `delete ${op.request_delete_range?.key}`));

test("index keys: the router id is URI-encoded, so that a router or task id with slashes parses back", (t) => {
  const key = keys.openTask("r/1 x", "a/b");
  t.is(key, "/t/open/r%2F1%20x/a/b");
  t.true(key.startsWith(keys.openTasksOf("r/1 x")));
  t.false(keys.openTask("r", "x").startsWith(keys.openTasksOf("r/1 x")));
  t.deepEqual(keys.parseOpenTask(key), { routerId: "r/1 x", taskId: "a/b" });
  t.is(keys.parseOpenTask("/t/tasks/a"), undefined);
  t.is(keys.parseOpenTask("/t/open/no-task"), undefined);
});

test("index operations follow a record: put at create, nothing while it runs, moved by a claim, deleted at its end", (t) => {
  t.deepEqual(show(openIndexOps(keys, "a/b", undefined, state("r1", State.PENDING))), ["put /t/open/r1/a/b"]);
  t.deepEqual(show(openIndexOps(keys, "a/b", state("r1", State.PENDING), state("r1", State.RUNNING))), []);
  t.deepEqual(show(openIndexOps(keys, "a/b", state("r1", State.RUNNING), state("r2", State.RUNNING))), [
    "delete /t/open/r1/a/b",
    "put /t/open/r2/a/b",
  ]);
  t.deepEqual(show(openIndexOps(keys, "a/b", state("r2", State.RUNNING), state("r2", State.SUCCEEDED))), ["delete /t/open/r2/a/b"]);
  // A task stored once, ended when first written: no entry at all.
  t.deepEqual(show(openIndexOps(keys, "a/b", undefined, state("r1", State.SUCCEEDED))), []);
  t.deepEqual(show(openIndexOps(keys, "a/b", state("r1", State.FAILED), state("r1", State.FAILED))), []);
});

test("the index is kept by status servers from 0.1.2 on; an invalid version does not keep it", (t) => {
  t.true(keepsOpenIndex("0.1.2"));
  t.true(keepsOpenIndex("0.2.0"));
  t.true(keepsOpenIndex("0.1.z"));
  t.false(keepsOpenIndex("0.1.1"));
  t.false(keepsOpenIndex("0.1.0"));
  t.false(keepsOpenIndex("not a version"));
});
