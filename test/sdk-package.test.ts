// The SDK as a user gets it: built, packed with npm, installed from the tarball into an
// empty project, and used from plain .mjs files by the project's Node without
// --conditions=@dsat/source (so from sdk/dist, not sdk/src), against a running mesh.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import test from "ava";
import { createClient, DSAT_VERSION, stateName } from "@dsat/sdk";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { freePort, ROOT, type ServiceProcess, startProcess } from "./helpers/processes.ts";
import { startOtlpReceiver } from "./helpers/otlp-receiver.ts";
import { parseMetrics } from "./helpers/metrics.ts";
import { LocalEtcd } from "../services/cli/local-etcd.ts";
import { parse as parseYaml } from "yaml";
import { waitFor } from "./helpers/wait.ts";

const run = promisify(execFile);

let mesh: TestMesh | undefined;
let meshStarting: Promise<unknown> | undefined;
let dir: string;
let tarball: string;
const children: ChildProcess[] = [];

/** Environment of the user's processes: nothing that would point Node at sdk/src. */
const userEnv = (extra: Record<string, string> = {}) => {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra, NODE_OPTIONS: "" };
  delete env.DSAT_LOG_LEVEL;
  return env;
};

const WORKER_MJS = `
import { createWorker, routeTo } from "@dsat/sdk";

const worker = await createWorker({
  stage: "shout",
  concurrency: 2,
  etcd: process.env.DSAT_ETCD,
  leaseTtlSeconds: 2,
  handler: async (input, ctx) => {
    const { text, hold } = input.json();
    if (hold) {
      // Held until the task is cancelled: the signal aborts, and the handler gives up.
      await new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)));
    }
    if (text === "") return routeTo("empty", { by: ctx.workerId });
    return { text: text.toUpperCase(), by: ctx.workerId };
  },
});
process.stdout.write(\`ready \${JSON.stringify({ id: worker.id, sdk: import.meta.resolve("@dsat/sdk") })}\\n\`);
process.on("SIGTERM", async () => {
  await worker.drain();
  process.exit(0);
});
`;

const CLIENT_MJS = `
import { createClient, DSAT_VERSION, stateName } from "@dsat/sdk";

const client = createClient({ etcd: process.env.DSAT_ETCD, timeoutMs: 10_000 });
const out = { sdk: import.meta.resolve("@dsat/sdk") };
const { pipeline } = await client.applyPipeline({ name: "packed", stages: [{ name: "shout" }] });
out.pipelineVersion = String(pipeline.version);

// run: submit and wait for the end.
const r = await client.run("packed", { text: "hello from a tarball" });
out.run = { state: stateName(r.state), ok: r.ok, output: r.output.json() };

// submit, then watch to the end, then getState.
const taskId = "packed-" + Date.now();
await client.submit("packed", { text: "watched" }, { taskId });
out.watched = [];
for await (const t of client.watch(taskId)) out.watched.push((t.stage || "task") + ":" + stateName(t.to));
const s = await client.getState(taskId);
out.state = { state: stateName(s.state), output: JSON.parse(new TextDecoder().decode(s.output)) };

// cancel a task that the worker holds.
const held = "held-" + Date.now();
await client.submit("packed", { text: "held", hold: true }, { taskId: held });
for await (const t of client.watch(held)) {
  if (t.stage === "shout" && stateName(t.to) === "RUNNING") break;
}
await client.cancel(held, "the test cancels it");
for await (const _ of client.watch(held)) {
  // to its end
}
const c = await client.getState(held);
out.cancelled = { state: stateName(c.state), message: c.error?.message ?? "" };

await client.close();
process.stdout.write(JSON.stringify(out) + "\\n");
// Only printed when something still holds the process after close.
setTimeout(() => process.stderr.write("still open: " + process.getActiveResourcesInfo().join(", ") + "\\n"), 2_000).unref();
`;

