// Loads dsat through the SDK's client: client.run (one shared SubmitStream per router,
// await_results), N tasks in flight.
//   node bench/dsat/dsat-driver.ts --router HOST:PORT --status HOST:PORT --pipeline NAME --plan JSON
import { createClient, stateName } from "@dsat/sdk";
import { flags } from "../lib/child.ts";
import { type LoadPlan, payloadOf, runLoad } from "../lib/load.ts";

const f = flags();
const plan = JSON.parse(f.plan ?? "") as LoadPlan;
const pipeline = f.pipeline ?? "bench";
const client = createClient({ routers: [f.router ?? ""], status: [f.status ?? ""] });
const payload = payloadOf(plan.payloadBytes);

await runLoad(plan, async () => {
  const r = await client.run(pipeline, payload);
  if (!r.ok) throw new Error(`task ${r.taskId} ended ${stateName(r.state)}: ${r.error?.message ?? ""}`);
});
await client.close();
process.exit(0);
