// What every process that the bench starts itself (raw baseline, Moleculer, drivers) does.

/** Prints the one `ready` line that the bench waits for. */
export function printReady(kind: string, address: string): void {
  process.stdout.write(`ready ${JSON.stringify({ kind, address, pid: process.pid })}\n`);
}

/**
 * Exits when the bench that started this process is gone (even after kill -9) or
 * signals it, so that no child outlives a run.
 */
export function exitWithParent(onExit: () => void | Promise<void> = () => {}): void {
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    try {
      await onExit();
    } finally {
      process.exit(0);
    }
  };
  process.on("SIGINT", () => void stop());
  process.on("SIGTERM", () => void stop());
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) void stop();
  }, 1_000).unref();
}

/** Parses `--name value` pairs. */
export function flags(argv: readonly string[] = process.argv.slice(2)): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (!a.startsWith("--")) continue;
    const next = argv[i + 1];
    if (next === undefined || next.startsWith("--")) out[a.slice(2)] = "true";
    else {
      out[a.slice(2)] = next;
      i++;
    }
  }
  return out;
}
