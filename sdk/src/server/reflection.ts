import { create, type DescFile, type DescService, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import {
  ServerReflection,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
  ServerReflectionResponseSchema,
} from "../gen/grpc/reflection/v1/reflection_pb.js";
import { serviceDefinition } from "./add-service.ts";

/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha, which share their messages),
 * answered from the descriptors protobuf-es generated, so that grpcurl and other tools
 * can list, describe and call every service without the .proto files.
 */
export class ReflectionService {
  readonly #services: string[];
  readonly #files = new Map<string, DescFile>();
  readonly #symbols = new Map<string, DescFile>();

  constructor(services: readonly DescService[]) {
    this.#services = services.map((s) => s.typeName).sort();
    for (const s of services) this.#addFile(s.file);
  }

  #addFile(file: DescFile): void {
    if (this.#files.has(file.proto.name)) return;
    this.#files.set(file.proto.name, file);
    for (const s of file.services) {
      this.#symbols.set(s.typeName, file);
      for (const m of s.methods) this.#symbols.set(`${s.typeName}.${m.name}`, file);
    }
    for (const m of file.messages) this.#addMessage(m, file);
    for (const e of file.enums) this.#symbols.set(e.typeName, file);
    for (const e of file.extensions) this.#symbols.set(e.typeName, file);
    for (const d of file.dependencies) this.#addFile(d);
  }

  #addMessage(m: DescFile["messages"][number], file: DescFile): void {
    this.#symbols.set(m.typeName, file);
    for (const n of m.nestedMessages) this.#addMessage(n, file);
    for (const e of m.nestedEnums) this.#symbols.set(e.typeName, file);
  }

  /** The file and its transitive dependencies, serialized, the file first. */
  #fileWithDeps(file: DescFile): Uint8Array[] {
    const out: Uint8Array[] = [];
    const seen = new Set<string>();
    const visit = (f: DescFile) => {
      if (seen.has(f.proto.name)) return;
      seen.add(f.proto.name);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
      for (const d of f.dependencies) visit(d);
    };
    visit(file);
    return out;
  }

  /** Answers one reflection request. */
  answer(req: ServerReflectionRequest): ServerReflectionResponse {
    type Init = MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"];
    const error = (code: number, message: string): Init => ({
      case: "errorResponse",
      value: { errorCode: code, errorMessage: message },
    });
    const files = (f: DescFile | undefined, what: string): Init =>
      f
        ? { case: "fileDescriptorResponse", value: { fileDescriptorProto: this.#fileWithDeps(f) } }
        : error(grpc.status.NOT_FOUND, `${what} not found`);
    const mr = req.messageRequest;
    let messageResponse: Init;
    switch (mr.case) {
      case "listServices":
        messageResponse = {
          case: "listServicesResponse",
          value: { service: this.#services.map((name) => ({ name })) },
        };
        break;
      case "fileByFilename":
        messageResponse = files(this.#files.get(mr.value), `file ${mr.value}`);
        break;
      case "fileContainingSymbol":
        messageResponse = files(this.#symbols.get(mr.value.replace(/^\./, "")), `symbol ${mr.value}`);
        break;
      case "fileContainingExtension":
        messageResponse = error(
          grpc.status.NOT_FOUND,
          `extension ${mr.value.containingType}(${mr.value.extensionNumber}) not found`,
        );
        break;
      case "allExtensionNumbersOfType":
        messageResponse = { case: "allExtensionNumbersResponse", value: { baseTypeName: mr.value, extensionNumber: [] } };
        break;
      default:
        messageResponse = error(grpc.status.UNIMPLEMENTED, "unknown reflection request");
    }
    return create(ServerReflectionResponseSchema, { validHost: req.host, originalRequest: req, messageResponse });
  }

  /** Serves grpc.reflection.v1.ServerReflection and its v1alpha twin on a grpc-js server. */
  addToServer(server: grpc.Server): void {
    const handler = (call: grpc.ServerDuplexStream<ServerReflectionRequest, ServerReflectionResponse>) => {
      call.on("data", (req: ServerReflectionRequest) => call.write(this.answer(req)));
      call.on("end", () => call.end());
      call.on("error", () => {});
    };
    const v1 = serviceDefinition(ServerReflection);
    server.addService(v1, { serverReflectionInfo: handler });
    const alpha: grpc.ServiceDefinition = Object.fromEntries(
      Object.entries(v1).map(([k, m]) => [
        k,
        { ...m, path: m.path.replace("grpc.reflection.v1.", "grpc.reflection.v1alpha.") },
      ]),
    );
    server.addService(alpha, { serverReflectionInfo: handler });
  }
}
