// One Moleculer stage in its own process: stageN.run calls stage(N+1).run with what it got
// (the trivial handler) and answers with its result; the last stage answers with its input.
//   node bench/moleculer/moleculer-stage.ts --stage 1 --of 3 --node stage1 --nodes id@port,…
import type { Context } from "moleculer";
import { exitWithParent, flags, printReady } from "../lib/child.ts";
import { createBroker, parseNodes } from "./moleculer-broker.ts";

const f = flags();
const stage = Number(f.stage);
const last = Number(f.of);
const nodes = parseNodes(f.nodes ?? "");
const self = nodes.find((n) => n.nodeID === f.node);
if (!self || !(stage >= 1 && stage <= last)) throw new Error("--stage N --of M --node ID --nodes id@port,… are required");
const broker = createBroker(self, nodes);
broker.createService({
  name: `stage${stage}`,
  actions: {
    run: (ctx: Context<{ p: string }>) => (stage < last ? ctx.call(`stage${stage + 1}.run`, ctx.params) : ctx.params),
  },
});
await broker.start();
// Ready only once the next stage is known here, so that the first call finds it.
if (stage < last) await broker.waitForServices([`stage${stage + 1}`], 20_000);
exitWithParent(() => broker.stop());
printReady("moleculer-stage", `127.0.0.1:${self.port}`);
