/**
 * Runs one RouterServer as a process, until SIGTERM (it drains, then exits 0) or SIGINT:
 *
 *   node --conditions=@dsat/source services/router/main.ts --etcd 127.0.0.1:2379 --port 0 \
 *     [--host 127.0.0.1] [--prefix /dsat/v1/] [--lease-ttl 5] [--id ID] [--satellite NAME] \
 *     [--max-tasks 10000] [--stage-wait-ms 0] [--status-linger-ms 250] [--status-lanes 1] \
 *     [--status-give-up-ms 60000] [--metrics-port 0] \
 *     [--serve-status [--task-retention-ms 3600000] [--etcd-quota-bytes 2147483648]]
 *
 * --serve-status (or DSAT_SERVE_STATUS=1) serves StatusService and PipelineService in this
 * process too, on the router's port: the router stores its own tasks' states without a
 * network hop (see RouterOptions.embedStatus); --task-retention-ms and --etcd-quota-bytes
 * are that status server's. Other flags: services/common/run-service.ts.
 */
import type { Etcd3 } from "etcd3";
import { runService } from "../common/run-service.ts";
import { statusOptionsFromFlags } from "../status/options.ts";
import { StatusServer } from "../status/status-server.ts";
import { RouterServer } from "./router-server.ts";

await runService("router", async (flags) => {
  const router = await RouterServer.start({
    etcd: flags.etcd,
    host: flags.host,
    advertise: flags.advertise,
    port: flags.port,
    prefix: flags.prefix,
    leaseTtlSeconds: flags.leaseTtlSeconds,
    satellite: flags.satellite,
    ...(typeof flags.rest["stage-wait-ms"] === "string" ? { stageWaitMs: Number(flags.rest["stage-wait-ms"]) } : {}),
    ...(typeof flags.rest["status-linger-ms"] === "string"
      ? { statusLingerMs: Number(flags.rest["status-linger-ms"]) }
      : {}),
    ...(typeof flags.rest["status-lanes"] === "string" ? { statusLanes: Number(flags.rest["status-lanes"]) } : {}),
    ...(typeof flags.rest["status-give-up-ms"] === "string" ? { statusGiveUpMs: Number(flags.rest["status-give-up-ms"]) } : {}),
    ...(flags.rest["serve-status"] === true || process.env.DSAT_SERVE_STATUS === "1"
      ? {
          embedStatus: (etcd: Etcd3, id: string, lanes: number) =>
            StatusServer.embed({
              // The router takes only two of the status flags (--task-retention-ms,
              // --etcd-quota-bytes); its lanes are --status-lanes.
              ...statusOptionsFromFlags(flags.rest),
              etcd,
              id,
              lanes,
              prefix: flags.prefix,
              leaseTtlSeconds: flags.leaseTtlSeconds,
              ...(flags.metrics ? { metrics: flags.metrics } : {}),
            }),
        }
      : {}),
    ...(flags.id ? { id: flags.id } : {}),
    ...(flags.maxTasks ? { maxTasks: flags.maxTasks } : {}),
    ...(flags.metrics ? { metrics: flags.metrics } : {}),
  });
  return { id: router.id, address: router.address, close: () => router.close(), drain: () => router.drain() };
}, ["stage-wait-ms", "status-linger-ms", "status-lanes", "status-give-up-ms", "task-retention-ms", "etcd-quota-bytes"], ["serve-status"]);
