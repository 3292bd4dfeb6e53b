// The raw baseline's wire: grpc-js bidirectional streams of bare bytes (no protobuf), one
// message per task per link. A message is [u16 client stream][u32 task][payload].
import * as grpc from "@grpc/grpc-js";

const identity = (b: Buffer): Buffer => b;

/** Bytes before the payload. */
export const HEADER_BYTES = 6;

function bidi(path: string): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path,
    requestStream: true,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  };
}

/** The router: clients open one Submit stream each, send tasks and read results. */
export const ROUTER_SERVICE = { submit: bidi("/bench.raw.Router/Submit") } satisfies grpc.ServiceDefinition;

/** A worker: the router opens one Process stream to it and sends it tasks; the worker answers each. */
export const WORKER_SERVICE = { process: bidi("/bench.raw.Worker/Process") } satisfies grpc.ServiceDefinition;

/** Binds a grpc-js server on 127.0.0.1, any free port; resolves with host:port. */
export function bind(server: grpc.Server): Promise<string> {
  return new Promise((resolve, reject) => {
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(`127.0.0.1:${port}`),
    );
  });
}

/** Opens one bidirectional stream of bytes on a client. */
export function openStream(client: grpc.Client, method: grpc.MethodDefinition<Buffer, Buffer>): grpc.ClientDuplexStream<Buffer, Buffer> {
  return client.makeBidiStreamRequest(method.path, identity, identity);
}
