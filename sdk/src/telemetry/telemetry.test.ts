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
