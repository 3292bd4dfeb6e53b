// Runs one worker process for one stage, with a handler from a module:
//   node --conditions=@dsat/source services/worker-host/main.ts --stage NAME --module FILE [--concurrency N]
// The module's default export (or its export named by --export) is the handler.
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import { createWorker, type Handler } from "@dsat/sdk";
import { runService } from "../common/run-service.ts";

await runService("worker", async (flags) => {
  const stage = String(flags.rest.stage ?? process.env.DSAT_STAGE ?? "");
  const modulePath = String(flags.rest.module ?? process.env.DSAT_MODULE ?? "");
  if (!stage || !modulePath) throw new Error("--stage and --module are required");
  const mod = (await import(pathToFileURL(resolve(modulePath)).href)) as Record<string, unknown>;
  const exportName = typeof flags.rest.export === "string" ? flags.rest.export : "default";
  const handler = mod[exportName];
  if (typeof handler !== "function") {
    throw new Error(`${modulePath} has no function export "${exportName}" to serve stage "${stage}"`);
  }
  const concurrency = Number(flags.rest.concurrency ?? process.env.DSAT_CONCURRENCY ?? 1);
  const worker = await createWorker({
    stage,
    handler: handler as Handler,
    concurrency,
    etcd: flags.etcd,
    host: flags.host,
    advertise: flags.advertise,
    port: flags.port,
    prefix: flags.prefix,
    leaseTtlSeconds: flags.leaseTtlSeconds,
    satellite: flags.satellite,
    ...(flags.id ? { id: flags.id } : {}),
    ...(typeof flags.rest["protocol-version"] === "string" ? { protocolVersion: flags.rest["protocol-version"] } : {}),
  });
  const labels = [stage, worker.id] as const;
  flags.metrics?.gauge("dsat_worker_in_flight", "Attempts this worker runs now.", ["stage", "worker"], () => [[labels, worker.inFlight]]);
  flags.metrics?.gauge("dsat_worker_capacity", "Attempts this worker runs at once, at most (its concurrency).", ["stage", "worker"], () => [
    [labels, concurrency],
  ]);
  return { id: worker.id, address: worker.address, close: () => worker.close(), drain: () => worker.drain() };
}, ["stage", "module", "export", "concurrency", "protocol-version"]);
