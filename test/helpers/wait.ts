/** Options of {@link waitFor}. */
export interface WaitOptions {
  /** Give up after this long, in milliseconds. Default 10000. */
  timeoutMs?: number;
  /** Check again after this long, in milliseconds. Default 25. */
  intervalMs?: number;
  /** What is awaited, for the error message. */
  what?: string;
}

/**
 * Waits until a condition holds, checking it again and again up to a deadline: the only
 * way tests wait. Errors thrown by the condition count as "not yet" (the last is reported).
 */
export async function waitFor<T>(
  condition: () => T | Promise<T>,
  options: WaitOptions = {},
): Promise<NonNullable<T>> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const intervalMs = options.intervalMs ?? 25;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await condition();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const why = lastError instanceof Error ? `: ${lastError.message}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${options.what ?? "a condition"}${why}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
