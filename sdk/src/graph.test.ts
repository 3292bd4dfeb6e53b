import { create, equals } from "@bufbuild/protobuf";
import test from "ava";
import { EdgeSchema, PipelineSchema } from "./gen/dsat/v1/pipeline_pb.js";
import { effectiveEdges, entryStages, findCycle, nextStages, validatePipeline } from "./graph.ts";

const pipeline = (stages: string[], edges: [string, string, string?][] = []) =>
  create(PipelineSchema, {
    name: "p",
    // Each stage declares the ports its edges use.
    stages: stages.map((name) => ({ name, ports: [...new Set(edges.filter((e) => e[0] === name && e[2]).map((e) => e[2] as string))] })),
    edges: edges.map(([from, to, port]) => ({ from, to, port: port ?? "" })),
  });

test("stages without edges form a chain", (t) => {
  const p = pipeline(["a", "b", "c"]);
  t.deepEqual(validatePipeline(p), []);
  t.deepEqual(entryStages(p), ["a"]);
  t.deepEqual(nextStages(p, "a", ""), ["b"]);
  t.deepEqual(nextStages(p, "c", ""), []);
});

test("edges follow ports", (t) => {
  const p = pipeline(["a", "ok", "later"], [["a", "ok", "ok"], ["a", "later", "retry-later"]]);
  t.deepEqual(validatePipeline(p), []);
  t.deepEqual(nextStages(p, "a", "ok"), ["ok"]);
  t.deepEqual(nextStages(p, "a", "retry-later"), ["later"]);
  t.deepEqual(nextStages(p, "a", ""), []);
});

test("each fault is named", (t) => {
  t.regex(validatePipeline(pipeline(["a", "b"], [["a", "b"], ["b", "a"]])).join(), /no stage|cycle/);
  t.regex(validatePipeline(pipeline(["a", "b", "c"], [["a", "b"], ["b", "c"], ["c", "b"]])).join(), /cycle: b -> c -> b/);
  t.regex(validatePipeline(pipeline(["a"], [["a", "zz"]])).join(), /unknown stage "zz"/);
  t.regex(validatePipeline(pipeline(["a", ""])).join(), /stage #2 has no name/);
  t.regex(validatePipeline(pipeline(["a", "a"])).join(), /defined twice/);
  t.regex(validatePipeline(pipeline([])).join(), /no stage/);
  t.regex(validatePipeline(create(PipelineSchema, { stages: [{ name: "a" }] })).join(), /no name/);
  t.regex(validatePipeline(pipeline(["a", "b", "c"], [["a", "b"], ["c", "c"]])).join(), /loops on itself/);
  t.regex(validatePipeline(pipeline(["Bad Name"])).join(), /must match/);
});

test("an edge on a port its stage does not declare is refused, naming the port", (t) => {
  const p = create(PipelineSchema, {
    name: "p",
    stages: [{ name: "a", ports: ["ok"] }, { name: "b" }, { name: "c" }],
    edges: [
      { from: "a", to: "b", port: "ok" },
      { from: "a", to: "c", port: "oops" },
    ],
  });
  t.deepEqual(validatePipeline(p), [`edge a -> c follows port "oops", which stage "a" does not declare (it declares "ok")`]);
});

test("findCycle returns a closed path", (t) => {
  const cycle = findCycle(pipeline(["a", "b", "c"], [["a", "b"], ["b", "c"], ["c", "a"]]));
  t.deepEqual(cycle, ["a", "b", "c", "a"]);
  t.is(findCycle(pipeline(["a", "b"])), undefined);
});

test("the edges of a pipeline without edges are a chain of messages equal to create()'s", (t) => {
  const p = create(PipelineSchema, { name: "c", stages: [{ name: "a" }, { name: "b" }, { name: "c" }] });
  const edges = effectiveEdges(p);
  const want = [create(EdgeSchema, { from: "a", to: "b" }), create(EdgeSchema, { from: "b", to: "c" })];
  t.is(edges.length, want.length);
  for (const [i, e] of edges.entries()) t.true(equals(EdgeSchema, e, want[i] as (typeof want)[number]), `edge ${i}`);
  const declared = create(PipelineSchema, { name: "d", stages: [{ name: "a" }, { name: "b" }], edges: [{ from: "a", to: "b", port: "x" }] });
  t.is(effectiveEdges(declared), declared.edges);
});
