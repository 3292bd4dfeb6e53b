// Loads the raw baseline: one Submit stream to the router, a closed loop of N tasks in flight.
//   node bench/raw/raw-driver.ts --router HOST:PORT --plan JSON
import * as grpc from "@grpc/grpc-js";
import { flags } from "../lib/child.ts";
import { type LoadPlan, payloadOf, runLoad } from "../lib/load.ts";
import { HEADER_BYTES, openStream, ROUTER_SERVICE } from "./raw-wire.ts";

const f = flags();
const plan = JSON.parse(f.plan ?? "") as LoadPlan;
const client = new grpc.Client(f.router ?? "", grpc.credentials.createInsecure());
const stream = openStream(client, ROUTER_SERVICE.submit);
const waiting = new Map<number, () => void>();
stream.on("data", (msg: Buffer) => {
  const id = msg.readUInt32BE(2);
  waiting.get(id)?.();
  waiting.delete(id);
});
stream.on("error", (err: Error) => {
  for (const w of waiting.values()) w();
  waiting.clear();
  process.stderr.write(`raw driver: the submit stream broke: ${err.message}\n`);
  process.exit(1);
});
const payload = Buffer.from(payloadOf(plan.payloadBytes));
let next = 0;

await runLoad(plan, () => {
  const id = next++ >>> 0;
  const msg = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  msg.writeUInt16BE(0, 0);
  msg.writeUInt32BE(id, 2);
  payload.copy(msg, HEADER_BYTES);
  return new Promise<void>((resolve) => {
    waiting.set(id, resolve);
    stream.write(msg);
  });
});
stream.end();
client.close();
process.exit(0);
