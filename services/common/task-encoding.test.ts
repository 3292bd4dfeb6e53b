import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type Task, TaskSchema } from "@dsat/sdk";
import test from "ava";
import { encodeTask } from "./task-encoding.ts";

// encodeTask must write toBinary's bytes, for every shape of task.

const tasks: Task[] = [
  create(TaskSchema, {}),
  create(TaskSchema, { id: "t-1", pipeline: "p" }),
  create(TaskSchema, {
    id: "7b31a485-577b-4ef8-a0b6-ab062e05dadf",
    pipeline: "words",
    pipelineVersion: 3n,
    payload: new Uint8Array(300).fill(7),
    headers: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "": "", "clé": "välue" },
    deadline: timestampFromMs(1_763_900_000_123),
    createdAt: timestampFromMs(1_763_800_000_000),
  }),
  create(TaskSchema, { id: "big", pipelineVersion: 2n ** 64n - 1n, createdAt: timestampFromMs(-1), deadline: { seconds: 0n, nanos: 0 } }),
];

test("encodeTask writes toBinary's bytes, whole and without payload and headers", (t) => {
  for (const task of tasks) {
    t.deepEqual([...encodeTask(task)], [...toBinary(TaskSchema, task)], `task ${task.id || "(empty)"}`);
    const bare = { ...task, payload: new Uint8Array(0), headers: {} };
    t.deepEqual([...encodeTask(task, false)], [...toBinary(TaskSchema, bare)], `task ${task.id || "(empty)"} without payload and headers`);
  }
});

test("a task with unknown fields (a newer peer's) keeps them", (t) => {
  const task = create(TaskSchema, { id: "u", pipeline: "p" });
  task.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([5]) }];
  const back = fromBinary(TaskSchema, encodeTask(task));
  t.deepEqual([...(back.$unknown?.[0]?.data ?? [])], [5]);
  t.deepEqual([...encodeTask(task)], [...toBinary(TaskSchema, task)]);
});
