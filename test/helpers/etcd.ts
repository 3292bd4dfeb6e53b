import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor } from "./wait.ts";

/** A real etcd on free loopback ports with a temporary data dir. */
export interface TestEtcd {
  /** host:port of the client endpoint. */
  readonly endpoint: string;
  readonly dataDir: string;
  readonly process: ChildProcess;
  /** Stops etcd (SIGTERM) and keeps the data dir. */
  stop(): Promise<void>;
  /** Starts etcd again on the same ports and data dir. */
  restart(): Promise<void>;
  /** Stops etcd and removes its data dir. */
  close(): Promise<void>;
}

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** The etcd binary: $ETCD_BIN, else "etcd" on the PATH. */
export function etcdBinary(): string {
  return process.env.ETCD_BIN || "etcd";
}

/** Starts a real etcd for one test file. */
export async function startEtcd(): Promise<TestEtcd> {
  const dataDir = mkdtempSync(join(tmpdir(), "dsat-etcd-"));
  const clientPort = await freePort();
  const peerPort = await freePort();
  const endpoint = `127.0.0.1:${clientPort}`;
  let child!: ChildProcess;
  let stderr = "";
  const launch = async () => {
    stderr = "";
    child = spawn(
      etcdBinary(),
      [
        "--name", "test",
        "--data-dir", dataDir,
        "--listen-client-urls", `http://${endpoint}`,
        "--advertise-client-urls", `http://${endpoint}`,
        "--listen-peer-urls", `http://127.0.0.1:${peerPort}`,
        "--initial-advertise-peer-urls", `http://127.0.0.1:${peerPort}`,
        "--initial-cluster", `test=http://127.0.0.1:${peerPort}`,
        "--max-request-bytes", String(16 * 1024 * 1024),
        "--max-txn-ops", "1024",
        "--log-level", "error",
        "--logger", "zap",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    child.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    let exited = false;
    child.once("exit", () => {
      exited = true;
    });
    await waitFor(
      async () => {
        if (exited) throw new Error(`etcd exited at start: ${stderr}`);
        const res = await fetch(`http://${endpoint}/health`).catch(() => undefined);
        return res?.ok === true;
      },
      { timeoutMs: 20_000, what: `etcd on ${endpoint}` },
    );
  };
  await launch();
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const done = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await done;
  };
  return {
    endpoint,
    dataDir,
    get process() {
      return child;
    },
    stop,
    restart: async () => {
      await stop();
      await launch();
    },
    close: async () => {
      await stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
