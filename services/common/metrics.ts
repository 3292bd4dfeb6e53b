import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * A small Prometheus registry: counters, histograms and gauges read at scrape time,
 * rendered in the Prometheus text format (0.0.4). Hand-written rather than OpenTelemetry
 * metrics with the Prometheus exporter: an update is a Map lookup and an addition, with
 * no attribute objects to hash and no SDK to load, and the names and labels are exactly
 * the Prometheus ones.
 */
export class MetricsRegistry {
  readonly #metrics: Metric[] = [];
  readonly #beforeRender: (() => void)[] = [];

  /** A counter (a `_total` name) with these label names. */
  counter(name: string, help: string, labels: readonly string[] = []): Counter {
    return this.#add(new Counter(name, help, labels));
  }

  /** A histogram with these upper bounds (`le`), ascending; +Inf is implied. */
  histogram(name: string, help: string, labels: readonly string[], buckets: readonly number[]): Histogram {
    return this.#add(new Histogram(name, help, labels, buckets));
  }

  /** A gauge whose values `collect` gives at each scrape: [label values, value] pairs. */
  gauge(name: string, help: string, labels: readonly string[], collect: () => Iterable<readonly [readonly string[], number]>): void {
    this.#add(new Gauge(name, help, labels, collect));
  }

  /**
   * A counter whose values `collect` gives at each scrape: [label values, value] pairs, for a
   * total kept elsewhere (the process's CPU seconds, say).
   */
  counterOf(name: string, help: string, labels: readonly string[], collect: () => Iterable<readonly [readonly string[], number]>): void {
    this.#add(new Gauge(name, help, labels, collect, "counter"));
  }

  /** Runs `fn` at the start of each scrape, before any metric is read (to take one snapshot for several gauges). */
  beforeRender(fn: () => void): void {
    this.#beforeRender.push(fn);
  }

  /** Every metric in the Prometheus text format. */
  render(): string {
    for (const fn of this.#beforeRender) fn();
    return this.#metrics.map((m) => m.render()).join("");
  }

  #add<T extends Metric>(m: T): T {
    if (this.#metrics.some((x) => x.name === m.name)) throw new Error(`metric ${m.name} is registered twice`);
    this.#metrics.push(m);
    return m;
  }
}

/** Upper bounds for durations in seconds: 1 ms to 5 minutes. */
export const SECONDS_BUCKETS = Object.freeze([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]);

/** Upper bounds for sizes (items in a batch). */
export const SIZE_BUCKETS = Object.freeze([1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]);

/** Upper bounds for the items of a message on a router's hops (a Report holds up to 20,000). */
export const BATCH_SIZE_BUCKETS = Object.freeze([...SIZE_BUCKETS, 2000, 5000, 10000, 20000]);

abstract class Metric {
  readonly name: string;
  readonly help: string;
  readonly labels: readonly string[];

  constructor(name: string, help: string, labels: readonly string[]) {
    this.name = name;
    this.help = help;
    this.labels = labels;
  }

  abstract render(): string;

  protected header(type: string): string {
    return `# HELP ${this.name} ${this.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}\n# TYPE ${this.name} ${type}\n`;
  }

  protected labelText(values: readonly string[], extra = ""): string {
    const parts = this.labels.map((l, i) => `${l}="${escapeLabel(values[i] ?? "")}"`);
    if (extra) parts.push(extra);
    return parts.length === 0 ? "" : `{${parts.join(",")}}`;
  }
}

/** A monotonically increasing count per label values. */
export class Counter extends Metric {
  readonly #values = new Map<string, { labels: readonly string[]; value: number }>();

  /** Adds `by` (default 1) to the series of these label values. */
  inc(labels: readonly string[] = [], by = 1): void {
    const key = labels.join("\u0000");
    const s = this.#values.get(key);
    if (s) s.value += by;
    else this.#values.set(key, { labels, value: by });
  }

  render(): string {
    let out = this.header("counter");
    for (const s of this.#values.values()) out += `${this.name}${this.labelText(s.labels)} ${s.value}\n`;
    return out;
  }
}

/** Observations counted in cumulative buckets, with their sum and count. */
export class Histogram extends Metric {
  readonly #buckets: readonly number[];
  readonly #series = new Map<string, { labels: readonly string[]; counts: number[]; sum: number; count: number }>();

  constructor(name: string, help: string, labels: readonly string[], buckets: readonly number[]) {
    super(name, help, labels);
    this.#buckets = buckets;
  }

  /** Records one value for these label values. */
  observe(labels: readonly string[], value: number): void {
    const key = labels.join("\u0000");
    let s = this.#series.get(key);
    if (!s) this.#series.set(key, (s = { labels, counts: new Array<number>(this.#buckets.length).fill(0), sum: 0, count: 0 }));
    // Counted in the first bucket that holds it; render() makes the counts cumulative.
    let i = 0;
    while (i < this.#buckets.length && value > (this.#buckets[i] as number)) i++;
    if (i < this.#buckets.length) s.counts[i] = (s.counts[i] as number) + 1;
    s.sum += value;
    s.count++;
  }

  render(): string {
    let out = this.header("histogram");
    for (const s of this.#series.values()) {
      let cumulative = 0;
      this.#buckets.forEach((le, i) => {
        cumulative += s.counts[i] as number;
        out += `${this.name}_bucket${this.labelText(s.labels, `le="${le}"`)} ${cumulative}\n`;
      });
      out += `${this.name}_bucket${this.labelText(s.labels, 'le="+Inf"')} ${s.count}\n`;
      out += `${this.name}_sum${this.labelText(s.labels)} ${s.sum}\n`;
      out += `${this.name}_count${this.labelText(s.labels)} ${s.count}\n`;
    }
    return out;
  }
}

/** A metric whose values are read at scrape time: a gauge, or a counter kept elsewhere. */
class Gauge extends Metric {
  readonly #collect: () => Iterable<readonly [readonly string[], number]>;
  readonly #type: "gauge" | "counter";

  constructor(
    name: string,
    help: string,
    labels: readonly string[],
    collect: () => Iterable<readonly [readonly string[], number]>,
    type: "gauge" | "counter" = "gauge",
  ) {
    super(name, help, labels);
    this.#collect = collect;
    this.#type = type;
  }

  render(): string {
    let out = this.header(this.#type);
    for (const [labels, value] of this.#collect()) out += `${this.name}${this.labelText(labels)} ${value}\n`;
    return out;
  }
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** A running metrics endpoint. */
export interface MetricsServer {
  /** host:port it listens on. */
  readonly address: string;
  close(): Promise<void>;
}

/** Serves a registry at GET /metrics (and /) over HTTP on host:port. */
export function serveMetrics(registry: MetricsRegistry, host: string, port: number): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" || (path !== "/metrics" && path !== "/")) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: GET /metrics\n");
      return;
    }
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(registry.render());
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const a = server.address() as AddressInfo;
      const h = a.family === "IPv6" ? `[${a.address}]` : a.address;
      resolve({
        address: `${h}:${a.port}`,
        close: () =>
          new Promise<void>((r) => {
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}
