import { create, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type Assignment, AssignmentSchema, CancelSchema, ProcessRequestSchema, type Task, TaskSchema } from "@dsat/sdk";
import test from "ava";
import { encodeAssignmentValue, encodeTaskBase, processRequestWith, rememberTaskBase } from "./assignment-encoding.ts";

const task = (over: Partial<Task> = {}): Task =>
  create(TaskSchema, {
    id: "0190a1b2-c3d4-7e5f-8a9b-000000000001",
    pipeline: "bench",
    pipelineVersion: 7n,
    payload: new Uint8Array([1, 2, 3]),
    headers: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
    deadline: timestampFromMs(1_800_000_000_123),
    createdAt: timestampFromMs(1_700_000_000_456),
    ...over,
  });

/** An Assignment as the router makes it: the task copied with the stage's input, its base remembered. */
function assignment(t: Task, input: Uint8Array, stage: string, attempt: number, timeoutMs: number | undefined): Assignment {
  const a: Assignment = {
    $typeName: "dsat.v1.Assignment",
    task: { ...t, payload: input },
    stage,
    attempt,
    timeout:
      timeoutMs === undefined
        ? undefined
        : { $typeName: "google.protobuf.Duration", seconds: BigInt(Math.floor(timeoutMs / 1000)), nanos: (timeoutMs % 1000) * 1e6 },
  };
  rememberTaskBase(a, encodeTaskBase(t));
  return a;
}

/** Reads the length prefix of an encoded value and decodes the Assignment after it. */
function decodeValue(bytes: Uint8Array): Assignment {
  let len = 0;
  let shift = 0;
  let p = 0;
  for (;;) {
    const b = bytes[p++] as number;
    len += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if (b < 0x80) break;
  }
  if (p + len !== bytes.length) throw new Error(`length ${len} + ${p} does not match ${bytes.length} bytes`);
  return fromBinary(AssignmentSchema, bytes.subarray(p));
}

const big = new Uint8Array(20_000).map((_, i) => i % 251);
const cases: [string, Assignment][] = [
  ["a typical one", assignment(task(), new Uint8Array(64).fill(7), "s2", 1, 30_000)],
  ["no headers, no payload, no deadline", assignment(task({ headers: {}, deadline: undefined }), new Uint8Array(0), "s1", 1, 30_000)],
  ["several headers, unicode", assignment(task({ headers: { a: "", "ключ": "значение ✓", tracestate: "x=1" } }), new Uint8Array([0]), "étape", 300, 1_500)],
  ["a payload past 16 KB (lengths of three bytes)", assignment(task(), big, "s3", 2, 250)],
  ["attempt 0, timeout 0 s", assignment(task(), new Uint8Array(5), "", 0, 0)],
  ["no timeout", assignment(task({ pipelineVersion: 0n }), new Uint8Array(5), "s", 1, undefined)],
];

for (const [name, a] of cases) {
  test(`an assignment decodes to itself: ${name}`, (t) => {
    const decoded = decodeValue(encodeAssignmentValue(a));
    t.true(equals(AssignmentSchema, decoded, a));
    // And to what protobuf-es's own bytes decode to.
    t.true(equals(AssignmentSchema, decoded, fromBinary(AssignmentSchema, toBinary(AssignmentSchema, a))));
  });
}

test("the trace context put in the copy after the base was made goes out (the base has no headers)", (t) => {
  const a = assignment(task(), new Uint8Array(3), "s1", 1, 1000);
  if (a.task) a.task.headers = { ...a.task.headers, traceparent: "00-11111111111111111111111111111111-2222222222222222-01" };
  t.is(decodeValue(encodeAssignmentValue(a)).task?.headers.traceparent, "00-11111111111111111111111111111111-2222222222222222-01");
});

test("an assignment without a remembered task, or with unknown fields, goes through toBinary", (t) => {
  const plain = create(AssignmentSchema, { task: task(), stage: "s1", attempt: 1 });
  t.true(equals(AssignmentSchema, decodeValue(encodeAssignmentValue(plain)), plain));
  const odd = assignment(task(), new Uint8Array(1), "s1", 1, 10);
  odd.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([5]) }];
  const decoded = decodeValue(encodeAssignmentValue(odd));
  t.deepEqual(
    decoded.$unknown?.map((u) => ({ ...u, data: [...u.data] })),
    [{ no: 99, wireType: 0, data: [5] }],
  );
});

test("a ProcessRequest with the assignments put in encoded is the same request for a decoder", (t) => {
  const assignments = cases.map(([, a]) => a);
  const cancels = [create(CancelSchema, { taskId: "x", stage: "s1", attempt: 1, reason: "cancelled" })];
  const req = processRequestWith(create(ProcessRequestSchema, { cancels }), assignments);
  const decoded = fromBinary(ProcessRequestSchema, toBinary(ProcessRequestSchema, req));
  t.is(decoded.assignments.length, assignments.length);
  for (const [i, a] of assignments.entries()) t.true(equals(AssignmentSchema, decoded.assignments[i] as Assignment, a), `assignment ${i}`);
  t.is(decoded.cancels[0]?.reason, "cancelled");
  t.is(decoded.$unknown, undefined, "nothing unknown left for the worker");
});