/** A TypeScript user of the package: it must typecheck against dist/*.d.ts alone. */
const CONSUMER_TS = `
import { createClient, createWorker, routeTo, type Handler, type RunResult, State } from "@dsat/sdk";

const handler: Handler = async (input, ctx) => {
  ctx.signal.throwIfAborted();
  const v = input.json<{ n: number }>();
  return v.n > 0 ? { n: v.n - 1 } : routeTo("done", v);
};
export async function main(): Promise<boolean> {
  const worker = await createWorker({ stage: "count", handler, concurrency: 4, defaultTimeoutMs: 1_000 });
  const client = createClient({ etcd: "127.0.0.1:2379" });
  const r: RunResult = await client.run("count", { n: 3 }, { deadline: 5_000 });
  await worker.drain();
  await client.close();
  return r.state === State.SUCCEEDED;
}
`;

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), "dsat-sdk-user-"));
  // The mesh (etcd, status and router processes) starts while the SDK is built and packed.
  meshStarting = startMesh({ leaseTtlSeconds: 2 }).then((m) => (mesh = m));
  meshStarting.catch(() => {});
  // `npm pack` runs the SDK's prepack script: scripts/build-sdk.sh.
  const packed = await run("npm", ["pack", "--json", "--pack-destination", dir], { cwd: join(ROOT, "sdk"), env: process.env });
  const info = JSON.parse(packed.stdout) as { filename: string }[];
  tarball = join(dir, info[0]!.filename);
  await meshStarting;
});

test.after.always(async () => {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  }
  await meshStarting?.catch(() => {});
  await mesh?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test.serial("the tarball holds dist (JavaScript, .d.ts, generated code) and README, and no source or test", async (t) => {
  const { stdout } = await run("tar", ["-tzf", tarball]);
  const files = stdout.trim().split("\n").sort();
  for (const f of [
    "package/package.json",
    "package/README.md",
    "package/dist/index.js",
    "package/dist/index.d.ts",
    "package/dist/client/client.js",
    "package/dist/worker/worker.js",
    "package/dist/gen/dsat/v1/router_pb.js",
    "package/dist/gen/dsat/v1/router_pb.d.ts",
    "package/dist/gen/grpc/health/v1/health_pb.js",
  ]) {
    t.true(files.includes(f), `${f} is packed`);
  }
  t.deepEqual(files.filter((f) => f.startsWith("package/src/") || /\.test\.|\.ts$/.test(f.replace(/\.d\.ts$/, ""))), []);
  const { stdout: pkgJson } = await run("tar", ["-xzOf", tarball, "package/package.json"]);
  const pkg = JSON.parse(pkgJson) as {
    dependencies: Record<string, string>;
    peerDependencies?: Record<string, string>;
    exports: Record<string, Record<string, string>>;
  };
  t.deepEqual(Object.keys(pkg.exports["."] ?? {}), ["@dsat/source", "types", "default"], "the source condition first, then types, then default");
  // Its dependencies come from the registry: none is this repository (services/, a workspace, a path).
  const declared = { ...pkg.dependencies, ...pkg.peerDependencies };
  for (const [name, range] of Object.entries(declared)) {
    t.false(name === "dsat" || name.startsWith("@dsat/"), `${name} is part of this repository`);
    t.regex(range, /^[\^~<>=]*\s*\d/, `${name}@${range} is a registry version range`);
  }
  // Every package the JavaScript imports is declared, and every relative import resolves to
  // a file of the package (nothing of services/ or elsewhere in the repository).
  const unpacked = join(dir, "unpacked");
  mkdirSync(unpacked);
  await run("tar", ["-xzf", tarball, "-C", unpacked]);
  const root = join(unpacked, "package");
  const packages = new Set<string>();
  const jsFiles = files.filter((f) => f.endsWith(".js")).map((f) => join(unpacked, f));
  for (const file of jsFiles) {
    const js = readFileSync(file, "utf8");
    const specifiers = [
      ...js.matchAll(/^\s*(?:import|export)\s[^;]*?\sfrom\s*"([^"]+)";/gm),
      ...js.matchAll(/^\s*import\s*"([^"]+)";/gm),
      ...js.matchAll(/\bimport\(\s*"([^"]+)"\s*\)/g),
    ].map((m) => m[1]!);
    for (const x of specifiers) {
      if (x.startsWith(".")) {
        const target = resolve(dirname(file), x);
        const where = `${relative(root, file)} imports ${x}`;
        t.true(target.startsWith(`${root}/`) && existsSync(target), `${where}, which is not in the package`);
      } else if (!x.startsWith("node:")) {
        packages.add(x.split("/").slice(0, x.startsWith("@") ? 2 : 1).join("/"));
      }
    }
  }
  t.true(packages.size > 0);
  for (const p of packages) t.true(p in declared, `dist imports ${p}, which package.json does not declare`);
});

