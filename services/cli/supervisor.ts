import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root (where services/ lives). */
export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** What a service prints when it serves. */
export interface ReadyLine {
  kind: string;
  id: string;
  address: string;
  pid: number;
}

/** A service process started and watched by a supervisor. */
export interface Child {
  readonly name: string;
  readonly entry: string;
  readonly args: string[];
  ready: ReadyLine;
  process: ChildProcess;
  /** The last 16 KiB it wrote on stderr. */
  stderr: string;
  restarts: number;
}

/** Options of {@link Supervisor}. */
export interface SupervisorOptions {
  /** Restart a child that exits on its own. Default true. */
  restart: boolean;
  /** Called with a line for a person: a child exited, was restarted… */
  log: (line: string) => void;
  /** How long start waits for a ready line, in milliseconds. Default 20000. */
  readyTimeoutMs: number;
}

/**
 * Supervisor starts service processes (services/…/main.ts) with this Node, waits for their
 * `ready` line, restarts those that die on their own (with backoff), and stops them all.
 */
export class Supervisor {
  readonly children: Child[] = [];
  #stopping = false;
  /** Children stopped on purpose (one by one): not restarted. */
  readonly #retired = new WeakSet<Child>();
  readonly #opts: SupervisorOptions;

  constructor(options: Partial<SupervisorOptions> = {}) {
    this.#opts = { restart: true, log: () => {}, readyTimeoutMs: 20_000, ...options };
  }

  /** Starts one service and resolves once it is ready. */
  async start(name: string, entry: string, args: string[]): Promise<Child> {
    const { process: proc, ready, stderr } = await this.#spawn(entry, args);
    const child: Child = { name, entry, args, ready, process: proc, stderr: stderr(), restarts: 0 };
    this.children.push(child);
    this.#watch(child, stderr);
    return child;
  }

  async #spawn(entry: string, args: string[]): Promise<{ process: ChildProcess; ready: ReadyLine; stderr: () => string }> {
    const proc = spawn(
      process.execPath,
      ["--conditions=@dsat/source", "--disable-warning=ExperimentalWarning", entry, ...args],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, DSAT_EXIT_WITH_PARENT: "1" } },
    );
    let err = "";
    proc.stderr?.on("data", (d: Buffer) => {
      err = (err + d.toString()).slice(-16384);
    });
    const ready = await new Promise<ReadyLine>((resolve, reject) => {
      const rl = createInterface({ input: proc.stdout as NodeJS.ReadableStream });
      const timer = setTimeout(() => {
        proc.kill("SIGKILL");
        reject(new Error(`${entry} was not ready after ${this.#opts.readyTimeoutMs} ms: ${err.trim()}`));
      }, this.#opts.readyTimeoutMs);
      rl.on("line", (line) => {
        if (!line.startsWith("ready ")) return;
        clearTimeout(timer);
        resolve(JSON.parse(line.slice(6)) as ReadyLine);
      });
      proc.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`${entry} exited with ${code}: ${err.trim()}`));
      });
    });
    return { process: proc, ready, stderr: () => err };
  }

  #watch(child: Child, stderr: () => string): void {
    child.process.once("exit", (code, signal) => {
      child.stderr = stderr();
      if (this.#stopping || !this.#opts.restart || this.#retired.has(child)) return;
      const delay = Math.min(500 * 2 ** child.restarts, 30_000);
      this.#opts.log(`${child.name} exited (${signal ?? code}); restarting in ${delay} ms`);
      setTimeout(() => {
        if (this.#stopping || this.#retired.has(child)) return;
        this.#spawn(child.entry, child.args).then(
          (s) => {
            child.process = s.process;
            child.ready = s.ready;
            child.restarts++;
            this.#watch(child, s.stderr);
          },
          (err: Error) => this.#opts.log(`${child.name} could not restart: ${err.message}`),
        );
      }, delay).unref();
    });
  }

  /**
   * Stops one child for good: SIGTERM (it drains), SIGKILL after graceMs; it is not
   * restarted and leaves `children`. Resolves once it exited.
   */
  async stopChild(child: Child, graceMs = 10_000): Promise<void> {
    this.#retired.add(child);
    const i = this.children.indexOf(child);
    if (i >= 0) this.children.splice(i, 1);
    const proc = child.process;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => proc.kill("SIGKILL"), graceMs);
      proc.once("exit", () => {
        clearTimeout(t);
        resolve();
      });
      proc.kill("SIGTERM");
    });
  }

  /** Stops every child: SIGTERM (they drain), then SIGKILL after graceMs. Last started stops first. */
  async stop(graceMs = 10_000): Promise<void> {
    this.#stopping = true;
    const alive = [...this.children].reverse().filter((c) => c.process.exitCode === null && c.process.signalCode === null);
    await Promise.all(
      alive.map(
        (c) =>
          new Promise<void>((resolve) => {
            const t = setTimeout(() => c.process.kill("SIGKILL"), graceMs);
            c.process.once("exit", () => {
              clearTimeout(t);
              resolve();
            });
            c.process.kill("SIGTERM");
          }),
      ),
    );
  }
}
