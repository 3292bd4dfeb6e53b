import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectEtcd } from "@dsat/sdk";
import { LocalEtcd } from "../../services/cli/local-etcd.ts";

/** A real etcd on free loopback ports with a temporary data dir. */
export interface TestEtcd {
  /** host:port of the client endpoint. */
  readonly endpoint: string;
  readonly dataDir: string;
  /** Stops etcd (SIGTERM) and keeps the data dir. */
  stop(): Promise<void>;
  /** Starts etcd again on the same ports and data dir. */
  restart(): Promise<void>;
  /** Stops etcd and removes its data dir. */
  close(): Promise<void>;
}

/** Starts a real etcd for one test file; `extraArgs` are more etcd flags (a small quota, say). */
export async function startEtcd(extraArgs: readonly string[] = []): Promise<TestEtcd> {
  const dataDir = mkdtempSync(join(tmpdir(), "dsat-etcd-"));
  const etcd = new LocalEtcd({ dataDir, extraArgs });
  await etcd.start();
  return {
    endpoint: etcd.endpoint,
    dataDir,
    stop: () => etcd.stop(),
    restart: async () => {
      await etcd.stop();
      await etcd.start();
    },
    close: async () => {
      await etcd.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Writes 256 KiB values under /fill/ until etcd refuses one (at most 100 of them): true once
 * it did, that is once etcd passed its --quota-backend-bytes and raised its NOSPACE alarm.
 */
export async function fillPastQuota(endpoint: string): Promise<boolean> {
  const fill = connectEtcd({ endpoints: endpoint });
  try {
    const chunk = Buffer.alloc(256 * 1024, 1);
    for (let i = 0; i < 100; i++) {
      const refused = await fill
        .put(`/fill/${i}`)
        .value(chunk)
        .then(() => false, () => true);
      if (refused) return true;
    }
    return false;
  } finally {
    fill.close();
  }
}
