import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { create } from "@bufbuild/protobuf";
import { type Pipeline, PipelineSchema } from "@dsat/sdk";
import { parse as parseYaml } from "yaml";

/** How a local satellite runs the workers of one stage. */
export interface WorkerSpec {
  stage: string;
  /** Absolute path of the handler module. */
  module: string;
  /** Export that holds the handler. Default "default". */
  export: string;
  /** Worker processes to start with. Default 1. */
  replicas: number;
  /** Fewest worker processes the pool shrinks to. Default replicas. */
  min: number;
  /** Most worker processes the pool grows to under load. Default replicas (no scaling). */
  max: number;
  /** Tasks each runs at once. Default 1. */
  concurrency: number;
}

/** A pipeline file: the definition, and (for `dsat up`) how to run its workers. */
export interface PipelineFile {
  pipeline: Pipeline;
  workers: WorkerSpec[];
}

/** Parses "250ms", "5s", "2m", "1h" or a number of seconds into milliseconds. */
export function parseDurationMs(v: unknown, where: string): number {
  if (typeof v === "number" && v >= 0) return v * 1000;
  const m = typeof v === "string" ? /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(v.trim()) : null;
  if (!m) throw new Error(`${where}: "${String(v)}" is not a duration (use 250ms, 5s, 2m or 1h)`);
  const n = Number(m[1]);
  const unit = m[2] as "ms" | "s" | "m" | "h";
  return n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit];
}

function duration(ms: number) {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: Math.round((ms % 1000) * 1e6) };
}

/** Reads a pipeline file (YAML or JSON). Throws an Error that names the file and the fault. */
export function loadPipelineFile(path: string): PipelineFile {
  const text = readFileSync(path, "utf8");
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new Error(`${path}: not valid YAML: ${(err as Error).message}`);
  }
  return pipelineFromDocument(doc, path);
}

type Doc = Record<string, unknown>;

/** Turns a parsed pipeline document into its definition and worker specs. */
export function pipelineFromDocument(doc: unknown, path: string): PipelineFile {
  if (!doc || typeof doc !== "object") throw new Error(`${path}: expected a mapping with name and stages`);
  const d = doc as Doc;
  const stagesIn = Array.isArray(d.stages) ? (d.stages as unknown[]) : [];
  const stages = stagesIn.map((s, i) => {
    const st = (typeof s === "string" ? { name: s } : s) as Doc;
    const where = `${path}: stage #${i + 1}`;
    const retry = st.retry as Doc | undefined;
    return {
      name: String(st.name ?? ""),
      ports: Array.isArray(st.ports) ? st.ports.map(String) : [],
      timeout: st.timeout === undefined ? undefined : duration(parseDurationMs(st.timeout, `${where} timeout`)),
      retry: retry
        ? {
            maxAttempts: Number(retry.maxAttempts ?? retry.max_attempts ?? 0),
            initialBackoff:
              retry.initialBackoff === undefined ? undefined : duration(parseDurationMs(retry.initialBackoff, `${where} retry.initialBackoff`)),
            maxBackoff: retry.maxBackoff === undefined ? undefined : duration(parseDurationMs(retry.maxBackoff, `${where} retry.maxBackoff`)),
            nonRetryableCodes: Array.isArray(retry.nonRetryableCodes) ? retry.nonRetryableCodes.map(String) : [],
          }
        : undefined,
    };
  });
  const edges = (Array.isArray(d.edges) ? (d.edges as Doc[]) : []).map((e) => ({
    from: String(e.from ?? ""),
    to: String(e.to ?? ""),
    port: String(e.port ?? ""),
  }));
  const pipeline = create(PipelineSchema, { name: String(d.name ?? ""), stages, edges });
  const workers: WorkerSpec[] = [];
  const w = (d.workers ?? {}) as Record<string, Doc>;
  for (const [stage, spec] of Object.entries(w)) {
    if (!spec || typeof spec.module !== "string") throw new Error(`${path}: workers.${stage} needs a module`);
    const replicas = Number(spec.replicas ?? spec.min ?? 1);
    const min = Number(spec.min ?? replicas);
    const max = Number(spec.max ?? Math.max(replicas, min));
    if (!(Number.isInteger(min) && Number.isInteger(max) && min >= 0 && max >= 1 && min <= max)) {
      throw new Error(`${path}: workers.${stage} needs whole numbers 0 <= min <= max, max >= 1 (min ${spec.min}, max ${spec.max})`);
    }
    workers.push({
      stage,
      module: resolve(dirname(path), spec.module),
      export: String(spec.export ?? "default"),
      replicas: Math.min(max, Math.max(min, replicas)),
      min,
      max,
      concurrency: Number(spec.concurrency ?? 1),
    });
  }
  return { pipeline, workers };
}
