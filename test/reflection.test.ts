// Server reflection on every kind of server, read with a real client (grpc-js, protobuf-es
// messages) and, where it is installed, with grpcurl: what grpcurl and other tools need to
// list, describe and call the services without the .proto files.
import { execFile, spawnSync } from "node:child_process";
import { promisify } from "node:util";
import { create, type DescService, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type FileDescriptorProto, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { createWorker, PipelineService, RouterService, StatusService, type Worker, WorkerService } from "@dsat/sdk";
import * as grpc from "@grpc/grpc-js";
import test from "ava";
import { Health } from "../sdk/src/gen/grpc/health/v1/health_pb.js";
import {
  ServerReflection,
  type ServerReflectionRequest,
  ServerReflectionRequestSchema,
  type ServerReflectionResponse,
  ServerReflectionResponseSchema,
} from "../sdk/src/gen/grpc/reflection/v1/reflection_pb.js";
import { RouterServer } from "../services/router/router-server.ts";
import { StatusServer } from "../services/status/status-server.ts";
import { startEtcd, type TestEtcd } from "./helpers/etcd.ts";

process.env.DSAT_LOG_LEVEL ??= "error";

let etcd: TestEtcd;
let status: StatusServer;
let router: RouterServer;
/** A router that serves StatusService itself (what --serve-status makes). */
let routerWithStatus: RouterServer;
let worker: Worker;

/** The servers under test: each with the dsat services it serves. */
const servers = (): { kind: string; address: string; services: DescService[] }[] => [
  { kind: "router", address: router.address, services: [RouterService, WorkerService] },
  { kind: "worker", address: worker.address, services: [WorkerService] },
  { kind: "status", address: status.address, services: [StatusService, PipelineService] },
  {
    kind: "router serving status",
    address: routerWithStatus.address,
    services: [RouterService, WorkerService, StatusService, PipelineService],
  },
];

/** Every server serves these besides its own. */
const STANDARD = [Health.typeName, ServerReflection.typeName];

test.before(async () => {
  etcd = await startEtcd();
  status = await StatusServer.start({ etcd: etcd.endpoint, leaseTtlSeconds: 2 });
  router = await RouterServer.start({ etcd: etcd.endpoint, leaseTtlSeconds: 2 });
  routerWithStatus = await RouterServer.start({
    etcd: etcd.endpoint,
    leaseTtlSeconds: 2,
    embedStatus: (client, id, lanes) => StatusServer.embed({ etcd: client, id, lanes, leaseTtlSeconds: 2 }),
  });
  worker = await createWorker({ stage: "echo", handler: (input) => input.json(), etcd: etcd.endpoint, leaseTtlSeconds: 2 });
});

test.after.always(async () => {
  await worker?.close();
  await router?.close();
  await routerWithStatus?.close();
  await status?.close();
  await etcd?.close();
});

// ---------------------------------------------------------------------------- a reflection client

const V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/**
 * One ServerReflectionInfo stream, as grpcurl holds it: a request, then its answer, in
 * order, over grpc-js with the generated messages (v1 and v1alpha share them on the wire).
 */
class ReflectionStream {
  readonly #client: grpc.Client;
  readonly #call: grpc.ClientDuplexStream<ServerReflectionRequest, ServerReflectionResponse>;
  readonly #waiting: { resolve(r: ServerReflectionResponse): void; reject(e: unknown): void }[] = [];

  constructor(address: string, path: string = V1) {
    this.#client = new grpc.Client(address, grpc.credentials.createInsecure());
    this.#call = this.#client.makeBidiStreamRequest(
      path,
      (req: ServerReflectionRequest) => Buffer.from(toBinary(ServerReflectionRequestSchema, req)),
      (buf: Buffer) => fromBinary(ServerReflectionResponseSchema, buf),
      new grpc.Metadata(),
      { deadline: Date.now() + 10_000 },
    );
    this.#call.on("data", (res: ServerReflectionResponse) => this.#waiting.shift()?.resolve(res));
    this.#call.on("error", (err) => {
      for (const w of this.#waiting.splice(0)) w.reject(err);
    });
  }

  ask(messageRequest: ServerReflectionRequest["messageRequest"]): Promise<ServerReflectionResponse> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
      this.#call.write(create(ServerReflectionRequestSchema, { host: "localhost", messageRequest }));
    });
  }

  async services(): Promise<string[]> {
    const res = await this.ask({ case: "listServices", value: "*" });
    if (res.messageResponse.case !== "listServicesResponse") throw new Error(`listServices: ${describe(res)}`);
    return res.messageResponse.value.service.map((s) => s.name).sort();
  }

  /** The files of an answer (the one asked for first, then its dependencies), decoded. */
  async files(messageRequest: ServerReflectionRequest["messageRequest"]): Promise<FileDescriptorProto[]> {
    const res = await this.ask(messageRequest);
    if (res.messageResponse.case !== "fileDescriptorResponse") {
      throw new Error(`${messageRequest.case} ${String(messageRequest.value)}: ${describe(res)}`);
    }
    return res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
  }

  close(): void {
    this.#call.end();
    this.#client.close();
  }
}

