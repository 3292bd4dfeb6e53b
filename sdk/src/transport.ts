import type { DescService } from "@bufbuild/protobuf";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

/** Largest message a client sends or receives, in bytes (4 MiB payloads plus envelope). */
export const MAX_MESSAGE_BYTES = 4 * 1024 * 1024 + 64 * 1024;

const transports = new Map<string, Transport>();

/**
 * A gRPC (HTTP/2, plaintext) transport to host:port, shared by every client of that
 * address in this process so that they share one connection.
 */
export function transportTo(address: string): Transport {
  let t = transports.get(address);
  if (!t) {
    t = createGrpcTransport({
      baseUrl: `http://${address}`,
      pingIntervalMs: 10_000,
      pingTimeoutMs: 5_000,
      idleConnectionTimeoutMs: 60_000,
      readMaxBytes: MAX_MESSAGE_BYTES,
      writeMaxBytes: MAX_MESSAGE_BYTES,
    });
    transports.set(address, t);
  }
  return t;
}

/** A typed client of a generated service at host:port. */
export function clientTo<T extends DescService>(service: T, address: string): Client<T> {
  return createClient(service, transportTo(address));
}
