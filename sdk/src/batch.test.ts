import test from "ava";
import { splitBySize } from "./batch.ts";

test("keeps order and stays within the bound", (t) => {
  t.deepEqual(splitBySize([1, 2, 3, 4, 5], (x) => x, 5), [[1, 2], [3], [4], [5]]);
  t.deepEqual(splitBySize([1, 1, 1, 1], (x) => x, 10), [[1, 1, 1, 1]]);
});

test("an item over the bound goes alone; nothing in, nothing out", (t) => {
  t.deepEqual(splitBySize([1, 20, 1], (x) => x, 5), [[1], [20], [1]]);
  t.deepEqual(splitBySize([], () => 1, 5), []);
});

test("splitBySize counts an item countOf times against maxItems: an item of several etcd operations", (t) => {
  // Items are operation counts; at most 4 operations per batch, bytes unbounded.
  t.deepEqual(splitBySize([1, 3, 1, 1, 2, 2, 5], () => 0, Number.POSITIVE_INFINITY, 4, (x) => x), [[1, 3], [1, 1, 2], [2], [5]]);
});
