import test from "ava";
import { bar, ms, quantile, table } from "./render.ts";

test("table aligns columns and right-aligns numbers", (t) => {
  t.is(table(["stage", "n"], [["a", 5], ["long", 100]]), "stage    n\na        5\nlong   100");
});

test("bar shows the fraction done", (t) => {
  t.is(bar(5, 10, 10), "[█████░░░░░]  5/10  50%");
  t.is(bar(0, 0, 4), "[████] 0/0 100%");
});

test("quantile uses the nearest rank", (t) => {
  t.is(quantile([5, 1, 3, 2, 4], 0.5), 3);
  t.is(quantile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.95), 10);
  t.is(quantile([], 0.5), 0);
  t.is(ms(12.345), "12.3 ms");
  t.is(ms(4560), "4.56 s");
});
