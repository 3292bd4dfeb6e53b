import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
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
  /** True when it exports spans (OTEL_* variables). */
  readonly tracing?: boolean;
  /** host:port of its Prometheus endpoint, when it serves one (--metrics-port). */
  readonly metrics?: string;
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
 * project's Node, and waits for its `ready` line. `env` adds to the test's environment; a
 * variable set to undefined there is removed.
 */
export function startService(
  entry: string,
  args: string[],
  env: Record<string, string | undefined> = {},
): Promise<ServiceProcess> {
  return startProcess(entry, process.execPath, ["--conditions=@dsat/source", "--disable-warning=ExperimentalWarning", entry, ...args], env);
}

/**
 * Starts any program that speaks the service convention (prints one `ready {json}` line on
 * stdout when it serves) as a child process in the repository root, and waits for that line.
 * `name` appears in errors.
 */
export async function startProcess(
  name: string,
  command: string,
  args: string[],
  env: Record<string, string | undefined> = {},
): Promise<ServiceProcess> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, DSAT_EXIT_WITH_PARENT: "1", ...env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete childEnv[k];
  const child = spawn(command, args, { cwd: ROOT, env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr?.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-65536);
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const ready = await new Promise<{ kind: string; id: string; address: string; pid: number; tracing?: boolean; metrics?: string }>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    const timer = setTimeout(() => reject(new Error(`${name} did not become ready in 20 s: ${err}`)), 20_000);
    rl.on("line", (line) => {
      if (line.startsWith("ready ")) {
        clearTimeout(timer);
        resolve(JSON.parse(line.slice(6)));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before it was ready: ${err}`));
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
      await waitFor(() => child.exitCode !== null || child.signalCode !== null, { timeoutMs: 40_000, what: `${name} to exit` });
    },
  };
}

/** A TCP port free on 127.0.0.1 now (for a flag that takes no 0, such as --metrics-port). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
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
