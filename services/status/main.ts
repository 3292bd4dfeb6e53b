/**
 * Runs one StatusServer as a process, until SIGTERM or SIGINT (then it closes and exits 0):
 *
 *   node --conditions=@dsat/source services/status/main.ts --etcd 127.0.0.1:2379 --port 0 \
 *     --host 127.0.0.1 --prefix /dsat/v1/ [--lease-ttl 5] [--id ID] [--lanes 1] [--task-retention-ms 3600000] \
 *     [--etcd-quota-bytes 2147483648] [--etcd-space-check-ms 30000]
 *
 * Flags also come from DSAT_ETCD, DSAT_HOST, DSAT_PORT, DSAT_PREFIX, DSAT_LEASE_TTL. Once
 * serving it prints one line, `ready {"kind":"status","id":…,"address":…,"pid":…}`; when
 * etcd cannot be reached it says so on stderr and exits 1 (see services/common/run-service.ts).
 */
import { runService } from "../common/run-service.ts";
import { STATUS_FLAGS, statusOptionsFromFlags } from "./options.ts";
import { StatusServer } from "./status-server.ts";

await runService("status", async (flags) => {
  const server = await StatusServer.start({
    etcd: flags.etcd,
    host: flags.host,
    advertise: flags.advertise,
    port: flags.port,
    prefix: flags.prefix,
    leaseTtlSeconds: flags.leaseTtlSeconds,
    ...statusOptionsFromFlags(flags.rest),
    ...(flags.id ? { id: flags.id } : {}),
    ...(flags.metrics ? { metrics: flags.metrics } : {}),
  });
  return { id: server.id, address: server.address, close: () => server.close() };
}, STATUS_FLAGS);
