import { clientTo, State, StatusService, type Transition } from "@dsat/sdk";
import type { TestMesh } from "./mesh.ts";
import { waitFor } from "./wait.ts";

/** A transition's time in nanoseconds since the epoch, as OTLP carries it (-1 without a time). */
export const nanos = (tr: Transition | undefined): bigint =>
  tr?.time ? tr.time.seconds * 1_000_000_000n + BigInt(tr.time.nanos) : -1n;

/**
 * Runs a task of `pipeline` while watching it on StatusService from before its start, and
 * returns how it ended and the progress (RUNNING -> RUNNING) of `stage` the Watch saw live,
 * each with its time and whether the stage had ended by then.
 */
export async function runWatchingProgress(mesh: TestMesh, pipeline: string, stage: string, payload: unknown) {
  const taskId = `${pipeline}-${Date.now()}`;
  const seen: { detail: string; at: bigint; stageEnded: boolean }[] = [];
  let stageEnded = false;
  let opened = false;
  const watching = (async () => {
    const stream = clientTo(StatusService, mesh.status[0]?.address ?? "").watch(
      { taskId, waitForTask: true },
      { onHeader: () => (opened = true), timeoutMs: 20_000 },
    );
    for await (const res of stream) {
      const tr = res.transition;
      if (!tr || tr.stage !== stage) continue;
      if (tr.from === State.RUNNING && tr.to === State.RUNNING) seen.push({ detail: tr.detail, at: nanos(tr), stageEnded });
      if (tr.to === State.SUCCEEDED) stageEnded = true;
    }
  })();
  await waitFor(() => opened, { what: "the Watch to open" });
  const result = await mesh.client.run(pipeline, payload, { taskId, deadline: 15_000 });
  await watching;
  return { result, seen };
}
