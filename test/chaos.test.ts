import test, { type ExecutionContext } from "ava";
import { type ChaosReport, formatChaosReport, runChaos } from "./chaos/chaos.ts";

/** What every chaos run must show: nothing lost, nothing twice, every task right. */
function check(t: ExecutionContext, report: ChaosReport, events: number): void {
  t.log(`\n${formatChaosReport(report)}`);
  t.is(report.lost, 0, "accepted tasks that never ended");
  t.is(report.duplicates, 0, "tasks with more than one terminal result");
  t.is(report.wrongOutputs, 0, "tasks whose output is wrong");
  t.is(report.accepted, report.submitted, "every submission was accepted in the end");
  t.is(report.succeeded, report.submitted, "every task succeeded");
  t.true(report.events.length >= events, "every chaos event happened");
}

test("chaos (short): workers, a router and a status server killed, etcd restarted: nothing lost, nothing twice", async (t) => {
  t.timeout(170_000);
  check(t, await runChaos({ tasks: 1500, window: 150, workerKills: 4, log: (l) => t.log(l) }), 7);
});

test("chaos (short), routers serving StatusService: two routers killed with their status servers, one replaced, etcd restarted: nothing lost, nothing twice", async (t) => {
  t.timeout(170_000);
  // More tasks than above: a router process takes a second or two to start, and the events
  // (one at a time) must fall within the run.
  check(t, await runChaos({ tasks: 5000, window: 300, workerKills: 4, serveStatus: true, log: (l) => t.log(l) }), 8);
});