test.serial("installed from the tarball, a plain .mjs worker and client run a task through the mesh", async (t) => {
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "dsat-sdk-user", private: true, type: "module" }));
  writeFileSync(join(dir, "worker.mjs"), WORKER_MJS);
  writeFileSync(join(dir, "client.mjs"), CLIENT_MJS);
  const started = Date.now();
  await run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error", tarball], { cwd: dir });
  t.log(`npm install of the tarball took ${Date.now() - started} ms`);
  const installed = JSON.parse(readFileSync(join(dir, "node_modules/@dsat/sdk/package.json"), "utf8")) as { version: string };
  t.is(installed.version, DSAT_VERSION);

  // The worker, from the installed package.
  const m = mesh!;
  const env = userEnv({ DSAT_ETCD: m.etcd.endpoint });
  const worker = spawn(process.execPath, ["worker.mjs"], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  children.push(worker);
  let stderr = "";
  worker.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const ready = await new Promise<{ id: string; sdk: string }>((resolve, reject) => {
    createInterface({ input: worker.stdout }).on("line", (line) => {
      if (line.startsWith("ready ")) resolve(JSON.parse(line.slice(6)));
    });
    worker.once("exit", (code) => reject(new Error(`worker.mjs exited with ${code}: ${stderr}`)));
  });
  t.is(ready.sdk, `file://${join(dir, "node_modules/@dsat/sdk/dist/index.js")}`, "the worker loads the packed dist");
  await waitFor(
    async () => (await m.client.listWorkers()).flatMap((v) => v.workers).some((w) => w.id === ready.id && w.connected),
    { what: "the router to connect to the packed worker" },
  );

  // The client, from the installed package. It must also exit by itself once it closed
  // its client: nothing the SDK opened may keep a user's script alive.
  const client = spawn(process.execPath, ["client.mjs"], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  children.push(client);
  let stdout = "";
  let clientErr = "";
  client.stdout.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  client.stderr.on("data", (d: Buffer) => {
    clientErr += d.toString();
  });
  await waitFor(() => stdout.endsWith("\n") || client.exitCode !== null, { timeoutMs: 30_000, what: "client.mjs to print its result" });
  t.is(clientErr, "");
  const out = JSON.parse(stdout.trim().split("\n").at(-1)!) as {
    sdk: string;
    run: { state: string; ok: boolean; output: { text: string; by: string } };
    watched: string[];
    state: { state: string; output: { text: string } };
    cancelled: { state: string; message: string };
  };
  t.is(out.sdk, `file://${join(dir, "node_modules/@dsat/sdk/dist/index.js")}`, "the client loads the packed dist");
  t.deepEqual(out.run, { state: "SUCCEEDED", ok: true, output: { text: "HELLO FROM A TARBALL", by: ready.id } });
  t.is(out.watched.at(-1), "task:SUCCEEDED");
  t.true(out.watched.includes("shout:RUNNING") && out.watched.includes("shout:SUCCEEDED"), out.watched.join(" "));
  t.deepEqual(out.state, { state: "SUCCEEDED", output: { text: "WATCHED", by: ready.id } });
  t.is(out.cancelled.state, "CANCELLED");
  t.regex(out.cancelled.message, /the test cancels it/);
  const exited = await waitFor(() => client.exitCode !== null, { timeoutMs: 5_000, what: "client.mjs to exit" }).catch(() => false);
  t.true(exited, `client.mjs closed its client but did not exit: ${clientErr.trim()}`);
  t.is(client.exitCode, 0, clientErr);

  // The worker drains and exits on SIGTERM.
  worker.kill("SIGTERM");
  await waitFor(() => worker.exitCode !== null, { what: "worker.mjs to exit" });
  t.is(worker.exitCode, 0, stderr);
});

