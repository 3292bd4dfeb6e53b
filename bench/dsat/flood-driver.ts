// The bounded-memory mode's driver: floods a router's SubmitStream (no await_results) with
// tasks of a pipeline whose first stage is slow, then sends a probe on top and sees whether
// admission slowed: RESOURCE_EXHAUSTED acks, or acks that do not come (the router stopped
// reading the stream: HTTP/2 flow control holds the client back).
//   node bench/dsat/flood-driver.ts --router HOST:PORT --pipeline NAME --tasks 10000 --probe 1000
import { create } from "@bufbuild/protobuf";
import {
  AsyncQueue,
  Code,
  clientTo,
  RouterService,
  type SubmitAck,
  type SubmitStreamRequest,
  SubmitStreamRequestSchema,
} from "@dsat/sdk";
import { flags } from "../lib/child.ts";
import { payloadOf } from "../lib/load.ts";
import { quantile } from "../lib/stats.ts";

/** What the flood saw; sent to the bench as `{ type: "flood", result }`. */
export interface FloodResult {
  submitted: number;
  accepted: number;
  /** Refused tasks by gRPC code name. */
  refused: Record<string, number>;
  /** From the first request to the last ack, in seconds. */
  seconds: number;
  /** Accepted tasks per second while flooding. */
  admissionPerSec: number;
  /** Time from sending a request (100 tasks) to its ack: p50, p99, max in milliseconds. */
  ackP50Ms: number;
  ackP99Ms: number;
  ackMaxMs: number;
  /** Stage runs waiting in the router's queues right after the flood, and at the end of the hold. */
  queuedAfterFlood: number;
  queuedAfterHold: number;
  probe: { sent: number; accepted: number; refused: Record<string, number>; unacked: number; waitedMs: number };
}

const f = flags();
const router = f.router ?? "";
const pipeline = f.pipeline ?? "mem";
const total = Number(f.tasks ?? 10_000);
const probeTasks = Number(f.probe ?? 1_000);
const batch = Number(f.batch ?? 100);
/** Requests sent and not yet acked, at most, while flooding. */
const window = Number(f.window ?? 20);
const holdMs = Number(f["hold-ms"] ?? 2_000);
const probeWaitMs = Number(f["probe-wait-ms"] ?? 5_000);
const floodTimeoutMs = Number(f["timeout-ms"] ?? 60_000);

const codeName = (code: number) => Code[code] ?? String(code);
const payload = payloadOf(Number(f["payload-bytes"] ?? 64));
const client = clientTo(RouterService, router);
const requests = new AsyncQueue<SubmitStreamRequest>();
const abort = new AbortController();
const responses = client.submitStream(requests, { signal: abort.signal });

interface Sent {
  at: number;
  done: (acks: SubmitAck[]) => void;
}
const unacked: Sent[] = [];
void (async () => {
  try {
    for await (const res of responses) {
      if (res.acks.length > 0) unacked.shift()?.done(res.acks);
    }
  } catch {
    // The bench cancels the stream at the end.
  }
})();

function send(n: number, tag: string): Promise<{ acks: SubmitAck[]; ms: number }> {
  return new Promise((resolve) => {
    const at = performance.now();
    unacked.push({ at, done: (acks) => resolve({ acks, ms: performance.now() - at }) });
    requests.push(
      create(SubmitStreamRequestSchema, {
        tasks: Array.from({ length: n }, (_, i) => ({ pipeline, payload, taskId: `${tag}-${i}` })),
        awaitResults: false,
      }),
    );
  });
}

async function queued(): Promise<number> {
  const view = await client.listWorkers({}, { timeoutMs: 5_000 });
  return Object.values(view.queued).reduce((a, b) => a + b, 0);
}

function tally(acks: SubmitAck[], into: { accepted: number; refused: Record<string, number> }): void {
  for (const a of acks) {
    if (a.code === 0) into.accepted++;
    else into.refused[codeName(a.code)] = (into.refused[codeName(a.code)] ?? 0) + 1;
  }
}

// The flood: `total` tasks, `batch` per request, at most `window` requests unacked.
const flood = { accepted: 0, refused: {} as Record<string, number> };
const ackMs: number[] = [];
const started = performance.now();
const deadline = Date.now() + floodTimeoutMs;
let sent = 0;
let request = 0;
const inFlight = new Set<Promise<void>>();
while (sent < total && Date.now() < deadline) {
  const n = Math.min(batch, total - sent);
  const p: Promise<void> = send(n, `flood-${request++}`).then(({ acks, ms }) => {
    ackMs.push(ms);
    tally(acks, flood);
    inFlight.delete(p);
  });
  inFlight.add(p);
  sent += n;
  if (inFlight.size >= window) await Promise.race([Promise.race(inFlight), new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())))]);
}
await Promise.race([Promise.all(inFlight), new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())))]);
const seconds = (performance.now() - started) / 1000;
const queuedAfterFlood = await queued();
process.send?.({ type: "flood-filled" });
await new Promise((r) => setTimeout(r, holdMs));
const queuedAfterHold = await queued();

// The probe: more tasks on top, all at once; which are taken, refused, or left unacked?
const probe = { sent: 0, accepted: 0, refused: {} as Record<string, number>, unacked: 0, waitedMs: probeWaitMs };
const probes: Promise<void>[] = [];
for (let i = 0; probe.sent < probeTasks; i++) {
  const n = Math.min(batch, probeTasks - probe.sent);
  probe.sent += n;
  probes.push(send(n, `probe-${i}`).then(({ acks }) => tally(acks, probe)));
}
await Promise.race([Promise.all(probes), new Promise((r) => setTimeout(r, probeWaitMs))]);
probe.unacked = probe.sent - probe.accepted - Object.values(probe.refused).reduce((a, b) => a + b, 0);

const result: FloodResult = {
  submitted: sent,
  accepted: flood.accepted,
  refused: flood.refused,
  seconds,
  admissionPerSec: flood.accepted / seconds,
  ackP50Ms: quantile(ackMs, 0.5),
  ackP99Ms: quantile(ackMs, 0.99),
  ackMaxMs: Math.max(...ackMs),
  queuedAfterFlood,
  queuedAfterHold,
  probe,
};
await new Promise<void>((resolve) => (process.send ? process.send({ type: "flood", result }, undefined, undefined, () => resolve()) : resolve()));
abort.abort();
process.exit(0);
