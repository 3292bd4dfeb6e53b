import { activeLogContext } from "./telemetry/spans.ts";

/** Log levels, quietest last. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

/** A structured logger: one JSON object per line on stderr. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** A logger that adds these fields to every line. */
  child(fields: Record<string, unknown>): Logger;
}

/** The level named by DSAT_LOG_LEVEL, else "warn" (quiet). */
export function defaultLogLevel(): LogLevel {
  const v = process.env.DSAT_LOG_LEVEL?.toLowerCase();
  return v && v in RANK ? (v as LogLevel) : "warn";
}

/**
 * Creates a JSON-lines logger writing to stderr. A line logged inside a span (a worker's
 * attempt, with tracing on) carries `trace_id` and `span_id`, and `task` when known.
 */
export function createLogger(
  base: Record<string, unknown> = {},
  level: LogLevel = defaultLogLevel(),
  write: (line: string) => void = (line) => process.stderr.write(line),
): Logger {
  const min = RANK[level];
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (RANK[lvl] < min) return;
    const rec: Record<string, unknown> = { time: new Date().toISOString(), level: lvl, msg, ...base, ...fields };
    const trace = activeLogContext();
    if (trace) {
      rec.trace_id = trace.traceId;
      rec.span_id = trace.spanId;
      if (rec.task === undefined && typeof trace.taskId === "string") rec.task = trace.taskId;
    }
    for (const [k, v] of Object.entries(rec)) {
      if (v instanceof Error) rec[k] = v.message;
      else if (typeof v === "bigint") rec[k] = v.toString();
    }
    write(`${JSON.stringify(rec)}\n`);
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (fields) => createLogger({ ...base, ...fields }, level, write),
  };
}