test.serial("the compiled services (make build) serve: a router and a status server from dist/services run a task", async (t) => {
  // sdk/dist is fresh (npm pack built it above); compile the services the way scripts/build.sh does.
  await run(join(ROOT, "node_modules/.bin/tsc"), ["-p", "services/tsconfig.build.json"], { cwd: ROOT });
  const m = mesh!;
  const common = ["--etcd", m.etcd.endpoint, "--lease-ttl", "2"];
  const plain = ["--disable-warning=ExperimentalWarning"];
  const status = await startProcess("compiled status", process.execPath, [...plain, "dist/services/status/main.js", ...common], userEnv());
  const router = await startProcess("compiled router", process.execPath, [...plain, "dist/services/router/main.js", ...common], userEnv());
  children.push(status.child, router.child);
  await m.addWorker("echo", "echo");
  const client = createClient({ routers: [router.address], status: [status.address] });
  try {
    await client.applyPipeline({ name: "compiled", stages: [{ name: "echo" }] });
    await waitFor(
      async () => (await client.listWorkers())[0]?.workers.some((w) => w.stage === "echo" && w.connected),
      { what: "the compiled router to connect to the echo worker" },
    );
    const r = await client.run("compiled", { hello: "dist" }, { deadline: 10_000 });
    t.is(stateName(r.state), "SUCCEEDED", r.error?.message);
    const s = await client.getState(r.taskId, { history: true });
    t.is(s.routerId, router.id, "the compiled router drove it");
    t.is(stateName(s.state), "SUCCEEDED");
  } finally {
    await client.close();
    await Promise.all([router.stop(), status.stop()]);
  }
});

