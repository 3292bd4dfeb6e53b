import { Code, ConnectError } from "@connectrpc/connect";

/**
 * dsat has one error type: ConnectError, which carries a gRPC status code, a message a
 * person can act on, and the cause. Everything that comes from a transport or from etcd
 * is translated to it by {@link toDsatError}.
 */
export { Code, ConnectError };

/** Makes an error with a gRPC code, a message and, optionally, its cause. */
export function dsatError(code: Code, message: string, cause?: unknown): ConnectError {
  return new ConnectError(message, code, undefined, undefined, cause);
}

const RETRYABLE: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.Aborted,
  Code.ResourceExhausted,
  Code.DeadlineExceeded,
]);

/** True when calling again may succeed: the code says the failure was transient. */
export function isRetryable(err: unknown): boolean {
  return RETRYABLE.has(toDsatError(err).code);
}

/** The upper-case name of a code, as it appears in TaskError.code ("NOT_FOUND"). */
export function codeName(code: Code): string {
  const name = Code[code] ?? "Unknown";
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** The code for an upper-case name ("NOT_FOUND"), or Unknown. */
export function codeFromName(name: string): Code {
  const camel = name
    .toLowerCase()
    .split("_")
    .map((w) => (w[0]?.toUpperCase() ?? "") + w.slice(1))
    .join("");
  const c = (Code as unknown as Record<string, Code | undefined>)[camel];
  return typeof c === "number" ? c : Code.Unknown;
}

/**
 * Translates anything thrown by a transport, by grpc-js, by etcd3 or by user code into
 * a ConnectError. Errors already of that type pass through unchanged.
 */
export function toDsatError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (isServiceError(err)) {
    return new ConnectError(err.details || err.message, err.code as Code, undefined, undefined, err);
  }
  if (err instanceof Error) {
    const name = err.constructor?.name ?? "";
    if (name.startsWith("Etcd") || name.startsWith("GRPC") || name.endsWith("CircuitError") || name === "ClientClosedError") {
      return etcdError(err);
    }
    if (err.name === "AbortError") {
      return new ConnectError(err.message, Code.Canceled, undefined, undefined, err);
    }
    if (err.name === "TimeoutError") {
      return new ConnectError(err.message, Code.DeadlineExceeded, undefined, undefined, err);
    }
    return new ConnectError(err.message, Code.Unknown, undefined, undefined, err);
  }
  return new ConnectError(String(err), Code.Unknown);
}

/** etcd3's errors by class: the gRPC code each stands for, where a retry cannot cure it. */
const ETCD_CODES: Readonly<Record<string, Code>> = {
  GRPCInvalidArgumentError: Code.InvalidArgument,
  GRPCNotFoundError: Code.NotFound,
  GRPCAlreadyExistsError: Code.AlreadyExists,
  GRPCFailedPreconditionError: Code.FailedPrecondition,
  GRPCNotImplementedError: Code.Unimplemented,
  GRPCOutOfRangeError: Code.OutOfRange,
  GRPCUnauthenticatedError: Code.Unauthenticated,
  GRPCDeadlineExceededError: Code.DeadlineExceeded,
  GRPCAbortedError: Code.Aborted,
  EtcdPermissionDeniedError: Code.PermissionDenied,
  EtcdAuthenticationFailedError: Code.Unauthenticated,
};

function etcdError(err: Error): ConnectError {
  const name = err.constructor.name;
  const known = ETCD_CODES[name];
  if (known !== undefined) return new ConnectError(`etcd: ${err.message}`, known, undefined, undefined, err);
  if (/Unavailable|ConnectFailed|NoAvailableHost/i.test(name) || /ECONNREFUSED|UNAVAILABLE/.test(err.message)) {
    return new ConnectError(
      `etcd cannot be reached (${err.message}); check --etcd / DSAT_ETCD and that etcd is running`,
      Code.Unavailable,
      undefined,
      undefined,
      err,
    );
  }
  if (/Lease/.test(name)) {
    return new ConnectError(`etcd lease lost: ${err.message}`, Code.Unavailable, undefined, undefined, err);
  }
  if (/database space exceeded|NOSPACE/i.test(err.message)) {
    return new ConnectError(
      `etcd is out of space and refuses every write (its NOSPACE alarm: ${err.message}); shorten the status servers' --task-retention-ms or raise etcd's --quota-backend-bytes, compact and defragment etcd, then run etcdctl alarm disarm (docs/operations.md)`,
      Code.ResourceExhausted,
      undefined,
      undefined,
      err,
    );
  }
  if (/ValueTooLarge|RequestTooLarge|too large/i.test(name + err.message)) {
    return new ConnectError(`etcd refused a write as too large: ${err.message}`, Code.ResourceExhausted, undefined, undefined, err);
  }
  return new ConnectError(`etcd: ${err.message}`, Code.Unavailable, undefined, undefined, err);
}

interface ServiceErrorLike {
  code: number;
  details: string;
  message: string;
}

function isServiceError(err: unknown): err is ServiceErrorLike {
  return (
    err instanceof Error &&
    typeof (err as Partial<ServiceErrorLike>).code === "number" &&
    typeof (err as Partial<ServiceErrorLike>).details === "string"
  );
}

/** The shape grpc-js wants to end a call with a status. */
export interface GrpcStatusLike {
  code: number;
  details: string;
}

/** Translates an error into the status a grpc-js handler ends its call with. */
export function toGrpcStatus(err: unknown): GrpcStatusLike & Error {
  const e = toDsatError(err);
  const out = new Error(e.rawMessage) as Error & GrpcStatusLike;
  out.code = e.code;
  out.details = e.rawMessage;
  return out;
}
