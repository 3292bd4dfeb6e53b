/**
 * Runs one StatusServer until SIGTERM or SIGINT.
 *
 *   node --conditions=source services/status/main.ts --etcd 127.0.0.1:2379 --port 0
 *
 * Flags (each also read from the environment): --etcd (DSAT_ETCD), --host (DSAT_HOST),
 * --port (DSAT_PORT), --prefix (DSAT_PREFIX), --id (DSAT_ID), --lease-ttl
 * (DSAT_LEASE_TTL, seconds). Once serving it prints one line to stdout:
 * `ready {"kind":"status","id":"…","address":"host:port"}`.
 */
import { parseArgs } from "node:util";
import { Code, toDsatError } from "@dsat/sdk";
import { resolveStatusOptions, type StatusOptions } from "./options.ts";
import { StatusServer } from "./status-server.ts";

const USAGE = `usage: main.ts [--etcd host:port[,host:port]] [--host 127.0.0.1] [--port 0] [--prefix /dsat/v1/] [--id ID] [--lease-ttl 5]`;

function fail(message: string): never {
  process.stderr.write(`dsat status: ${message}\n`);
  process.exit(1);
}

function readOptions(): Partial<StatusOptions> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      options: {
        etcd: { type: "string" },
        host: { type: "string" },
        port: { type: "string" },
        prefix: { type: "string" },
        id: { type: "string" },
        "lease-ttl": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (err) {
    fail(`${err instanceof Error ? err.message : String(err)}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const pick = (flag: string, env: string): string | undefined => {
    const v = values[flag];
    return typeof v === "string" ? v : process.env[env] || undefined;
  };
  const int = (flag: string, env: string, min: number, max: number): number | undefined => {
    const text = pick(flag, env);
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max) fail(`--${flag} must be an integer from ${min} to ${max}, not "${text}"`);
    return n;
  };
  return {
    etcd: pick("etcd", "DSAT_ETCD"),
    host: pick("host", "DSAT_HOST"),
    port: int("port", "DSAT_PORT", 0, 65535),
    prefix: pick("prefix", "DSAT_PREFIX"),
    id: pick("id", "DSAT_ID"),
    leaseTtlSeconds: int("lease-ttl", "DSAT_LEASE_TTL", 1, 3600),
  };
}

async function main(): Promise<void> {
  const options = resolveStatusOptions(readOptions());
  let server: StatusServer;
  try {
    server = await StatusServer.start(options);
  } catch (err) {
    const e = toDsatError(err);
    if (e.code === Code.Unavailable && /etcd/.test(e.rawMessage)) {
      fail(e.rawMessage.startsWith("cannot reach etcd") ? e.rawMessage : `cannot reach etcd at ${String(options.etcd)}: ${e.rawMessage}`);
    }
    fail(e.rawMessage);
  }
  process.stdout.write(`ready ${JSON.stringify({ kind: "status", id: server.id, address: server.address })}\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`dsat status: closing on ${signal} failed: ${toDsatError(err).rawMessage}\n`);
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

await main();
