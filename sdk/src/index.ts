// dsat SDK: what an application imports to submit tasks, follow them, and run workers.

// ---------------------------------------------------------------------------- client
export { createClient } from "./client/client.ts";
export type { DsatClient, ClientOptions, RunResult, SubmitOptions, WatchOptions } from "./client/client.ts";

// ---------------------------------------------------------------------------- worker
export { createWorker, routeTo } from "./worker/worker.ts";
export type { Worker, WorkerOptions, Handler, TaskContext, HandlerResult } from "./worker/worker.ts";
export { Payload, encodePayload } from "./payload.ts";

// ---------------------------------------------------------------------------- telemetry
export { startTelemetry, shutdownTelemetry, tracingConfigured, activeTracer } from "./telemetry/telemetry.ts";
export type { Telemetry, TelemetryOptions } from "./telemetry/telemetry.ts";
export { ATTR, AttemptSpan, addTransitionEvent, endSpan, isEndState, TASK_ID_KEY } from "./telemetry/spans.ts";
export type { EventScope } from "./telemetry/spans.ts";
export type { TransitionEventFields } from "./telemetry/spans.ts";
export {
  TRACEPARENT,
  TRACESTATE,
  parseTraceparent,
  formatTraceparent,
  withTraceContext,
  contextFromHeaders,
  withSpan,
  ChainContext,
  traceHeaders,
} from "./telemetry/trace-context.ts";

// ---------------------------------------------------------------------------- errors
export { Code, ConnectError, dsatError, isRetryable, toDsatError, codeName, codeFromName, toGrpcStatus } from "./errors.ts";

// ---------------------------------------------------------------------------- versions
export { DSAT_VERSION, parseVersion, formatVersion, compareVersions, isCompatible } from "./version.ts";
export type { Version } from "./version.ts";

// ---------------------------------------------------------------------------- pipelines and the FSM
export { validatePipeline, effectiveEdges, entryStages, nextStages, parentStages, findCycle, NAME_RE } from "./graph.ts";
export { isLegalStageTransition, isLegalTaskTransition, isTaskTerminal, stateName } from "./fsm.ts";
export { RoundRobin } from "./round-robin.ts";

// ---------------------------------------------------------------------------- etcd and membership
export { Keys, DEFAULT_PREFIX } from "./keys.ts";
export type { MemberKindName } from "./keys.ts";
export { connectEtcd, defaultEtcdEndpoints } from "./etcd.ts";
export type { EtcdOptions } from "./etcd.ts";
export { Registration, registerMember, MemberWatcher, listMembers, parseMember, memberKindName } from "./membership.ts";
export { PrefixWatch } from "./prefix-watch.ts";
export type { PrefixWatchHandlers } from "./prefix-watch.ts";
export type { RegistrationOptions } from "./membership.ts";

// ---------------------------------------------------------------------------- servers and transports (for services)
export { advertisedAddress, bindTarget, startGrpcServer } from "./server/serve.ts";
export type { GrpcServerOptions, RunningGrpcServer } from "./server/serve.ts";
export { addService, serviceDefinition } from "./server/add-service.ts";
export type { RequestDecoders } from "./server/add-service.ts";
export type { ServiceHandlers } from "./server/add-service.ts";
export { HealthService, ServingStatus } from "./server/health.ts";
export { ReflectionService } from "./server/reflection.ts";
export { transportTo, clientTo, MAX_MESSAGE_BYTES } from "./transport.ts";
export { AsyncQueue } from "./async-queue.ts";
export { splitBySize, MAX_BATCH_BYTES } from "./batch.ts";
export { createLogger, defaultLogLevel } from "./logger.ts";
export type { Logger, LogLevel } from "./logger.ts";

// ---------------------------------------------------------------------------- generated messages and services
export * from "./gen/dsat/v1/task_pb.js";
export * from "./gen/dsat/v1/pipeline_pb.js";
export * from "./gen/dsat/v1/member_pb.js";
export * from "./gen/dsat/v1/worker_pb.js";
export * from "./gen/dsat/v1/router_pb.js";
export * from "./gen/dsat/v1/status_pb.js";
