import { runService } from "../common/run-service.ts";
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
    serveStatus: flags.rest["serve-status"] === true || process.env.DSAT_SERVE_STATUS === "1",
    status: {
      ...(typeof flags.rest["task-retention-ms"] === "string" ? { taskRetentionMs: Number(flags.rest["task-retention-ms"]) } : {}),
      ...(typeof flags.rest["etcd-quota-bytes"] === "string" ? { etcdQuotaBytes: Number(flags.rest["etcd-quota-bytes"]) } : {}),
    },
    ...(flags.id ? { id: flags.id } : {}),
    ...(flags.maxTasks ? { maxTasks: flags.maxTasks } : {}),
    ...(flags.metrics ? { metrics: flags.metrics } : {}),
  });
  return { id: router.id, address: router.address, close: () => router.close(), drain: () => router.drain() };
}, ["stage-wait-ms", "status-linger-ms", "status-lanes", "status-give-up-ms", "task-retention-ms", "etcd-quota-bytes"], ["serve-status"]);
