import test from "ava";
import { laneOf } from "./lanes.ts";

test("a task id always falls in the same lane, within range", (t) => {
  for (const id of ["", "a", "0193f3a1-7c2e-7d4e-9f00-aaaaaaaaaaaa", "ünï"]) {
    const lane = laneOf(id, 4);
    t.true(lane >= 0 && lane < 4);
    t.is(laneOf(id, 4), lane);
  }
  t.is(laneOf("anything", 1), 0);
});

test("task ids spread over the lanes evenly enough", (t) => {
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < 4000; i++) {
    const lane = laneOf(`task-${i}-${(i * 7919) % 1000}`, 4);
    counts[lane] = (counts[lane] ?? 0) + 1;
  }
  for (const c of counts) t.true(c > 800 && c < 1200, `lane sizes ${counts.join(", ")}`);
});
