// The hand-written codecs (services/common/transition-encoding.ts, services/status/
// report-decoding.ts and state-encoding.ts, services/router/assignment-encoding.ts) know the
// fields of the messages they write or read as they are today. A field added to the proto
// must be added to them too, or it would be dropped on those paths: this test fails until
// the codecs and the lists below are updated together.
import type { DescMessage } from "@bufbuild/protobuf";
import { DurationSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import {
  AssignmentSchema,
  ReportRequestSchema,
  StageStateSchema,
  TaskErrorSchema,
  TaskSchema,
  TaskStateSchema,
  TransitionSchema,
} from "@dsat/sdk";
import test from "ava";

const CODED: [DescMessage, number[], string][] = [
  [TransitionSchema, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], "transition-encoding.ts (encode), report-decoding.ts (decode)"],
  [TaskErrorSchema, [1, 2, 3], "transition-encoding.ts, report-decoding.ts"],
  [TimestampSchema, [1, 2], "transition-encoding.ts, report-decoding.ts"],
  [TaskSchema, [1, 2, 3, 4, 5, 6, 7], "report-decoding.ts (decode); assignment-encoding.ts writes 4 and 5 itself"],
  [ReportRequestSchema, [1, 2, 3], "report-decoding.ts"],
  [TaskStateSchema, [1, 2, 3, 4, 5, 6, 7, 8, 9], "state-encoding.ts (encodeStateRest: 2-8)"],
  [StageStateSchema, [1, 2, 3, 4, 5, 6, 7], "state-encoding.ts (stages)"],
  [AssignmentSchema, [1, 2, 3, 4], "assignment-encoding.ts"],
  [DurationSchema, [1, 2], "assignment-encoding.ts (timeout)"],
];

for (const [schema, fields, where] of CODED) {
  test(`the hand-written codecs know every field of ${schema.typeName}`, (t) => {
    t.deepEqual(
      schema.fields.map((f) => f.number).sort((a, b) => a - b),
      fields,
      `${schema.typeName} has other fields than the hand-written codecs know: update ${where} and this list`,
    );
  });
}
