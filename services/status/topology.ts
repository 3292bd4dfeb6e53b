import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  clientTo,
  type Keys,
  type ListWorkersResponse,
  listMembers,
  type Member,
  MemberKind,
  RouterService,
  type StageLoadSchema,
  type TopologyResponseSchema,
  toDsatError,
  type WatchTopologyRequest,
} from "@dsat/sdk";
import type * as grpc from "@grpc/grpc-js";
import type { Etcd3 } from "etcd3";

type TopologyInit = MessageInitShape<typeof TopologyResponseSchema>;
type StageLoadInit = MessageInitShape<typeof StageLoadSchema>;

/** Options of {@link Topology}. */
export interface TopologyOptions {
  /** How long a router may take to answer ListWorkers, in milliseconds. Default 1000. */
  routerTimeoutMs: number;
}

const DEFAULT_TOPOLOGY_OPTIONS: Readonly<TopologyOptions> = Object.freeze({ routerTimeoutMs: 1_000 });

/** WatchTopology: milliseconds between responses when the request says 0. */
const DEFAULT_INTERVAL_MS = 1_000;
/** WatchTopology: the shortest interval, in milliseconds. */
const MIN_INTERVAL_MS = 100;

/**
 * Topology answers StatusService.Topology and WatchTopology: the members in etcd, each
 * router's ListWorkers (asked over gRPC with a short deadline), and the load per stage.
 */
export class Topology {
  readonly #etcd: Etcd3;
  readonly #keys: Keys;
  readonly #opts: TopologyOptions;

  constructor(etcd: Etcd3, keys: Keys, options: Partial<TopologyOptions> = {}) {
    this.#etcd = etcd;
    this.#keys = keys;
    this.#opts = { ...DEFAULT_TOPOLOGY_OPTIONS, ...options };
  }

  /** One snapshot of the mesh. */
  async read(): Promise<TopologyInit> {
    const members = await listMembers(this.#etcd, this.#keys.members());
    const routers = await Promise.all(
      members.filter((m) => m.kind === MemberKind.ROUTER).map((m) => this.#askRouter(m)),
    );
    const answered = routers.flatMap((r) => (r.workers ? [r.workers] : []));
    return { members, routers, stages: summarizeStages(answered) };
  }

  /** Streams a snapshot every interval_ms until the call is cancelled. */
  async watch(req: WatchTopologyRequest, call: grpc.ServerWritableStream<WatchTopologyRequest, TopologyInit>): Promise<void> {
    const interval = req.intervalMs === 0 ? DEFAULT_INTERVAL_MS : Math.max(MIN_INTERVAL_MS, req.intervalMs);
    let ended = false;
    let wake: (() => void) | undefined;
    const end = () => {
      ended = true;
      wake?.();
    };
    call.once("cancelled", end);
    call.once("close", end);
    while (!ended) {
      call.write(await this.read());
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, interval).unref();
      });
    }
  }

  async #askRouter(m: Member): Promise<{ routerId: string; address: string; workers?: ListWorkersResponse; error: string }> {
    try {
      const workers = await clientTo(RouterService, m.address).listWorkers({}, { timeoutMs: this.#opts.routerTimeoutMs });
      return { routerId: m.id, address: m.address, workers, error: "" };
    } catch (err) {
      return { routerId: m.id, address: m.address, error: toDsatError(err).rawMessage };
    }
  }
}

/**
 * Sums the load of each stage over the routers' views. A worker connected to several
 * routers is counted once: its capacity once, its in_flight summed over the routers (each
 * router counts only what it sent). Queued adds up, as each router queues its own tasks.
 */
export function summarizeStages(views: readonly ListWorkersResponse[]): StageLoadInit[] {
  const stages = new Map<string, { workers: Map<string, { inFlight: number; capacity: number; avgRunMs: number }>; queued: number }>();
  const stageOf = (name: string) => {
    let s = stages.get(name);
    if (!s) {
      s = { workers: new Map(), queued: 0 };
      stages.set(name, s);
    }
    return s;
  };
  for (const v of views) {
    for (const w of v.workers) {
      if (!w.connected) continue;
      const s = stageOf(w.stage);
      const seen = s.workers.get(w.id);
      s.workers.set(w.id, {
        inFlight: (seen?.inFlight ?? 0) + w.inFlight,
        capacity: w.capacity,
        avgRunMs: Math.max(seen?.avgRunMs ?? 0, w.avgRunMs),
      });
    }
    for (const [stage, q] of Object.entries(v.queued)) stageOf(stage).queued += q;
  }
  return [...stages]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([stage, s]) => {
      const ws = [...s.workers.values()];
      const reported = ws.filter((w) => w.avgRunMs > 0);
      return {
        stage,
        workers: ws.length,
        inFlight: ws.reduce((n, w) => n + w.inFlight, 0),
        capacity: ws.reduce((n, w) => n + w.capacity, 0),
        queued: s.queued,
        avgRunMs: reported.length === 0 ? 0 : reported.reduce((n, w) => n + w.avgRunMs, 0) / reported.length,
      };
    });
}
