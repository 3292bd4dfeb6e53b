import type * as grpc from "@grpc/grpc-js";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../gen/grpc/health/v1/health_pb.js";
import { Code, dsatError } from "../errors.ts";
import { addService } from "./add-service.ts";

export { ServingStatus };

/**
 * The standard grpc.health.v1 service. The overall status has the service name "";
 * each dsat service is listed under its full name. Watchers get every change.
 */
export class HealthService {
  readonly #statuses = new Map<string, ServingStatus>();
  readonly #watchers = new Map<string, Set<(s: ServingStatus) => void>>();
  /** Ends each open Watch call. */
  readonly #ends = new Set<() => void>();

  constructor(initial: Record<string, ServingStatus> = { "": ServingStatus.NOT_SERVING }) {
    for (const [k, v] of Object.entries(initial)) this.#statuses.set(k, v);
  }

  /** Sets the status of one service ("" for the server as a whole). */
  setStatus(service: string, status: ServingStatus): void {
    if (this.#statuses.get(service) === status) return;
    this.#statuses.set(service, status);
    for (const w of this.#watchers.get(service) ?? []) w(status);
  }

  /** Sets every known service, and the server as a whole, to one status. */
  setAll(status: ServingStatus): void {
    for (const k of [...this.#statuses.keys()]) this.setStatus(k, status);
  }

  getStatus(service: string): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  /**
   * Ends every open Watch call (with OK, after the last status it sent), so that a graceful
   * shutdown does not wait out its grace for streams that never end by themselves.
   */
  close(): void {
    for (const end of [...this.#ends]) end();
  }

  /** Serves grpc.health.v1.Health on a grpc-js server. */
  addToServer(server: grpc.Server): void {
    addService(server, Health, {
      check: async (req) => {
        const status = this.#statuses.get(req.service);
        if (status === undefined) {
          throw dsatError(Code.NotFound, `unknown service "${req.service}"`);
        }
        return { status };
      },
      list: async () => {
        const statuses: Record<string, { status: ServingStatus }> = {};
        for (const [k, v] of this.#statuses) statuses[k] = { status: v };
        return { statuses };
      },
      watch: (req, call) =>
        new Promise<void>((resolve) => {
          const send = (status: ServingStatus) => call.write({ status });
          send(this.#statuses.get(req.service) ?? ServingStatus.SERVICE_UNKNOWN);
          let set = this.#watchers.get(req.service);
          if (!set) this.#watchers.set(req.service, (set = new Set()));
          set.add(send);
          const end = () => {
            set.delete(send);
            this.#ends.delete(end);
            resolve();
          };
          this.#ends.add(end);
          call.on("cancelled", end);
        }),
    });
  }
}
