import test from "ava";
import { ForgottenAttempts } from "./forgotten-attempts.ts";

test("a task that comes back is dispatched past the attempts its forgotten run used, at those stages only", (t) => {
  const f = new ForgottenAttempts(1_000);
  f.remember("t1", [["a", 1], ["b", 3]], 0);
  t.is(f.next("t1", "b", 2, 10), 4, "the record said attempt 2; the forgotten run had dispatched 3");
  t.is(f.next("t1", "b", 2, 10), 2, "once used, the floor is gone (the stage moved past it here)");
  t.is(f.next("t1", "a", 5, 10), 5, "a record ahead of the forgotten run keeps its own attempt");
  t.is(f.next("t1", "c", 1, 10), 1, "a stage the forgotten run never reached");
  t.is(f.next("other", "a", 1, 10), 1);
  t.is(f.size, 0);
});

test("a task forgotten twice keeps the highest attempt of each stage", (t) => {
  const f = new ForgottenAttempts(1_000);
  f.remember("t1", [["a", 2]], 0);
  f.remember("t1", [["a", 1], ["b", 1]], 5);
  t.is(f.next("t1", "a", 1, 10), 3);
  t.is(f.next("t1", "b", 1, 10), 2);
});

test("entries go after the ttl, and when the task ends", (t) => {
  const f = new ForgottenAttempts(1_000);
  f.remember("old", [["a", 4]], 0);
  f.remember("young", [["a", 4]], 900);
  t.is(f.next("old", "a", 1, 1_500), 1, "past the ttl the forgotten run's messages are settled");
  f.remember("new", [["a", 1]], 2_000); // sweeps "young" (1,100 ms old)
  t.is(f.size, 1);
  f.delete("new");
  t.is(f.size, 0);
  f.remember("none", [], 2_000);
  t.is(f.size, 0, "a task with no stage dispatched leaves nothing");
});
