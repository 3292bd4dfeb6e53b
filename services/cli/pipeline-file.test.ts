import test from "ava";
import { parseDurationMs, pipelineFromDocument } from "./pipeline-file.ts";

test("durations", (t) => {
  t.is(parseDurationMs("250ms", "x"), 250);
  t.is(parseDurationMs("5s", "x"), 5000);
  t.is(parseDurationMs("1.5s", "x"), 1500);
  t.is(parseDurationMs("2m", "x"), 120_000);
  t.is(parseDurationMs(3, "x"), 3000);
  t.throws(() => parseDurationMs("soon", "stage #1 timeout"), { message: /stage #1 timeout: "soon" is not a duration/ });
});

test("a document becomes a pipeline and worker specs", (t) => {
  const f = pipelineFromDocument(
    {
      name: "demo",
      stages: ["a", { name: "b", timeout: "2s", retry: { maxAttempts: 3, initialBackoff: "50ms" } }],
      workers: { a: { module: "./a.ts", replicas: 2, concurrency: 4 } },
    },
    "/tmp/p.yaml",
  );
  t.is(f.pipeline.name, "demo");
  t.deepEqual(f.pipeline.stages.map((s) => s.name), ["a", "b"]);
  t.is(f.pipeline.stages[1]?.timeout?.seconds, 2n);
  t.is(f.pipeline.stages[1]?.retry?.maxAttempts, 3);
  t.is(f.pipeline.stages[1]?.retry?.initialBackoff?.nanos, 50_000_000);
  t.deepEqual(f.workers, [{ stage: "a", module: "/tmp/a.ts", export: "default", replicas: 2, concurrency: 4 }]);
});

test("a worker without a module is refused with the stage named", (t) => {
  t.throws(() => pipelineFromDocument({ name: "x", stages: ["a"], workers: { a: {} } }, "p.yaml"), {
    message: /workers\.a needs a module/,
  });
});
