// The handlers that the bench's dsat workers run (services/worker-host/main.ts --module this).
import { setTimeout as sleep } from "node:timers/promises";
import type { Payload, TaskContext } from "@dsat/sdk";

/** The trivial handler: the output is the input, as bytes. */
export function echo(input: Payload): Uint8Array {
  return input.bytes;
}

/** How long `slow` holds each task, in milliseconds: BENCH_SLOW_MS, default 20. */
const SLOW_MS = Number(process.env.BENCH_SLOW_MS ?? 20);

/** The slow stage of the bounded-memory mode: holds each task SLOW_MS, then echoes it. */
export async function slow(input: Payload, ctx: TaskContext): Promise<Uint8Array> {
  await sleep(SLOW_MS, undefined, { signal: ctx.signal });
  return input.bytes;
}
