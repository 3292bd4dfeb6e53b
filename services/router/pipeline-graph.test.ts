import { create } from "@bufbuild/protobuf";
import { nextStages, parentStages, PipelineSchema } from "@dsat/sdk";
import test from "ava";
import { graphOf } from "./pipeline-graph.ts";

test("the graph agrees with the SDK's functions, for a chain and for edges with ports and a join", (t) => {
  const chain = create(PipelineSchema, { name: "c", stages: [{ name: "a" }, { name: "b" }, { name: "c" }] });
  const dag = create(PipelineSchema, {
    name: "d",
    stages: [{ name: "in" }, { name: "yes" }, { name: "no" }, { name: "join" }],
    edges: [
      { from: "in", to: "yes", port: "ok" },
      { from: "in", to: "no", port: "" },
      { from: "in", to: "join", port: "ok" },
      { from: "yes", to: "join", port: "" },
      { from: "no", to: "join", port: "" },
    ],
  });
  for (const p of [chain, dag]) {
    const g = graphOf(p);
    t.is(graphOf(p), g, "computed once per pipeline");
    for (const s of p.stages) {
      for (const port of ["", "ok", "other"]) t.deepEqual([...g.next(s.name, port)], nextStages(p, s.name, port));
      t.deepEqual([...g.parents(s.name)], [...new Set(parentStages(p, s.name))]);
    }
  }
  t.deepEqual([...graphOf(chain).entries], ["a"]);
  t.deepEqual([...graphOf(dag).parents("join")], ["in", "yes", "no"]);
  t.throws(() => (graphOf(dag).next("in", "ok") as string[]).push("x"), undefined, "shared lists are frozen");
});
