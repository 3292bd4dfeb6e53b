import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import test from "ava";
import { tracingConfigured } from "./telemetry.ts";

test("tracing is off when no OTEL_* variable asks for it", (t) => {
  t.false(tracingConfigured({}));
  t.false(tracingConfigured({ OTEL_SERVICE_NAME: "x", OTEL_TRACES_SAMPLER: "always_on", OTEL_BSP_SCHEDULE_DELAY: "10" }));
});

test("an exporter or an OTLP endpoint turns tracing on; none or OTEL_SDK_DISABLED turns it off", (t) => {
  t.true(tracingConfigured({ OTEL_TRACES_EXPORTER: "otlp" }));
  t.true(tracingConfigured({ OTEL_TRACES_EXPORTER: "console" }));
  t.true(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" }));
  t.true(tracingConfigured({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://127.0.0.1:4318/v1/traces" }));
  t.false(tracingConfigured({ OTEL_TRACES_EXPORTER: "none", OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" }));
  t.false(tracingConfigured({ OTEL_TRACES_EXPORTER: "otlp", OTEL_SDK_DISABLED: "true" }));
  t.true(tracingConfigured({ OTEL_TRACES_EXPORTER: "otlp", OTEL_SDK_DISABLED: "false" }));
});

/** Starts telemetry in a child process with `env`, makes one span of dsat's tracer, and says what it saw. */
async function probe(env: Record<string, string>): Promise<{ tracer: string; stdout: string }> {
  const script = `
    const { startTelemetry, activeTracer, shutdownTelemetry } = await import(${JSON.stringify(new URL("./telemetry.ts", import.meta.url).href)});
    await startTelemetry({ serviceName: "probe-service" });
    const tracer = activeTracer();
    tracer.startSpan("probe span").end();
    await shutdownTelemetry();
    console.log("TRACER=" + tracer.constructor.name);
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    env: { PATH: process.env.PATH ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (b: Buffer) => (stdout += b));
  child.stderr.on("data", (b: Buffer) => (stderr += b));
  const [code] = (await once(child, "exit")) as [number | null];
  if (code !== 0) throw new Error(`probe failed (${code}): ${stderr}`);
  return { tracer: /TRACER=(\w+)/.exec(stdout)?.[1] ?? "", stdout };
}

test("dsat's own tracer serves the default OTLP exporter; any other exporter, or resource detectors named in OTEL_*, get the Node SDK's", async (t) => {
  // An OTLP/HTTP endpoint on loopback that counts the export requests it gets.
  let exports = 0;
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      exports++;
      res.writeHead(200, { "content-type": "application/x-protobuf" });
      res.end();
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => server.close());
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  t.is((await probe({ OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_ENDPOINT: endpoint })).tracer, "DsatTracer");
  t.is(exports, 1, "the span went out on shutdown");
  const console = await probe({ OTEL_TRACES_EXPORTER: "console" });
  t.not(console.tracer, "DsatTracer");
  t.regex(console.stdout, /name: 'probe span'/);
  t.regex(console.stdout, /'service.name': 'probe-service'/);
  t.not((await probe({ OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_NODE_RESOURCE_DETECTORS: "env" })).tracer, "DsatTracer");
  t.is(exports, 2);
});
