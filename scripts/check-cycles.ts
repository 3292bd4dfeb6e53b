// Fails when relative imports between the project's own .ts files form a cycle.
//   node scripts/check-cycles.ts DIR...
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const files: string[] = [];
const walk = (dir: string) => {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (name === "node_modules" || name === "gen") continue;
    if (statSync(p).isDirectory()) walk(p);
    else if (p.endsWith(".ts") && !p.endsWith(".d.ts")) files.push(resolve(p));
  }
};
for (const d of process.argv.slice(2)) walk(d);

const IMPORT_RE = /^\s*(?:import|export)\s[^;]*?from\s+["'](\.[^"']+)["']/gm;
const graph = new Map<string, string[]>();
for (const f of files) {
  const src = readFileSync(f, "utf8");
  const deps: string[] = [];
  for (const m of src.matchAll(IMPORT_RE)) {
    const spec = m[1] as string;
    if (/^\s*import\s+type\s/.test(m[0]) || /^\s*export\s+type\s/.test(m[0])) continue;
    if (spec.endsWith(".ts")) deps.push(resolve(dirname(f), spec));
  }
  graph.set(f, deps);
}

const color = new Map<string, number>();
const stack: string[] = [];
const cycles: string[][] = [];
const visit = (n: string) => {
  color.set(n, 1);
  stack.push(n);
  for (const d of graph.get(n) ?? []) {
    const c = color.get(d) ?? 0;
    if (c === 1) cycles.push([...stack.slice(stack.indexOf(d)), d]);
    else if (c === 0 && graph.has(d)) visit(d);
  }
  stack.pop();
  color.set(n, 2);
};
for (const f of graph.keys()) if (!color.get(f)) visit(f);

if (cycles.length > 0) {
  for (const c of cycles) console.error(`import cycle: ${c.map((p) => relative(process.cwd(), p)).join(" -> ")}`);
  process.exit(1);
}
console.log(`no import cycle among ${files.length} files`);
