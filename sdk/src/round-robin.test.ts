import test from "ava";
import { RoundRobin } from "./round-robin.ts";

test("picks items in turn", (t) => {
  const rr = new RoundRobin<string>();
  for (const x of ["a", "b", "c"]) rr.add(x);
  t.deepEqual([1, 2, 3, 4, 5, 6, 7].map(() => rr.pick()), ["a", "b", "c", "a", "b", "c", "a"]);
});

test("skips items that are not eligible, and keeps the turn fair", (t) => {
  const rr = new RoundRobin<string>();
  for (const x of ["a", "b", "c"]) rr.add(x);
  const busy = new Set(["b"]);
  const picks = Array.from({ length: 6 }, () => rr.pick((x) => !busy.has(x)));
  t.deepEqual(picks, ["a", "c", "a", "c", "a", "c"]);
  t.is(rr.pick(() => false), undefined);
});

test("spreads evenly over many picks", (t) => {
  const rr = new RoundRobin<number>();
  for (let i = 0; i < 7; i++) rr.add(i);
  const counts = new Map<number, number>();
  for (let i = 0; i < 7000; i++) {
    const x = rr.pick() as number;
    counts.set(x, (counts.get(x) ?? 0) + 1);
  }
  t.deepEqual([...counts.values()], Array(7).fill(1000));
});

test("items added and removed join and leave the rotation", (t) => {
  const rr = new RoundRobin<string>();
  rr.add("a");
  rr.add("b");
  rr.add("a");
  t.is(rr.size, 2);
  t.is(rr.pick(), "a");
  rr.add("c");
  t.is(rr.pick(), "b");
  t.true(rr.remove("c"));
  t.false(rr.remove("zz"));
  t.is(rr.pick(), "a");
  t.true(rr.remove("a"));
  t.is(rr.pick(), "b");
  t.is(rr.pick(), "b");
  rr.remove("b");
  t.is(rr.pick(), undefined);
});
