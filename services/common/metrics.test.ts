import test from "ava";
import { MetricsRegistry, serveMetrics } from "./metrics.ts";

test("counters, histograms and gauges render in the Prometheus text format", (t) => {
  const r = new MetricsRegistry();
  const c = r.counter("x_total", "Things.", ["stage", "state"]);
  c.inc(["a", "RUNNING"]);
  c.inc(["a", "RUNNING"], 2);
  c.inc(["", 'we"ird\\']);
  const h = r.histogram("y_seconds", "Waits.", ["stage"], [0.1, 1]);
  h.observe(["a"], 0.05);
  h.observe(["a"], 0.1);
  h.observe(["a"], 0.5);
  h.observe(["a"], 3);
  r.gauge("z", "Depth.", [], () => [[[], 7]]);
  t.is(
    r.render(),
    [
      "# HELP x_total Things.",
      "# TYPE x_total counter",
      'x_total{stage="a",state="RUNNING"} 3',
      'x_total{stage="",state="we\\"ird\\\\"} 1',
      "# HELP y_seconds Waits.",
      "# TYPE y_seconds histogram",
      'y_seconds_bucket{stage="a",le="0.1"} 2',
      'y_seconds_bucket{stage="a",le="1"} 3',
      'y_seconds_bucket{stage="a",le="+Inf"} 4',
      'y_seconds_sum{stage="a"} 3.65',
      'y_seconds_count{stage="a"} 4',
      "# HELP z Depth.",
      "# TYPE z gauge",
      "z 7",
      "",
    ].join("\n"),
  );
  t.throws(() => r.counter("x_total", "again"), { message: /registered twice/ });
});

test("serveMetrics answers GET /metrics with the registry and 404 elsewhere", async (t) => {
  const r = new MetricsRegistry();
  r.counter("hits_total", "Hits.").inc();
  const s = await serveMetrics(r, "127.0.0.1", 0);
  try {
    const res = await fetch(`http://${s.address}/metrics`);
    t.is(res.status, 200);
    t.is(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    t.regex(await res.text(), /^hits_total 1$/m);
    t.is((await fetch(`http://${s.address}/other`)).status, 404);
  } finally {
    await s.close();
  }
});
