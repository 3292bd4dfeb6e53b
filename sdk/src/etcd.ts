import { circuitBreaker, ConsecutiveBreaker, ExponentialBackoff, handleWhen, type IBackoff } from "cockatiel";
import { Etcd3, GRPCResourceExhastedError, isRecoverableError } from "etcd3";

/** Options of {@link connectEtcd}. */
export interface EtcdOptions {
  /** Comma-separated host:port list or URLs. Default from DSAT_ETCD, else "127.0.0.1:2379". */
  endpoints: string;
  /** Deadline of one etcd call, in milliseconds. Default 5000. */
  callTimeoutMs: number;
}

/** The endpoints named by DSAT_ETCD, else etcd's default client address. */
export function defaultEtcdEndpoints(): string {
  return process.env.DSAT_ETCD || "127.0.0.1:2379";
}

/** Connects to etcd (lazily: the first call dials). */
export function connectEtcd(options: Partial<EtcdOptions> = {}): Etcd3 {
  const endpoints = options.endpoints ?? defaultEtcdEndpoints();
  const hosts = endpoints
    .split(",")
    .map((h) => h.trim())
    .filter(Boolean)
    .map((h) => (h.includes("://") ? h : `http://${h}`));
  const timeout = options.callTimeoutMs ?? 5_000;
  return new Etcd3({
    hosts,
    // Task records carry payloads of up to 4 MiB: a range over several must fit in a reply.
    grpcOptions: { "grpc.max_receive_message_length": 256 * 1024 * 1024 },
    // Streams (watches, lease keep-alives) live on: a deadline would cut them every `timeout`.
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: new Date(Date.now() + timeout) }),
    // etcd3's defaults wait up to 30 s between watch reconnections and keep a failed host
    // out for 5 s: after an etcd restart the mesh would be blind for that long. The breaker
    // counts what says the host is unhealthy, not RESOURCE_EXHAUSTED: an etcd out of space
    // refuses writes but serves reads, and three refused writes must not cut the reads too.
    faultHandling: {
      host: () =>
        circuitBreaker(
          handleWhen((err) => isRecoverableError(err) && !(err instanceof GRPCResourceExhastedError)),
          { halfOpenAfter: 1_000, breaker: new ConsecutiveBreaker(3) },
        ),
      watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2_000 }) as unknown as IBackoff<unknown>,
    },
  });
}
