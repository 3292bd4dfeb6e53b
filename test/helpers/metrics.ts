import type { ServiceProcess } from "./processes.ts";

/** Parses the Prometheus text format: one entry per sample. */
export function parseMetrics(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  const out: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] as string] = l[2] as string;
    out.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return out;
}

/** GET /metrics of a process started with --metrics-port, parsed (checks the content type). */
export async function scrape(p: ServiceProcess): Promise<ReturnType<typeof parseMetrics>> {
  if (!p.metrics) throw new Error(`${p.kind} ${p.id} serves no metrics`);
  const res = await fetch(`http://${p.metrics}/metrics`);
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status}`);
  if (!res.headers.get("content-type")?.startsWith("text/plain; version=0.0.4")) throw new Error("not the Prometheus text format");
  return parseMetrics(await res.text());
}
