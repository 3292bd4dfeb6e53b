import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";

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

/** Options of {@link LocalEtcd}. */
export interface LocalEtcdOptions {
  dataDir: string;
  /** Client port on 127.0.0.1; 0 picks a free one. Default 0. */
  clientPort: number;
  /** Peer port on 127.0.0.1; 0 picks a free one. Default 0. */
  peerPort: number;
  /** How long start waits for etcd to be healthy, in milliseconds. Default 20000. */
  startTimeoutMs: number;
  /** More etcd flags, after dsat's own (e.g. --quota-backend-bytes for a test). Default none. */
  extraArgs: readonly string[];
}

/**
 * An etcd child process on loopback, for `dsat up` and the tests. Requests up to 16 MiB
 * and transactions of up to 1024 operations are allowed, so that 4 MiB payloads and large
 * status batches fit.
 */
export class LocalEtcd {
  readonly dataDir: string;
  clientPort = 0;
  peerPort = 0;
  #child: ChildProcess | undefined;
  #stderr = "";
  readonly #startTimeoutMs: number;
  readonly #extraArgs: readonly string[];

  constructor(options: Partial<LocalEtcdOptions> & Pick<LocalEtcdOptions, "dataDir">) {
    this.dataDir = options.dataDir;
    this.clientPort = options.clientPort ?? 0;
    this.peerPort = options.peerPort ?? 0;
    this.#startTimeoutMs = options.startTimeoutMs ?? 20_000;
    this.#extraArgs = options.extraArgs ?? [];
  }

  /** host:port of the client endpoint. */
  get endpoint(): string {
    return `127.0.0.1:${this.clientPort}`;
  }

  get process(): ChildProcess | undefined {
    return this.#child;
  }

  /** Starts etcd (again, on the same ports and data dir) and waits until it is healthy. */
  async start(): Promise<void> {
    if (this.clientPort === 0) this.clientPort = await freePort();
    if (this.peerPort === 0) this.peerPort = await freePort();
    const peer = `http://127.0.0.1:${this.peerPort}`;
    this.#stderr = "";
    const child = spawn(
      etcdBinary(),
      [
        "--name", "dsat",
        "--data-dir", this.dataDir,
        "--listen-client-urls", `http://${this.endpoint}`,
        "--advertise-client-urls", `http://${this.endpoint}`,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", `dsat=${peer}`,
        "--max-request-bytes", String(16 * 1024 * 1024),
        "--max-txn-ops", "1024",
        // Keep the last 100,000 revisions: task records are rewritten as tasks move, and
        // without compaction etcd's history grows until it hits its quota.
        "--auto-compaction-mode", "revision",
        "--auto-compaction-retention", "100000",
        "--log-level", "error",
        "--logger", "zap",
        ...this.#extraArgs,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    this.#child = child;
    child.stderr?.on("data", (d: Buffer) => {
      this.#stderr = (this.#stderr + d.toString()).slice(-4000);
    });
    let failure: Error | undefined;
    child.once("error", (err) => {
      failure = new Error(
        (err as NodeJS.ErrnoException).code === "ENOENT"
          ? `etcd was not found (${etcdBinary()}): install it (Debian: apt-get install etcd-server) or set ETCD_BIN`
          : `etcd could not start: ${err.message}`,
      );
    });
    child.once("exit", (code) => {
      failure ??= new Error(`etcd exited with ${code} at start: ${this.#stderr.trim()}`);
    });
    const deadline = Date.now() + this.#startTimeoutMs;
    for (;;) {
      if (failure) throw failure;
      const res = await fetch(`http://${this.endpoint}/health`).catch(() => undefined);
      if (res?.ok) return;
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`etcd on ${this.endpoint} was not healthy after ${this.#startTimeoutMs} ms: ${this.#stderr.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Stops etcd with SIGTERM and waits for it to exit; the data dir stays. */
  async stop(): Promise<void> {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const done = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await done;
  }
}
