import test from "ava";
import { PoolScaler } from "./pool-scaler.ts";

const at = (atMs: number, inFlight: number, capacity: number, queued = 0) => ({ atMs, inFlight, capacity, queued });

test("grows after two busy samples in a row, not after one", (t) => {
  const s = new PoolScaler({ min: 1, max: 3, cooldownMs: 0 });
  t.is(s.decide(at(0, 4, 4), 1), "hold");
  t.is(s.decide(at(1000, 1, 4), 1), "hold");
  t.is(s.decide(at(2000, 4, 4), 1), "hold");
  t.is(s.decide(at(3000, 2, 4, 5), 1), "up");
});

test("never grows past max nor shrinks below min", (t) => {
  const s = new PoolScaler({ min: 1, max: 2, cooldownMs: 0, idleMs: 1000 });
  s.decide(at(0, 8, 8, 3), 2);
  t.is(s.decide(at(1000, 8, 8, 3), 2), "hold");
  t.is(s.decide(at(2000, 0, 2), 1), "hold");
  t.is(s.decide(at(9000, 0, 2), 1), "hold");
});

test("shrinks only after idleMs of low utilisation with nothing queued", (t) => {
  const s = new PoolScaler({ min: 1, max: 3, cooldownMs: 0, idleMs: 5000 });
  t.is(s.decide(at(0, 0, 6), 3), "hold");
  t.is(s.decide(at(3000, 1, 6), 3), "hold");
  t.is(s.decide(at(4000, 0, 6, 1), 3), "hold", "a queued task restarts the idle period");
  t.is(s.decide(at(5000, 0, 6), 3), "hold");
  t.is(s.decide(at(9000, 0, 6), 3), "hold");
  t.is(s.decide(at(10_000, 0, 6), 3), "down");
  t.is(s.decide(at(11_000, 0, 4), 2), "hold", "the next step down waits another idle period");
  t.is(s.decide(at(15_000, 0, 4), 2), "down");
});

test("holds between the thresholds (hysteresis)", (t) => {
  const s = new PoolScaler({ min: 1, max: 3, cooldownMs: 0, idleMs: 1000 });
  for (let i = 0; i < 10; i++) t.is(s.decide(at(i * 1000, 3, 6), 2), "hold");
});

test("cooldown after a change keeps the pool from flapping", (t) => {
  const s = new PoolScaler({ min: 1, max: 5, cooldownMs: 3000, idleMs: 0 });
  s.decide(at(0, 4, 4), 1);
  t.is(s.decide(at(1000, 4, 4), 1), "up");
  t.is(s.decide(at(2000, 8, 8), 2), "hold");
  t.is(s.decide(at(3000, 8, 8), 2), "hold");
  t.is(s.decide(at(3500, 0, 8), 2), "hold", "idle at once, but still cooling down");
  t.is(s.decide(at(4000, 0, 8), 2), "down");
});

test("refuses bounds where max < min", (t) => {
  t.throws(() => new PoolScaler({ min: 3, max: 2 }));
});
