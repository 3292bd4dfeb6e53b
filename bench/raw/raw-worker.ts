// A raw baseline worker: answers every task with its payload (the trivial handler).
//   node bench/raw/raw-worker.ts
import * as grpc from "@grpc/grpc-js";
import { exitWithParent, printReady } from "../lib/child.ts";
import { bind, WORKER_SERVICE } from "./raw-wire.ts";

const server = new grpc.Server();
server.addService(WORKER_SERVICE, {
  process: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
    call.on("data", (msg: Buffer) => call.write(msg));
    call.on("end", () => call.end());
    call.on("error", () => {});
  },
});
const address = await bind(server);
exitWithParent(() => {
  server.forceShutdown();
});
printReady("raw-worker", address);