test.serial("deploy/: the compose file's services start as written (without a container engine) and run the demo pipeline, traced and with metrics", async (t) => {
  // dist/services and sdk/dist are fresh (the test above compiled them, as the image's build stage does).
  const dockerfile = readFileSync(join(ROOT, "deploy/Dockerfile"), "utf8");
  // Every file the image copies from the build context (the repository) is there.
  for (const m of dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
    for (const src of (m[1] as string).split(/\s+/)) t.true(existsSync(join(ROOT, src)), `Dockerfile: COPY ${src}`);
  }
  const nodeOptions = /^ENV NODE_OPTIONS="([^"]*)"$/m.exec(dockerfile)?.[1];
  t.truthy(nodeOptions, "the image's NODE_OPTIONS");
  t.regex(dockerfile, /^ENTRYPOINT \["node"\]$/m);

  type Service = { command: (string | number)[]; environment?: Record<string, string | number> };
  const compose = parseYaml(readFileSync(join(ROOT, "deploy/docker-compose.yml"), "utf8"), { merge: true }) as {
    services: Record<string, Service>;
  };
  const { etcd: etcdService, jaeger: _jaeger, ...dsat } = compose.services;
  t.deepEqual(Object.keys(dsat).sort(), ["classify", "count", "normalize", "router", "status"]);

  // etcd with the compose file's own flags (its addresses and data dir are the harness's).
  const etcdFlags = (etcdService?.command ?? []).map(String).filter((f) => f.startsWith("--") && !/^--(data-dir|listen-client-urls|advertise-client-urls)=/.test(f));
  t.true(etcdFlags.some((f) => f.startsWith("--quota-backend-bytes=")));
  const etcdDir = mkdtempSync(join(tmpdir(), "dsat-deploy-etcd-"));
  const etcd = new LocalEtcd({ dataDir: etcdDir, extraArgs: etcdFlags });
  await etcd.start();
  const otlp = await startOtlpReceiver();
  const started: ServiceProcess[] = [];
  try {
    // Each service as compose runs it: node + its command, its environment, the image's
    // NODE_OPTIONS, from the repository root (the image's /app); only the addresses differ.
    for (const [name, svc] of Object.entries(dsat)) {
      const args = svc.command.map(String).map((a) => (a === "127.0.0.1:2379" ? etcd.endpoint : a));
      const port = args.indexOf("--port");
      if (port >= 0) args[port + 1] = String(await freePort());
      const env: Record<string, string> = {};
      for (const [k, v] of Object.entries(svc.environment ?? {})) env[k] = String(v);
      t.is(env.OTEL_EXPORTER_OTLP_ENDPOINT, "http://127.0.0.1:4318", `${name}: traces go to Jaeger's OTLP port`);
      env.OTEL_EXPORTER_OTLP_ENDPOINT = otlp.endpoint;
      t.truthy(env.DSAT_METRICS_PORT, `${name}: serves metrics`);
      env.DSAT_METRICS_PORT = String(await freePort());
      const p = await startProcess(`compose ${name}`, process.execPath, args, { ...userEnv(env), NODE_OPTIONS: nodeOptions as string });
      children.push(p.child);
      started.push(p);
      t.truthy(p.metrics, `${name} says where its metrics are`);
      t.true(p.tracing, `${name} traces`);
    }
    // deploy/README.md's next steps, with the CLI.
    const dsatCli = join(ROOT, "services/cli/bin/dsat");
    await run(dsatCli, ["--etcd", etcd.endpoint, "pipeline", "apply", "examples/demo/pipeline.yaml"], { cwd: ROOT });
    await waitFor(
      async () => {
        const { stdout } = await run(dsatCli, ["--etcd", etcd.endpoint, "members"], { cwd: ROOT });
        return ["normalize", "count", "classify"].every((s) => new RegExp(`^worker\\s+\\S+\\s+\\S+\\s+${s}\\s`, "m").test(stdout));
      },
      { what: "the three workers of the compose file to register" },
    );
    const submitted = await run(dsatCli, ["--etcd", etcd.endpoint, "submit", "demo", '{"id":1,"text":"Hello"}', "--wait"], { cwd: ROOT });
    t.regex(submitted.stdout, /SUCCEEDED/);
    for (const p of started) {
      const res = await fetch(`http://${p.metrics}/metrics`);
      t.is(res.status, 200, `${p.kind} ${p.id}: /metrics`);
      // Every process serves the standard process and Node.js metrics beside dsat's own.
      const samples = parseMetrics(await res.text());
      const value = (name: string) => samples.find((m) => m.name === name)?.value ?? Number.NaN;
      t.true(value("process_resident_memory_bytes") > 10e6, `${p.kind} ${p.id}: its RSS`);
      t.true(value("process_cpu_seconds_total") > 0, `${p.kind} ${p.id}: its CPU seconds`);
      t.true(value("nodejs_heap_size_used_bytes") > 0, `${p.kind} ${p.id}: its heap`);
    }
    // SIGTERM drains and flushes the spans: every process of the compose file exported some.
    await Promise.all(started.map((p) => p.stop()));
    const services = new Set(otlp.spans.map((s) => s.service));
    t.deepEqual([...services].filter((s) => s.startsWith("dsat-")).sort(), ["dsat-router", "dsat-worker"]);
  } finally {
    await Promise.all(started.map((p) => p.kill9()));
    await otlp.close();
    await etcd.stop();
    rmSync(etcdDir, { recursive: true, force: true });
  }
});

test.serial("TypeScript typechecks against the packed .d.ts", async (t) => {
  writeFileSync(join(dir, "consumer.ts"), CONSUMER_TS);
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "es2022",
        module: "nodenext",
        moduleResolution: "nodenext",
        strict: true,
        noEmit: true,
        types: ["node"],
        typeRoots: [join(ROOT, "node_modules/@types")],
      },
      files: ["consumer.ts"],
    }),
  );
  const tsc = await run(join(ROOT, "node_modules/.bin/tsc"), ["-p", dir], { cwd: dir }).catch((err: { stdout?: string }) => err);
  t.is("stdout" in tsc ? (tsc.stdout ?? "").trim() : "", "", "tsc reports no error");
});
