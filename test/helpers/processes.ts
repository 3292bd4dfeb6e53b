import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { waitFor } from "./wait.ts";

/** The repository root. */
export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** A service running as a child process. */
export interface ServiceProcess {
  readonly kind: string;
  readonly id: string;
  readonly address: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Everything it wrote on stderr (the last 64 KiB). */
  stderr(): string;
  /** Resolves when it has exited. */
  readonly exited: Promise<number | null>;
  /** kill -9. */
  kill9(): Promise<void>;
  /** SIGTERM, then wait for the exit. */
  stop(): Promise<void>;
}

/**
 * Starts a service entry (a .ts file under services/) as a real child process with the
 * project's Node, and waits for its `ready` line.
 */
export async function startService(entry: string, args: string[], env: Record<string, string> = {}): Promise<ServiceProcess> {
  const child = spawn(process.execPath, ["--conditions=source", "--disable-warning=ExperimentalWarning", entry, ...args], {
    cwd: ROOT,
    env: { ...process.env, DSAT_EXIT_WITH_PARENT: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let err = "";
  child.stderr?.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-65536);
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const ready = await new Promise<{ kind: string; id: string; address: string; pid: number }>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    const timer = setTimeout(() => reject(new Error(`${entry} did not become ready in 20 s: ${err}`)), 20_000);
    rl.on("line", (line) => {
      if (line.startsWith("ready ")) {
        clearTimeout(timer);
        resolve(JSON.parse(line.slice(6)));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${entry} exited with ${code} before it was ready: ${err}`));
    });
  });
  return {
    ...ready,
    child,
    stderr: () => err,
    exited,
    kill9: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await waitFor(() => child.exitCode !== null || child.signalCode !== null, { timeoutMs: 40_000, what: `${entry} to exit` });
    },
  };
}

/** Starts a worker process for a stage with a handler module from test/fixtures. */
export function startWorkerProcess(
  etcd: string,
  stage: string,
  module: string,
  extra: string[] = [],
): Promise<ServiceProcess> {
  return startService("services/worker-host/main.ts", [
    "--etcd", etcd, "--stage", stage, "--module", module, "--lease-ttl", "2", ...extra,
  ]);
}
