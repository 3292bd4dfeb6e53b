// Loads the Moleculer peer: a broker node of its own that calls stage1.run, N calls in flight.
//   node bench/moleculer/moleculer-driver.ts --node driver --nodes id@port,… --stages 3 --plan JSON
import { flags } from "../lib/child.ts";
import { type LoadPlan, payloadOf, runLoad } from "../lib/load.ts";
import { createBroker, parseNodes } from "./moleculer-broker.ts";

const f = flags();
const plan = JSON.parse(f.plan ?? "") as LoadPlan;
const nodes = parseNodes(f.nodes ?? "");
const self = nodes.find((n) => n.nodeID === f.node);
if (!self) throw new Error("--node ID --nodes id@port,… are required");
const broker = createBroker(self, nodes);
await broker.start();
const stages = Array.from({ length: Number(f.stages ?? 3) }, (_, i) => `stage${i + 1}`);
await broker.waitForServices(stages, 20_000);
// JSON carries strings well: the 64-byte payload is 64 ASCII characters.
const params = { p: Buffer.from(payloadOf(plan.payloadBytes)).toString("latin1") };

await runLoad(plan, async () => {
  const out = (await broker.call("stage1.run", params)) as { p?: string };
  if (out?.p?.length !== params.p.length) throw new Error("stage1.run answered something else than its input");
});
await broker.stop();
process.exit(0);
