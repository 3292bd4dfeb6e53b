import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  Code,
  type SubmitStreamRequest,
  type SubmitStreamResponseSchema,
  splitBySize,
  type TaskResult,
  toDsatError,
} from "@dsat/sdk";
import type * as grpc from "@grpc/grpc-js";
import type { RouterServer } from "./router-server.ts";

type Call = grpc.ServerDuplexStream<SubmitStreamRequest, MessageInitShape<typeof SubmitStreamResponseSchema>>;

/**
 * SubmitStream: each request's tasks are submitted together and acknowledged in one
 * response, in request order. While the router is full the stream is not read, so that
 * HTTP/2 flow control slows the client down. With await_results, each accepted task's
 * result follows when it ends; the call ends once the client has half-closed and every
 * awaited result is sent.
 */
export function submitStreamHandler(router: RouterServer, call: Call): Promise<void> {
  return new Promise<void>((resolve) => {
    let chain: Promise<void> = Promise.resolve();
    let awaiting = 0;
    let clientDone = false;
    let finished = false;
    let pending: TaskResult[] = [];
    let scheduled = false;
    const listeners = new Map<string, (r: TaskResult) => void>();

    const flushResults = () => {
      scheduled = false;
      if (pending.length === 0 || finished) return;
      for (const results of splitBySize(pending, (r) => r.output.length + 256)) call.write({ results });
      pending = [];
      maybeEnd();
    };
    const maybeEnd = () => {
      if (finished || !clientDone || awaiting > 0 || pending.length > 0) return;
      finished = true;
      chain.then(() => resolve());
    };
    const onResult = (r: TaskResult) => {
      listeners.delete(r.taskId);
      awaiting--;
      pending.push(r);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flushResults);
      }
    };
    // Each request's tasks are admitted in order, each once the router has room: while it
    // is full the stream is not read, so HTTP/2 flow control holds the client back.
    call.on("data", (req: SubmitStreamRequest) => {
      call.pause();
      router.submitBatch(req.tasks.length);
      const admitted = (async () => {
        const submits: Promise<{ taskId: string; code: number; message: string }>[] = [];
        for (const t of req.tasks) {
          await router.acquireRoom();
          // A result is awaited from the start: the router may tell it before the ack (a
          // task stored with its end); it tells it exactly once when the submit succeeds.
          let told = false;
          const listener = req.awaitResults
            ? (r: TaskResult) => {
                told = true;
                onResult(r);
              }
            : undefined;
          if (listener) awaiting++;
          submits.push(
            router.submit(t, true, listener).then(
              ({ taskId }) => {
                if (listener && !told) listeners.set(taskId, listener);
                return { taskId, code: 0, message: "" };
              },
              (err: unknown) => {
                if (listener) awaiting--;
                const e = toDsatError(err);
                return { taskId: t.taskId, code: e.code === Code.Unknown ? Code.Internal : e.code, message: e.rawMessage };
              },
            ),
          );
        }
        if (!finished) call.resume();
        return Promise.all(submits);
      })();
      chain = chain.then(async () => {
        const acks = await admitted;
        if (!finished) call.write({ acks });
      });
    });
    call.on("end", () => {
      clientDone = true;
      chain.then(maybeEnd);
    });
    const abandon = () => {
      finished = true;
      for (const [id, l] of listeners) router.offResult(id, l);
      resolve();
    };
    call.on("cancelled", abandon);
    call.on("error", abandon);
  });
}
