import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root. */
export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** Flags of the bench's own children (raw, Moleculer): the project's own way to run .ts. */
export const NODE_FLAGS = Object.freeze(["--conditions=@dsat/source", "--disable-warning=ExperimentalWarning"]);

/**
 * Flags of dsat's processes and drivers: they run the JavaScript that `make build` compiled
 * (dist/services, sdk/dist), as deployed; "@dsat/sdk" resolves to sdk/dist.
 */
export const COMPILED_NODE_FLAGS = Object.freeze(["--disable-warning=ExperimentalWarning"]);

/**
 * Flags of dsat's services (status, router, workers) as deploy/Dockerfile runs them (its
 * NODE_OPTIONS): the young generation capped at 16 MB per semi-space. Uncapped, V8 grows it
 * to 64 MB per semi-space under a burst of allocations (the 10,000-task flood), and the
 * router's RSS swung between 176 and 203 MB from run to run; capped, it stays near 160 MB.
 */
export const SERVICE_NODE_FLAGS = Object.freeze([...COMPILED_NODE_FLAGS, "--max-semi-space-size=16"]);

/** The compiled entry of a dsat service ("router" → dist/services/router/main.js); fails with what to run when it is missing. */
export function compiledEntry(service: string): string {
  const entry = `dist/services/${service}/main.js`;
  if (!existsSync(join(ROOT, entry)) || !existsSync(join(ROOT, "sdk/dist/index.js"))) {
    throw new Error(`${entry} or sdk/dist is missing: run make build (make bench does it first)`);
  }
  return entry;
}

/** A process the bench started and measures. */
export interface BenchProcess {
  /** A short name for the tables ("router", "w1", "etcd"…). */
  readonly name: string;
  readonly pid: number;
  /** host:port it serves on, when it serves. */
  readonly address: string;
  /** host:port of its Prometheus metrics, when it was started with --metrics-port. */
  readonly metrics?: string;
  readonly child: ChildProcess;
  /** The last 16 KiB it wrote on stderr. */
  stderr(): string;
  /** Signals it (SIGINT by default: every bench child closes at once on it), then SIGKILL after graceMs. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<void>;
}

/** Options of {@link startService}. */
export interface StartServiceOptions {
  /** Node flags before the entry, on top of baseFlags (e.g. --cpu-prof). */
  nodeFlags: string[];
  /** Default NODE_FLAGS (run .ts from the sources); COMPILED_NODE_FLAGS for compiled entries. */
  baseFlags: readonly string[];
  env: Record<string, string>;
  /** How long to wait for the `ready` line, in milliseconds. Default 20000. */
  readyTimeoutMs: number;
}

/**
 * Starts a .ts entry as a child process with this Node and waits for its one line
 * `ready {"address":…,"pid":…}`, which dsat's services and the bench's own servers print.
 */
export async function startService(
  name: string,
  entry: string,
  args: string[],
  options: Partial<StartServiceOptions> = {},
): Promise<BenchProcess> {
  const child = spawn(process.execPath, [...(options.baseFlags ?? NODE_FLAGS), ...(options.nodeFlags ?? []), entry, ...args], {
    cwd: ROOT,
    env: { ...process.env, DSAT_EXIT_WITH_PARENT: "1", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let err = "";
  child.stderr?.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-16384);
  });
  const timeoutMs = options.readyTimeoutMs ?? 20_000;
  const ready = await new Promise<{ address: string; pid: number; metrics?: string }>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${name} (${entry}) was not ready after ${timeoutMs} ms: ${err.trim()}`));
    }, timeoutMs);
    rl.on("line", (line) => {
      if (!line.startsWith("ready ")) return;
      clearTimeout(timer);
      resolve(JSON.parse(line.slice(6)) as { address: string; pid: number; metrics?: string });
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} (${entry}) exited with ${signal ?? code} before it was ready: ${err.trim()}`));
    });
  });
  // Keep reading stdout so that a chatty child never blocks on a full pipe.
  child.stdout?.resume();
  return { ...wrap(name, child, ready.address, () => err), ...(ready.metrics ? { metrics: ready.metrics } : {}) };
}

/** Wraps a child process that is already running (etcd) as a BenchProcess. */
export function wrap(name: string, child: ChildProcess, address: string, stderr: () => string = () => ""): BenchProcess {
  return {
    name,
    pid: child.pid as number,
    address,
    child,
    stderr,
    stop: (signal = "SIGINT", graceMs = 10_000) => stopChild(child, signal, graceMs),
  };
}

/** Signals a child and waits for it to exit; SIGKILL after graceMs. */
export function stopChild(child: ChildProcess, signal: NodeJS.Signals = "SIGINT", graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(t);
      resolve();
    });
    child.kill(signal);
  });
}
