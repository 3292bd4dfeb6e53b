import { type Edge, EdgeSchema, type Pipeline } from "./gen/dsat/v1/pipeline_pb.js";

/** Names of pipelines and stages: lower-case, digits, "_", "-", ".", at most 63 characters. */
export const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

/**
 * The edges of a pipeline as the router follows them: the declared ones, or, when none is
 * declared, a chain through the stages in their order.
 */
export function effectiveEdges(p: Pipeline): Edge[] {
  if (p.edges.length > 0) return p.edges;
  const out: Edge[] = [];
  for (let i = 0; i + 1 < p.stages.length; i++) {
    // A plain message object (what create() makes, without its cost: the router asks for
    // the edges of every stage of every task).
    out.push({ $typeName: EdgeSchema.typeName, from: p.stages[i]?.name ?? "", to: p.stages[i + 1]?.name ?? "", port: "" });
  }
  return out;
}

/** Stages with no incoming edge: where a task starts. */
export function entryStages(p: Pipeline): string[] {
  const targets = new Set(effectiveEdges(p).map((e) => e.to));
  return p.stages.map((s) => s.name).filter((n) => !targets.has(n));
}

/** The stages that the output of `stage` on `port` goes to ("" is the default port). */
export function nextStages(p: Pipeline, stage: string, port: string): string[] {
  return effectiveEdges(p)
    .filter((e) => e.from === stage && e.port === port)
    .map((e) => e.to);
}

/** The stages whose outputs flow into `stage`. */
export function parentStages(p: Pipeline, stage: string): string[] {
  return effectiveEdges(p)
    .filter((e) => e.to === stage)
    .map((e) => e.from);
}

/**
 * Every problem with a pipeline definition, each a sentence that names what is wrong;
 * empty when it is valid. Checks: names, duplicate stages, edges to unknown stages,
 * self-loops, cycles, and stages that no entry reaches.
 */
export function validatePipeline(p: Pipeline): string[] {
  const problems: string[] = [];
  if (!p.name) problems.push("the pipeline has no name");
  else if (!NAME_RE.test(p.name)) {
    problems.push(`pipeline name "${p.name}" must match ${NAME_RE.source}`);
  }
  if (p.stages.length === 0) problems.push("the pipeline has no stage");
  const names = new Set<string>();
  p.stages.forEach((s, i) => {
    if (!s.name) problems.push(`stage #${i + 1} has no name`);
    else if (!NAME_RE.test(s.name)) problems.push(`stage name "${s.name}" must match ${NAME_RE.source}`);
    else if (names.has(s.name)) problems.push(`stage "${s.name}" is defined twice`);
    names.add(s.name);
    const ms = (d: { seconds: bigint; nanos: number } | undefined) =>
      d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : 0;
    if (s.timeout && ms(s.timeout) <= 0) problems.push(`stage "${s.name}" has a timeout that is not positive`);
    if (s.retry && s.retry.maxAttempts > 100) {
      problems.push(`stage "${s.name}" allows ${s.retry.maxAttempts} attempts; at most 100 are allowed`);
    }
  });
  const edges = effectiveEdges(p);
  const seen = new Set<string>();
  const ports = new Map(p.stages.map((s) => [s.name, new Set(s.ports)]));
  for (const e of edges) {
    if (e.port && names.has(e.from) && !ports.get(e.from)?.has(e.port)) {
      const declared = [...(ports.get(e.from) ?? [])];
      problems.push(
        `edge ${e.from} -> ${e.to} follows port "${e.port}", which stage "${e.from}" does not declare` +
          (declared.length > 0 ? ` (it declares ${declared.map((x) => `"${x}"`).join(", ")})` : " (it declares no port)"),
      );
    }
    if (!names.has(e.from)) problems.push(`edge ${e.from} -> ${e.to} starts at unknown stage "${e.from}"`);
    if (!names.has(e.to)) problems.push(`edge ${e.from} -> ${e.to} ends at unknown stage "${e.to}"`);
    if (e.from === e.to) problems.push(`edge ${e.from} -> ${e.to} loops on itself`);
    const k = `${e.from}\u0000${e.to}\u0000${e.port}`;
    if (seen.has(k)) problems.push(`edge ${e.from} -> ${e.to}${e.port ? ` (port ${e.port})` : ""} is declared twice`);
    seen.add(k);
  }
  if (problems.length > 0) return problems;
  const cycle = findCycle(p);
  if (cycle) problems.push(`the graph has a cycle: ${cycle.join(" -> ")}`);
  else {
    const reached = new Set<string>();
    const stack = entryStages(p);
    while (stack.length > 0) {
      const n = stack.pop() as string;
      if (reached.has(n)) continue;
      reached.add(n);
      for (const e of edges) if (e.from === n) stack.push(e.to);
    }
    for (const n of names) if (!reached.has(n)) problems.push(`stage "${n}" cannot be reached from an entry stage`);
  }
  return problems;
}

/** One cycle of the graph as a path that starts and ends at the same stage, or undefined. */
export function findCycle(p: Pipeline): string[] | undefined {
  const edges = effectiveEdges(p);
  const color = new Map<string, 0 | 1 | 2>();
  const path: string[] = [];
  const visit = (n: string): string[] | undefined => {
    color.set(n, 1);
    path.push(n);
    for (const e of edges) {
      if (e.from !== n) continue;
      const c = color.get(e.to) ?? 0;
      if (c === 1) return [...path.slice(path.indexOf(e.to)), e.to];
      if (c === 0) {
        const found = visit(e.to);
        if (found) return found;
      }
    }
    path.pop();
    color.set(n, 2);
    return undefined;
  };
  for (const s of p.stages) {
    if ((color.get(s.name) ?? 0) === 0) {
      const found = visit(s.name);
      if (found) return found;
    }
  }
  return undefined;
}
