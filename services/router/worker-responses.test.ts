import { create, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { MemberKind, ProcessResponseSchema, State, TransitionSchema } from "@dsat/sdk";
import test from "ava";
import { decodeWorkerResponse, ProcessResponseWireSchema } from "./worker-responses.ts";

// What the router makes of a worker's ProcessResponse must be what fromBinary makes of it:
// the same transitions, load and hello, whatever the worker put in.

function sample() {
  return create(ProcessResponseSchema, {
    hello: { id: "w-1", kind: MemberKind.WORKER, address: "127.0.0.1:5001", stage: "s1", capacity: 8, version: "0.1.2" },
    load: { inFlight: 3, capacity: 8, avgRunMs: 1.5 },
    transitions: [
      create(TransitionSchema, {
        taskId: "t1",
        stage: "s1",
        attempt: 2,
        from: State.RUNNING,
        to: State.SUCCEEDED,
        time: timestampFromMs(1_763_900_000_123),
        memberId: "w-1",
        output: new Uint8Array([1, 2, 3]),
        port: "out",
        seq: 7n,
        detail: "done",
        workerId: "w-1",
      }),
      create(TransitionSchema, {
        taskId: "t2",
        stage: "s1",
        attempt: 1,
        from: State.RUNNING,
        to: State.FAILED,
        error: { code: "E_BAD", message: "bad input: é", retryable: true },
      }),
      create(TransitionSchema, { taskId: "t3", stage: "s1", to: State.RUNNING, time: timestampFromMs(-1) }),
    ],
  });
}

function same(t: import("ava").ExecutionContext, bytes: Uint8Array): void {
  const ours = decodeWorkerResponse(fromBinary(ProcessResponseWireSchema, bytes));
  const theirs = fromBinary(ProcessResponseSchema, bytes);
  t.is(ours.transitions.length, theirs.transitions.length);
  ours.transitions.forEach((tr, i) => {
    const want = theirs.transitions[i];
    t.true(want !== undefined && equals(TransitionSchema, tr, want), `transition ${i} equals() fromBinary's`);
  });
  t.deepEqual(ours.load, theirs.load);
  t.deepEqual(ours.hello, theirs.hello);
}

test("a ProcessResponse read as ProcessResponseWire gives the same transitions, load and hello as fromBinary", (t) => {
  same(t, toBinary(ProcessResponseSchema, sample()));
});

test("a load or hello not sent is undefined; one sent with every field at its default is there", (t) => {
  const none = decodeWorkerResponse(fromBinary(ProcessResponseWireSchema, toBinary(ProcessResponseSchema, create(ProcessResponseSchema, {}))));
  t.is(none.load, undefined);
  t.is(none.hello, undefined);
  t.deepEqual(none.transitions, []);
  const empty = create(ProcessResponseSchema, { load: {}, hello: {} });
  same(t, toBinary(ProcessResponseSchema, empty));
  const ours = decodeWorkerResponse(fromBinary(ProcessResponseWireSchema, toBinary(ProcessResponseSchema, empty)));
  t.not(ours.load, undefined);
  t.not(ours.hello, undefined);
});

test("a transition with a field the router does not know (a newer worker's) keeps it", (t) => {
  const res = sample();
  const tr = res.transitions[0];
  if (tr) tr.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([7]) }];
  const bytes = toBinary(ProcessResponseSchema, res);
  const ours = decodeWorkerResponse(fromBinary(ProcessResponseWireSchema, bytes));
  t.deepEqual([...(ours.transitions[0]?.$unknown?.[0]?.data ?? [])], [7]);
  same(t, bytes);
});
