import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import { State, TaskErrorSchema, type Transition, TransitionSchema } from "@dsat/sdk";
import test from "ava";
import { bigVarintSize, encodeTransitionField, writeBigVarint } from "./transition-encoding.ts";

/** The message inside one encoded field entry, checking the tag. */
function body(entry: Uint8Array, fieldNo: number): Uint8Array {
  const r = new BinaryReader(entry);
  const [no, wt] = r.tag();
  if (no !== fieldNo || wt !== 2) throw new Error(`tag ${no}/${wt}`);
  const b = r.bytes();
  if (r.pos !== entry.length) throw new Error("trailing bytes");
  return b;
}

const samples: Transition[] = [
  create(TransitionSchema, {}),
  create(TransitionSchema, { taskId: "t-1", stage: "", from: State.UNSPECIFIED, to: State.PENDING, seq: 1n }),
  create(TransitionSchema, {
    taskId: "0193f3a1-7c2e-7d4e-9f00-aaaaaaaaaaaa",
    stage: "normalize",
    attempt: 3,
    from: State.RUNNING,
    to: State.SUCCEEDED,
    time: { $typeName: "google.protobuf.Timestamp", seconds: 1_763_000_000n, nanos: 123_456_789 },
    memberId: "router-host-1234-abcd",
    output: new Uint8Array(300).fill(7),
    port: "ok",
    seq: 2n ** 40n + 5n,
    detail: "ünïcödé ✓ detail",
    workerId: "worker-host-99",
  }),
  create(TransitionSchema, {
    taskId: "x".repeat(200),
    stage: "s",
    attempt: 1,
    from: State.RUNNING,
    to: State.FAILED,
    time: { $typeName: "google.protobuf.Timestamp", seconds: -5n, nanos: 0 },
    error: create(TaskErrorSchema, { code: "unavailable", message: "m".repeat(130), retryable: true }),
    seq: 127n,
  }),
  create(TransitionSchema, { taskId: "e", error: create(TaskErrorSchema, {}), time: { $typeName: "google.protobuf.Timestamp", seconds: 0n, nanos: 0 } }),
];

for (const [i, t] of samples.entries()) {
  test(`sample ${i}: the same bytes as toBinary, in a history entry`, (tt) => {
    const entry = encodeTransitionField(9, t);
    tt.deepEqual(Buffer.from(body(entry, 9)), Buffer.from(toBinary(TransitionSchema, t)));
  });
}

test("a transition with unknown fields keeps them (falls back to toBinary)", (t) => {
  const withExtra = new Uint8Array([...toBinary(TransitionSchema, samples[1] as Transition), 0xf8, 0x01, 0x05]); // field 31 = 5
  const decoded = fromBinary(TransitionSchema, withExtra);
  const entry = encodeTransitionField(9, decoded);
  t.deepEqual(Buffer.from(body(entry, 9)), Buffer.from(withExtra));
});

test("bigVarintSize and writeBigVarint agree with protobuf-es at every varint length", (t) => {
  const values = [0n, 1n, 2n ** 64n - 1n];
  for (let bits = 7n; bits < 64n; bits += 7n) values.push(2n ** bits - 1n, 2n ** bits);
  for (const n of values) {
    const want = new BinaryWriter().uint64(n).finish();
    const out = Buffer.alloc(16);
    t.is(writeBigVarint(out, 0, n), want.length, `writeBigVarint(${n})`);
    t.deepEqual([...out.subarray(0, want.length)], [...want]);
    t.is(bigVarintSize(n), want.length, `bigVarintSize(${n})`);
  }
});
