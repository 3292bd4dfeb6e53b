import { fromBinary } from "@bufbuild/protobuf";
import { type ReportRequest, ReportRequestSchema, type Task } from "@dsat/sdk";
import { bytes, EMPTY, FALLBACK, field, Reader, readTimestamp, readTransition, str, sub, u64 } from "../common/transition-decoding.ts";

// A hand-written decoder of dsat.v1.ReportRequest, the request StatusService gets most (a
// Report carries the creates and transitions of up to hundreds of tasks): protobuf-es's
// generic reader was the largest single cost of the status server (7% of its time, with the
// create() of every message). It makes the same messages as fromBinary (plain objects with
// every field; `report-decoding.test.ts` checks them with equals() and by encoding them
// again). Anything it does not know (an unknown field from a newer peer, a field of an
// unexpected wire type) sends the whole request to fromBinary, so that nothing is lost.

/** Decodes a ReportRequest: by hand, or with fromBinary when it carries what the hand decoder does not know. */
export function decodeReportRequest(bytes: Uint8Array): ReportRequest {
  try {
    return readReport(new Reader(bytes));
  } catch {
    // FALLBACK, or bytes that are not a valid message: fromBinary decides (and says what is wrong).
    return fromBinary(ReportRequestSchema, bytes);
  }
}

function readReport(r: Reader): ReportRequest {
  const req: ReportRequest = { $typeName: "dsat.v1.ReportRequest", created: [], routerId: "", transitions: [] };
  const len = r.buf.length;
  while (r.pos < len) {
    switch (field(r)) {
      case 1:
        req.created.push(readTask(r, sub(r)));
        break;
      case 2:
        req.routerId = str(r);
        break;
      case 3:
        req.transitions.push(readTransition(r, sub(r)));
        break;
      default:
        throw FALLBACK;
    }
  }
  return req;
}

function readTask(r: Reader, end: number): Task {
  const t: Task = { $typeName: "dsat.v1.Task", id: "", pipeline: "", pipelineVersion: 0n, payload: EMPTY, headers: {} };
  while (r.pos < end) {
    switch (field(r)) {
      case 1:
        t.id = str(r);
        break;
      case 2:
        t.pipeline = str(r);
        break;
      case 3:
        t.pipelineVersion = u64(r);
        break;
      case 4:
        t.payload = bytes(r);
        break;
      case 5: {
        const entryEnd = sub(r);
        let key = "";
        let value = "";
        while (r.pos < entryEnd) {
          const no = field(r);
          if (no === 1) key = str(r);
          else if (no === 2) value = str(r);
          else throw FALLBACK;
        }
        t.headers[key] = value;
        break;
      }
      case 6:
        t.deadline = readTimestamp(r, sub(r));
        break;
      case 7:
        t.createdAt = readTimestamp(r, sub(r));
        break;
      default:
        throw FALLBACK;
    }
  }
  if (r.pos !== end) throw new Error("a task runs past its length");
  return t;
}
