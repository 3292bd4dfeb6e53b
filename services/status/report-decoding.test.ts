import { create, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type ReportRequest, ReportRequestSchema, State, TaskSchema, TransitionSchema } from "@dsat/sdk";
import test from "ava";
import { decodeReportRequest } from "./report-decoding.ts";

const long = "ünïcødé ✓ and more than twenty-four characters";

function sample(): ReportRequest {
  return create(ReportRequestSchema, {
    routerId: "router-host-1234-abcd",
    created: [
      create(TaskSchema, {
        id: "0190a1b2-c3d4-7e5f-8a9b-000000000001",
        pipeline: "bench",
        pipelineVersion: 2n ** 63n + 5n,
        payload: new Uint8Array(300).map((_, i) => i % 256),
        headers: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "ключ": long, "": "" },
        deadline: timestampFromMs(1_800_000_000_123),
        createdAt: timestampFromMs(-1_000),
      }),
      create(TaskSchema, { id: "bare" }),
    ],
    transitions: [
      create(TransitionSchema, {
        taskId: "t1",
        stage: "s1",
        attempt: 3,
        from: State.RUNNING,
        to: State.FAILED,
        time: timestampFromMs(1_700_000_000_999),
        memberId: "w-1",
        error: { code: "BOOM", message: long, retryable: true },
        output: new Uint8Array([0, 1, 2, 255]),
        port: "left",
        seq: 2n ** 64n - 1n,
        detail: long,
        workerId: "worker-é",
      }),
      create(TransitionSchema, { taskId: "t2", to: State.PENDING }),
      create(TransitionSchema, { taskId: "t3", stage: "s2", attempt: 4_000_000_000, from: State.DISPATCHED, to: State.RUNNING, error: {} }),
      create(TransitionSchema, {}),
    ],
  });
}

function same(t: import("ava").ExecutionContext, bytes: Uint8Array): void {
  const ours = decodeReportRequest(bytes);
  const theirs = fromBinary(ReportRequestSchema, bytes);
  t.true(equals(ReportRequestSchema, ours, theirs), "equals() to fromBinary's message");
  t.deepEqual([...toBinary(ReportRequestSchema, ours)], [...toBinary(ReportRequestSchema, theirs)], "and encodes to the same bytes");
}

test("a Report decodes to the same message as fromBinary's", (t) => {
  same(t, toBinary(ReportRequestSchema, sample()));
});

test("an empty Report, and a big one", (t) => {
  same(t, new Uint8Array(0));
  const big = sample();
  for (let i = 0; i < 2_000; i++) big.transitions.push(create(TransitionSchema, { taskId: `task-${i}`, stage: "s1", attempt: 1, to: State.RUNNING, time: timestampFromMs(i) }));
  same(t, toBinary(ReportRequestSchema, big));
});

test("fields in another order (as another implementation may write them) decode the same", (t) => {
  const req = sample();
  const parts = [
    toBinary(ReportRequestSchema, create(ReportRequestSchema, { transitions: req.transitions })),
    toBinary(ReportRequestSchema, create(ReportRequestSchema, { routerId: req.routerId })),
    toBinary(ReportRequestSchema, create(ReportRequestSchema, { created: req.created })),
  ];
  same(t, Buffer.concat(parts));
});

test("unknown fields (a newer peer's) are kept: the request goes to fromBinary", (t) => {
  const req = sample();
  const tr = req.transitions[1];
  if (tr) tr.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([7]) }];
  const decoded = decodeReportRequest(toBinary(ReportRequestSchema, req));
  t.deepEqual([...(decoded.transitions[1]?.$unknown?.[0]?.data ?? [])], [7]);
  same(t, toBinary(ReportRequestSchema, req));
});

test("bytes that are not a Report fail as fromBinary fails", (t) => {
  const bad = new Uint8Array([0x1a, 0x05, 0x0a]);
  const theirs = t.throws(() => fromBinary(ReportRequestSchema, bad));
  const ours = t.throws(() => decodeReportRequest(bad));
  t.is(ours?.message, theirs?.message);
});
