import {
  create,
  type DescMessage,
  type DescService,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import type * as grpc from "@grpc/grpc-js";
import { toGrpcStatus } from "../errors.ts";

/** A unary handler: takes the request, returns (the init of) the response. */
export type UnaryHandler<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  call: grpc.ServerUnaryCall<MessageShape<I>, MessageShape<O>>,
) => Promise<MessageInitShape<O>>;

/** A server-streaming handler: writes responses on the call; the call ends when it settles. */
export type ServerStreamingHandler<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  call: grpc.ServerWritableStream<MessageShape<I>, MessageInitShape<O>>,
) => Promise<void>;

/** A bidi-streaming handler: reads and writes on the call; the call ends when it settles. */
export type BidiStreamingHandler<I extends DescMessage, O extends DescMessage> = (
  call: grpc.ServerDuplexStream<MessageShape<I>, MessageInitShape<O>>,
) => Promise<void>;

/** The handlers of a generated service, one per method, typed from the generated code. */
export type ServiceHandlers<S extends GenServiceMethods> = {
  [K in keyof S]: S[K] extends { methodKind: "unary"; input: infer I; output: infer O }
    ? I extends DescMessage
      ? O extends DescMessage
        ? UnaryHandler<I, O>
        : never
      : never
    : S[K] extends { methodKind: "server_streaming"; input: infer I; output: infer O }
      ? I extends DescMessage
        ? O extends DescMessage
          ? ServerStreamingHandler<I, O>
          : never
        : never
      : S[K] extends { methodKind: "bidi_streaming"; input: infer I; output: infer O }
        ? I extends DescMessage
          ? O extends DescMessage
            ? BidiStreamingHandler<I, O>
            : never
          : never
        : never;
};

/**
 * Request decoders that replace fromBinary for some methods (by local name): for a hot
 * method whose decoder is written by hand. Each must make the same message as fromBinary.
 */
export type RequestDecoders = Readonly<Record<string, (bytes: Uint8Array) => unknown>>;

/** The grpc-js service definition of a protobuf-es service, (de)serialized with protobuf-es. */
export function serviceDefinition(service: DescService, decoders: RequestDecoders = {}): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    const input = m.input;
    const output = m.output;
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
      responseStream: m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming",
      requestSerialize: (msg: unknown) =>
        Buffer.from(toBinary(input, create(input, msg as MessageInitShape<DescMessage>))),
      requestDeserialize: decoders[m.localName] ?? ((buf: Buffer) => fromBinary(input, buf)),
      responseSerialize: (msg: unknown) =>
        Buffer.from(toBinary(output, create(output, msg as MessageInitShape<DescMessage>))),
      responseDeserialize: (buf: Buffer) => fromBinary(output, buf),
      originalName: m.localName,
    };
  }
  return def;
}

/**
 * Adds a generated service to a grpc-js server. Handlers return promises; a rejection
 * ends the call with the error's gRPC status (see toGrpcStatus).
 */
export function addService<S extends GenServiceMethods>(
  server: grpc.Server,
  service: GenService<S>,
  handlers: ServiceHandlers<S>,
  decoders: RequestDecoders = {},
): void {
  const impl: grpc.UntypedServiceImplementation = {};
  const table = handlers as Record<string, (...args: never[]) => Promise<unknown>>;
  for (const m of service.methods) {
    const h = table[m.localName];
    if (!h) throw new Error(`no handler for ${service.typeName}.${m.name}`);
    const fn = h as (...args: unknown[]) => Promise<unknown>;
    switch (m.methodKind) {
      case "unary":
        impl[m.localName] = (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
          fn(call.request, call).then(
            (res) => cb(null, res),
            (err: unknown) => cb(toGrpcStatus(err)),
          );
        };
        break;
      case "server_streaming":
        impl[m.localName] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
          fn(call.request, call).then(
            () => call.end(),
            (err: unknown) => endWithError(call, err),
          );
        };
        break;
      case "bidi_streaming":
        impl[m.localName] = (call: grpc.ServerDuplexStream<unknown, unknown>) => {
          fn(call).then(
            () => call.end(),
            (err: unknown) => endWithError(call, err),
          );
        };
        break;
      default:
        throw new Error(`${service.typeName}.${m.name}: ${m.methodKind} methods are not supported`);
    }
  }
  server.addService(serviceDefinition(service, decoders), impl);
}

function endWithError(call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>, err: unknown): void {
  if (call.cancelled || call.destroyed) return;
  call.emit("error", toGrpcStatus(err));
}
