import { type Edge, effectiveEdges, entryStages, type Pipeline } from "@dsat/sdk";

/**
 * A pipeline's graph as the router walks it for every task: computed once per pipeline
 * version (the router's pipelines come from etcd and are never changed), instead of the
 * edges, filters and sets that each step of each task would otherwise allocate.
 */
export interface PipelineGraph {
  readonly edges: readonly Edge[];
  /** Stages with no incoming edge: where a task starts. */
  readonly entries: readonly string[];
  /** The stages that the output of `stage` on `port` goes to. */
  next(stage: string, port: string): readonly string[];
  /** The distinct stages whose outputs flow into `stage`. */
  parents(stage: string): readonly string[];
}

const NONE: readonly string[] = Object.freeze([]);
const graphs = new WeakMap<Pipeline, PipelineGraph>();

export function graphOf(p: Pipeline): PipelineGraph {
  let g = graphs.get(p);
  if (!g) {
    g = build(p);
    graphs.set(p, g);
  }
  return g;
}

function build(p: Pipeline): PipelineGraph {
  const edges = Object.freeze([...effectiveEdges(p)]);
  const next = new Map<string, string[]>();
  const parents = new Map<string, string[]>();
  for (const e of edges) {
    const k = `${e.from}\u0000${e.port}`;
    const n = next.get(k);
    if (n) n.push(e.to);
    else next.set(k, [e.to]);
    const ps = parents.get(e.to);
    if (!ps) parents.set(e.to, [e.from]);
    else if (!ps.includes(e.from)) ps.push(e.from);
  }
  for (const v of next.values()) Object.freeze(v);
  for (const v of parents.values()) Object.freeze(v);
  const entries = Object.freeze(entryStages(p));
  return {
    edges,
    entries,
    next: (stage, port) => next.get(`${stage}\u0000${port}`) ?? NONE,
    parents: (stage) => parents.get(stage) ?? NONE,
  };
}
