// Two routers' Process streams to one worker, spoken by the test itself (real gRPC): what a
// worker does when both assign the same task, stage and attempt, and one of them cancels.
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  AsyncQueue,
  clientTo,
  DSAT_VERSION,
  encodePayload,
  type ProcessRequest,
  ProcessRequestSchema,
  State,
  stateName,
  WorkerService,
} from "@dsat/sdk";
import { waitFor } from "./wait.ts";

/** What each stream saw of the attempt: the `to` of its transitions, in order. */
export interface TwoStreams {
  readonly a: string[];
  readonly b: string[];
}

/**
 * Router "a" and router "b" each assign attempt 1 of one task at `stage` (a `hold` handler,
 * held `holdMs`) to the worker at `address` (of concurrency 2 or more); once both runs are
 * RUNNING, "a" cancels its own.
 * Resolves when "a" saw its end and "b" its end, or throws after the deadline with what each saw.
 */
export async function sameAttemptOnTwoStreams(address: string, stage: string, holdMs = 500): Promise<TwoStreams> {
  const taskId = `two-streams-${randomUUID()}`;
  const assignment = {
    task: { id: taskId, pipeline: "two-streams", payload: encodePayload({ ms: holdMs }) },
    stage,
    attempt: 1,
  };
  const seen: TwoStreams = { a: [], b: [] };
  const queues = { a: new AsyncQueue<ProcessRequest>(), b: new AsyncQueue<ProcessRequest>() };
  const reading: Promise<void>[] = [];
  for (const name of ["a", "b"] as const) {
    const stream = clientTo(WorkerService, address).process(queues[name], {
      headers: { "dsat-version": DSAT_VERSION, "dsat-router-id": `router-${name}` },
    });
    reading.push(
      (async () => {
        for await (const res of stream) {
          for (const t of res.transitions) if (t.taskId === taskId) seen[name].push(stateName(t.to));
        }
      })().catch(() => {}),
    );
    queues[name].push(create(ProcessRequestSchema, { assignments: [assignment] }));
  }
  const ended = (s: string[]) => s.some((x) => x !== stateName(State.RUNNING));
  const saw = (err: unknown): never => {
    throw new Error(`${(err as Error).message}; a saw [${seen.a}], b saw [${seen.b}]`);
  };
  try {
    // The worker runs two attempts at once (concurrency 2 at least), so both start now.
    await waitFor(() => seen.a.length > 0 && seen.b.length > 0, { what: "both runs to start" }).catch(saw);
    queues.a.push(create(ProcessRequestSchema, { cancels: [{ taskId, stage, attempt: 1, reason: "router a gave it up" }] }));
    await waitFor(() => ended(seen.a) && ended(seen.b), { timeoutMs: holdMs + 10_000, what: "both runs to end" }).catch(saw);
    return seen;
  } finally {
    queues.a.end();
    queues.b.end();
    await Promise.all(reading);
  }
}