function describe(res: ServerReflectionResponse): string {
  const r = res.messageResponse;
  return r.case === "errorResponse" ? `error ${r.value.errorCode}: ${r.value.errorMessage}` : `unexpected ${r.case}`;
}

/**
 * Every file a descriptor needs, fetched the way a tool does: each dependency that an
 * answer did not bring is asked for by file name, until none is missing.
 */
async function closure(stream: ReflectionStream, first: FileDescriptorProto[]): Promise<Map<string, FileDescriptorProto>> {
  const files = new Map(first.map((f) => [f.name, f]));
  const missing = () => [...files.values()].flatMap((f) => f.dependency).filter((d) => !files.has(d));
  for (let name = missing()[0]; name !== undefined; name = missing()[0]) {
    const got = await stream.files({ case: "fileByFilename", value: name });
    if (got[0]?.name !== name) throw new Error(`asked for ${name}, got ${got[0]?.name}`);
    for (const f of got) files.set(f.name, f);
  }
  return files;
}

/** The fully-qualified names of every message and enum the files declare (".pkg.Name"). */
function declaredTypes(files: Iterable<FileDescriptorProto>): Set<string> {
  const names = new Set<string>();
  type Msg = FileDescriptorProto["messageType"][number];
  const visit = (prefix: string, m: Msg) => {
    const name = `${prefix}.${m.name}`;
    names.add(name);
    for (const e of m.enumType) names.add(`${name}.${e.name}`);
    for (const n of m.nestedType) visit(name, n);
  };
  for (const f of files) {
    const prefix = f.package ? `.${f.package}` : "";
    for (const m of f.messageType) visit(prefix, m);
    for (const e of f.enumType) names.add(`${prefix}.${e.name}`);
  }
  return names;
}

/** Every type name that fields and methods of the files refer to. */
function referencedTypes(files: Iterable<FileDescriptorProto>): Set<string> {
  const names = new Set<string>();
  type Msg = FileDescriptorProto["messageType"][number];
  const visit = (m: Msg) => {
    for (const f of m.field) if (f.typeName) names.add(f.typeName);
    for (const n of m.nestedType) visit(n);
  };
  for (const f of files) {
    for (const m of f.messageType) visit(m);
    for (const s of f.service) {
      for (const m of s.method) {
        names.add(m.inputType);
        names.add(m.outputType);
      }
    }
  }
  return names;
}

// ---------------------------------------------------------------------------- tests

for (const kind of ["router", "worker", "status", "router serving status"]) {
  test(`the ${kind} lists its services, health and reflection`, async (t) => {
    const s = servers().find((x) => x.kind === kind)!;
    const stream = new ReflectionStream(s.address);
    t.teardown(() => stream.close());
    t.deepEqual(await stream.services(), [...s.services.map((x) => x.typeName), ...STANDARD].sort());
  });

  test(`the ${kind} describes each service it lists, down to every type its methods use`, async (t) => {
    const s = servers().find((x) => x.kind === kind)!;
    const stream = new ReflectionStream(s.address);
    t.teardown(() => stream.close());
    const listed = await stream.services();
    for (const name of listed) {
      const answer = await stream.files({ case: "fileContainingSymbol", value: name });
      const pkg = name.slice(0, name.lastIndexOf("."));
      const short = name.slice(name.lastIndexOf(".") + 1);
      const file = answer[0];
      t.is(file?.package, pkg, `${name}: the first file is the one that declares it`);
      const service = file?.service.find((x) => x.name === short);
      t.truthy(service, `${name} is in ${file?.name}`);
      // Its methods are there with their streaming kinds, as the generated code has them.
      const desc = [...s.services, Health, ServerReflection].find((x) => x.typeName === name);
      if (desc && service) {
        t.deepEqual(
          service.method.map((m) => `${m.name}:${m.clientStreaming}:${m.serverStreaming}`).sort(),
          desc.methods
            .map((m) => {
              const cs = m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming";
              const ss = m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming";
              return `${m.name}:${cs}:${ss}`;
            })
            .sort(),
          `${name}: methods`,
        );
      }
      // Every type a method or a field names resolves in the files reflection hands out.
      const all = await closure(stream, answer);
      const declared = declaredTypes(all.values());
      for (const ref of referencedTypes([file!])) t.true(declared.has(ref), `${name}: ${ref} resolves`);
    }
  });
}

