// The raw baseline router: client -> router -> w1 -> router -> w2 -> router -> w3 -> router
// -> client, one message per task per link, no state but the open streams.
//   node bench/raw/raw-router.ts --workers HOST:PORT,HOST:PORT,HOST:PORT
import * as grpc from "@grpc/grpc-js";
import { exitWithParent, flags, printReady } from "../lib/child.ts";
import { bind, openStream, ROUTER_SERVICE, WORKER_SERVICE } from "./raw-wire.ts";

const workers = (flags().workers ?? "").split(",").filter(Boolean);
if (workers.length === 0) throw new Error("--workers HOST:PORT,… is required");

/** Open Submit streams, by the number written in each message's first two bytes. */
const clients: (grpc.ServerDuplexStream<Buffer, Buffer> | undefined)[] = [];
const links = workers.map((address) => openStream(new grpc.Client(address, grpc.credentials.createInsecure()), WORKER_SERVICE.process));
links.forEach((link, i) => {
  const next = links[i + 1];
  link.on("data", (msg: Buffer) => {
    if (next) next.write(msg);
    else clients[msg.readUInt16BE(0)]?.write(msg);
  });
  link.on("error", (err: Error) => {
    process.stderr.write(`raw router: the stream to ${workers[i]} broke: ${err.message}\n`);
    process.exit(1);
  });
});
const first = links[0] as grpc.ClientDuplexStream<Buffer, Buffer>;

const server = new grpc.Server();
server.addService(ROUTER_SERVICE, {
  submit: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
    const index = clients.length;
    clients.push(call);
    call.on("data", (msg: Buffer) => {
      msg.writeUInt16BE(index, 0);
      first.write(msg);
    });
    const gone = () => {
      clients[index] = undefined;
    };
    call.on("end", () => {
      gone();
      call.end();
    });
    call.on("error", gone);
  },
});
const address = await bind(server);
exitWithParent(() => {
  server.forceShutdown();
});
printReady("raw-router", address);
