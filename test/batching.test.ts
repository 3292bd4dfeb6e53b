// Adaptive batching between the router and StatusService, seen as an operator sees it: in
// the router's and the status server's metrics.
import test from "ava";
import { scrape } from "./helpers/metrics.ts";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import type { ServiceProcess } from "./helpers/processes.ts";
import { waitFor } from "./helpers/wait.ts";

let mesh: TestMesh;

test.before(async () => {
  mesh = await startMesh({ metrics: true });
  await mesh.client.applyPipeline({ name: "batching", stages: [{ name: "echo" }] });
  // One worker that takes many tasks at once, so that the burst below is not held up by it.
  await mesh.addWorker("echo", "echo", ["--concurrency", "500"]);
  await waitFor(async () => (await mesh.client.listWorkers()).flatMap((v) => v.workers).some((w) => w.connected), {
    what: "the router to connect to the worker",
  });
});

test.after.always(async () => {
  await mesh?.close();
});

/** The router's histogram of items per Report: its count, and how many held at most `le` items. */
async function reportItems(le: string): Promise<{ count: number; atMost: number }> {
  const m = await scrape(mesh.routers[0] as ServiceProcess);
  const count = m.find((x) => x.name === "dsat_router_status_report_items_count")?.value ?? 0;
  const atMost = m.find((x) => x.name === "dsat_router_status_report_items_bucket" && x.labels.le === le)?.value ?? 0;
  return { count, atMost };
}

test.serial("one task at a time: each Report carries the steps of that one task, nothing waits for a batch", async (t) => {
  const before = await reportItems("10");
  for (let i = 0; i < 20; i++) {
    const r = await mesh.client.run("batching", { i });
    t.true(r.ok);
  }
  const after = await reportItems("10");
  const reports = after.count - before.count;
  // A task of one stage has 7 transitions; it is created with the first of them.
  t.true(reports >= 20, `${reports} Reports for 20 tasks`);
  t.is(after.atMost - before.atMost, reports, "every Report at most 10 items");
});

test.serial("a burst of 2,000 tasks: Reports carry hundreds of tasks' items at once", async (t) => {
  const before = await reportItems("100");
  const results = await Promise.all(Array.from({ length: 2000 }, (_, i) => mesh.client.run("batching", { i })));
  t.is(results.filter((r) => r.ok).length, 2000);
  const after = await reportItems("100");
  const reports = after.count - before.count;
  const large = reports - (after.atMost - before.atMost);
  t.log(`${reports} Reports for 2,000 tasks (about 14,000 items), ${large} of them with more than 100 items`);
  t.true(large >= 1, "some Report carried more than 100 items");
  t.true(reports < 2000, `fewer Reports than tasks (${reports})`);
  // The status server wrote them in transactions of many tasks each.
  const status = await scrape(mesh.status[0] as ServiceProcess);
  const txns = status.find((m) => m.name === "dsat_status_etcd_txn_keys_count")?.value ?? 0;
  const keys = status.find((m) => m.name === "dsat_status_etcd_txn_keys_sum")?.value ?? 0;
  t.log(`status server: ${txns} transactions, ${(keys / txns).toFixed(1)} task states each on average`);
  t.true(keys / txns > 2, "etcd transactions of several tasks on average");
});
