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
  t.deepEqual(f.workers, [{ stage: "a", module: "/tmp/a.ts", export: "default", replicas: 2, min: 2, max: 2, concurrency: 4 }]);
});

test("a worker without a module is refused with the stage named", (t) => {
  t.throws(() => pipelineFromDocument({ name: "x", stages: ["a"], workers: { a: {} } }, "p.yaml"), {
    message: /workers\.a needs a module/,
  });
});

test("workers take min and max; replicas alone means a fixed pool", (t) => {
  const f = pipelineFromDocument(
    { name: "x", stages: ["a", "b", "c"], workers: { a: { module: "a.ts", min: 1, max: 3 }, b: { module: "b.ts", replicas: 2 }, c: { module: "c.ts", max: 4 } } },
    "/tmp/p.yaml",
  );
  t.deepEqual(f.workers.map((w) => [w.stage, w.replicas, w.min, w.max]), [["a", 1, 1, 3], ["b", 2, 2, 2], ["c", 1, 1, 4]]);
  t.throws(() => pipelineFromDocument({ name: "x", stages: ["a"], workers: { a: { module: "a.ts", min: 3, max: 2 } } }, "p.yaml"), {
    message: /workers\.a needs whole numbers 0 <= min <= max/,
  });
});