test("dependencies such as google/protobuf/timestamp.proto are served by file name", async (t) => {
  const stream = new ReflectionStream(router.address);
  t.teardown(() => stream.close());
  const [router_] = await stream.files({ case: "fileContainingSymbol", value: "dsat.v1.RouterService" });
  t.is(router_?.name, "dsat/v1/router.proto");
  t.true(router_?.dependency.includes("google/protobuf/timestamp.proto"));
  t.true(router_?.dependency.includes("dsat/v1/task.proto"));
  const [ts] = await stream.files({ case: "fileByFilename", value: "google/protobuf/timestamp.proto" });
  t.is(ts?.package, "google.protobuf");
  t.truthy(ts?.messageType.find((m) => m.name === "Timestamp"));
  const [task] = await stream.files({ case: "fileByFilename", value: "dsat/v1/task.proto" });
  t.truthy(task?.messageType.find((m) => m.name === "Transition"));

  const all = await closure(stream, [router_!]);
  t.true(all.has("google/protobuf/timestamp.proto"));

  // The worker's file imports a well-known type of another name: duration.proto.
  const wstream = new ReflectionStream(worker.address);
  t.teardown(() => wstream.close());
  const wfiles = await closure(wstream, await wstream.files({ case: "fileContainingSymbol", value: "dsat.v1.WorkerService" }));
  t.true(wfiles.has("google/protobuf/duration.proto"));
  t.true(wfiles.has("dsat/v1/member.proto"));
});

test("methods, messages and nested enums are symbols too; unknown ones are NOT_FOUND", async (t) => {
  const stream = new ReflectionStream(status.address);
  t.teardown(() => stream.close());
  for (const symbol of ["dsat.v1.StatusService.Watch", "dsat.v1.GetStateRequest", ".dsat.v1.PipelineService"]) {
    const [f] = await stream.files({ case: "fileContainingSymbol", value: symbol });
    t.is(f?.package, "dsat.v1", symbol);
  }
  const health = new ReflectionStream(worker.address);
  t.teardown(() => health.close());
  const [h] = await health.files({ case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckResponse.ServingStatus" });
  t.is(h?.name, "grpc/health/v1/health.proto");

  const res = await stream.ask({ case: "fileContainingSymbol", value: "dsat.v1.NoSuchThing" });
  t.is(res.messageResponse.case, "errorResponse");
  if (res.messageResponse.case === "errorResponse") t.is(res.messageResponse.value.errorCode, grpc.status.NOT_FOUND);
  const res2 = await stream.ask({ case: "fileByFilename", value: "no/such.proto" });
  t.is(res2.messageResponse.case, "errorResponse");
  // The stream goes on after an error answer.
  t.true((await stream.services()).includes("dsat.v1.StatusService"));
});

test("the v1alpha path answers too (older tools ask there)", async (t) => {
  for (const s of servers()) {
    const stream = new ReflectionStream(s.address, V1ALPHA);
    t.teardown(() => stream.close());
    const listed = await stream.services();
    for (const x of s.services) t.true(listed.includes(x.typeName), `${s.kind} lists ${x.typeName} on v1alpha`);
    const [f] = await stream.files({ case: "fileContainingSymbol", value: s.services[0]!.typeName });
    t.is(f?.package, "dsat.v1");
  }
});

// ---------------------------------------------------------------------------- grpcurl, when installed

const grpcurl = spawnSync("grpcurl", ["-version"], { encoding: "utf8" });
const haveGrpcurl = !grpcurl.error;
const run = promisify(execFile);

// Registered only where grpcurl is installed (the grpc-js client above covers reflection).
if (!haveGrpcurl) console.log("reflection: grpcurl is not on the PATH, so its checks are not registered");
if (haveGrpcurl) test("grpcurl lists and describes every service of every server", async (t) => {
  t.log(`grpcurl ${(grpcurl.stdout || grpcurl.stderr).trim()}`);
  for (const s of servers()) {
    const { stdout: list } = await run("grpcurl", ["-plaintext", s.address, "list"]);
    const names = list.trim().split("\n").sort();
    for (const x of [...s.services.map((d) => d.typeName), ...STANDARD]) t.true(names.includes(x), `${s.kind}: list has ${x}`);
    for (const x of s.services) {
      const { stdout: d } = await run("grpcurl", ["-plaintext", s.address, "describe", x.typeName]);
      t.regex(d, new RegExp(`${x.typeName.replaceAll(".", "\\.")} is a service`));
      for (const m of x.methods) t.true(d.includes(`rpc ${m.name} (`), `${s.kind}: describe ${x.typeName} has ${m.name}`);
    }
    // describe with no symbol describes everything listed: it fails if any one is not resolvable.
    await t.notThrowsAsync(run("grpcurl", ["-plaintext", s.address, "describe"]));
    const { stdout: health } = await run("grpcurl", ["-plaintext", s.address, "grpc.health.v1.Health/Check"]);
    t.regex(health, /"status": "SERVING"/);
  }
});
