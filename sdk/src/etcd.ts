import { Etcd3 } from "etcd3";

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
    // Streams (watches, lease keep-alives) live on: a deadline would cut them every `timeout`.
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: new Date(Date.now() + timeout) }),
  });
}
