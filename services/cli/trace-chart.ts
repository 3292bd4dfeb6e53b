import { timestampMs } from "@bufbuild/protobuf/wkt";
import { isTaskTerminal, State, stateName, type TaskError, type TaskState } from "@dsat/sdk";
import { ms, table } from "./render.ts";

/** One attempt of one stage, as the history tells it (times in ms since the epoch). */
export interface AttemptRow {
  readonly stage: string;
  readonly attempt: number;
  worker: string;
  /** When it started to wait: PENDING, or the RETRYING of the attempt before (backoff included). */
  readonly waitFrom: number;
  dispatchedAt: number | undefined;
  runningAt: number | undefined;
  endedAt: number | undefined;
  state: State;
  error: TaskError | undefined;
}

/** The attempts of a task's stages, in the order they started waiting. */
export function attemptRows(s: TaskState): AttemptRow[] {
  const rows = new Map<string, AttemptRow>();
  const retryFrom = new Map<string, number>();
  for (const h of s.history) {
    if (h.stage === "" || !h.time) continue;
    const at = timestampMs(h.time);
    const key = `${h.stage}\u0000${h.attempt}`;
    if (h.to === State.RETRYING) {
      retryFrom.set(h.stage, at);
      continue;
    }
    let row = rows.get(key);
    if (!row) {
      row = {
        stage: h.stage,
        attempt: h.attempt,
        worker: "",
        waitFrom: h.to === State.PENDING ? at : (retryFrom.get(h.stage) ?? at),
        dispatchedAt: undefined,
        runningAt: undefined,
        endedAt: undefined,
        state: h.to,
        error: undefined,
      };
      rows.set(key, row);
    }
    row.state = h.to;
    if (h.workerId) row.worker = h.workerId;
    if (h.to === State.DISPATCHED) row.dispatchedAt = at;
    if (h.to === State.RUNNING) row.runningAt = at;
    if (isTaskTerminal(h.to)) {
      row.endedAt = at;
      row.error = h.error;
    }
  }
  return [...rows.values()];
}

/** Options of {@link renderTimeline}. */
export interface TimelineOptions {
  /** Columns of the bars. Default 48. */
  width: number;
  /** "Now", for a task that has not ended, in ms since the epoch. Default Date.now(). */
  now: number;
}

const RUN = "█";

const DEFAULT_TIMELINE_OPTIONS: Readonly<TimelineOptions> = Object.freeze({ width: 48, now: 0 });

/**
 * A task's timeline as text: one row per attempt of each stage (worker, state, time waiting
 * and running) with a bar on a scale from the task's start to its end: `·` waiting (in the
 * queue or a retry's backoff), `▒` dispatched, `█` running.
 */
export function renderTimeline(s: TaskState, options: Partial<TimelineOptions> = {}): string {
  const opts = { ...DEFAULT_TIMELINE_OPTIONS, ...options };
  const now = opts.now || Date.now();
  const width = Math.max(10, opts.width);
  const first = s.history[0]?.time;
  const start = first ? timestampMs(first) : now;
  const last = s.history.find((h) => h.stage === "" && isTaskTerminal(h.to))?.time;
  const end = last ? timestampMs(last) : now;
  const total = Math.max(end - start, 0.001);
  const col = (t: number) => Math.min(width, Math.max(0, Math.round(((t - start) / total) * width)));
  const bar = (segments: [number, number | undefined, string][]): string => {
    const cells = new Array<string>(width).fill(" ");
    for (const [from, to, ch] of segments) {
      const a = col(from);
      const b = col(to ?? end);
      for (let i = a; i < b; i++) cells[i] = ch;
      // Shorter than a column: still one mark where it happened (a run always shows, even of 0 ms).
      if (a === b && ((to ?? end) > from || ch === RUN)) cells[Math.min(a, width - 1)] = ch;
    }
    return `|${cells.join("")}|`;
  };
  const rows = attemptRows(s);
  const task = s.task;
  const head = [
    `task ${task?.id ?? "?"}  pipeline ${task?.pipeline ?? "?"} v${task?.pipelineVersion ?? 0n}  ${stateName(s.state)}`,
    `${last ? "in" : "for"} ${ms(end - start)}${last ? "" : " so far"}, ${new Set(rows.map((r) => r.stage)).size} stages, ${rows.length} attempts`,
  ].join("  ");
  const totalLabel = ms(end - start);
  const axis = `|0${" ".repeat(Math.max(1, width - 1 - totalLabel.length))}${totalLabel}|`;
  const lines: (string | number)[][] = [
    ["(task)", "", "", stateName(s.state), "", "", ms(end - start), bar([[start, end, "━"]])],
    ...rows.map((r) => [
      r.stage,
      r.attempt,
      short(r.worker),
      stateName(r.state),
      ms((r.dispatchedAt ?? r.endedAt ?? now) - r.waitFrom),
      r.runningAt === undefined ? "" : ms((r.endedAt ?? now) - r.runningAt),
      ms((r.endedAt ?? now) - r.waitFrom),
      bar([
        [r.waitFrom, r.dispatchedAt ?? r.endedAt, "·"],
        ...(r.dispatchedAt === undefined ? [] : [[r.dispatchedAt, r.runningAt ?? r.endedAt, "▒"] as [number, number | undefined, string]]),
        ...(r.runningAt === undefined ? [] : [[r.runningAt, r.endedAt, RUN] as [number, number | undefined, string]]),
      ]),
    ]),
  ];
  const errors = rows
    .filter((r) => r.error)
    .map((r) => `  ${r.stage} attempt ${r.attempt}: ${r.error?.code}: ${r.error?.message}`);
  return [
    head,
    "",
    table(["STAGE", "TRY", "WORKER", "STATE", "WAIT", "RUN", "TOTAL", axis], lines),
    "",
    "· waiting (queue, retry backoff)   ▒ dispatched   █ running",
    ...(errors.length > 0 ? ["", "errors:", ...errors] : []),
    ...(s.error ? [`task: ${s.error.code}: ${s.error.message}`] : []),
  ].join("\n");
}

function short(s: string): string {
  return s.length > 28 ? `${s.slice(0, 25)}...` : s;
}
