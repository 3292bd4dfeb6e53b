/**
 * The etcd key layout of dsat (docs/etcd-keys.md). Every key starts with a prefix,
 * "/dsat/v1/" by default, so that several meshes can share one etcd.
 */

/** The default prefix of every dsat key. */
export const DEFAULT_PREFIX = "/dsat/v1/";

/** Key names under one prefix. */
export class Keys {
  readonly prefix: string;

  constructor(prefix: string = DEFAULT_PREFIX) {
    this.prefix = prefix.endsWith("/") ? prefix : `${prefix}/`;
  }

  /** All members: members/<kind>/<id>, kind one of router, worker, status. */
  members(): string {
    return `${this.prefix}members/`;
  }

  membersOf(kind: MemberKindName): string {
    return `${this.prefix}members/${kind}/`;
  }

  member(kind: MemberKindName, id: string): string {
    return `${this.prefix}members/${kind}/${id}`;
  }

  /** Current version of each pipeline: pipelines/current/<name>, protobuf JSON. */
  pipelinesCurrent(): string {
    return `${this.prefix}pipelines/current/`;
  }

  pipelineCurrent(name: string): string {
    return `${this.prefix}pipelines/current/${name}`;
  }

  /** Every version ever applied: pipelines/versions/<name>/<version, 10 digits>. */
  pipelineVersion(name: string, version: bigint | number): string {
    return `${this.prefix}pipelines/versions/${name}/${String(version).padStart(10, "0")}`;
  }

  /** Task states: tasks/<id>, binary dsat.v1.TaskState. */
  tasks(): string {
    return `${this.prefix}tasks/`;
  }

  task(id: string): string {
    return `${this.prefix}tasks/${id}`;
  }

  /**
   * The index of unfinished tasks: open/<router id, URI-encoded>/<task id>, an empty value
   * beside each task record that has not ended, under the router that drives it. Written by
   * StatusService in the transaction that writes the record, so that ClaimTasks reads a dead
   * router's tasks without reading every record.
   */
  openTasks(): string {
    return `${this.prefix}open/`;
  }

  openTasksOf(routerId: string): string {
    return `${this.prefix}open/${encodeURIComponent(routerId)}/`;
  }

  openTask(routerId: string, taskId: string): string {
    return `${this.prefix}open/${encodeURIComponent(routerId)}/${taskId}`;
  }

  /** The router and task of an index key (openTask), or undefined for another key. */
  parseOpenTask(key: string): { routerId: string; taskId: string } | undefined {
    const base = this.openTasks();
    if (!key.startsWith(base)) return undefined;
    const slash = key.indexOf("/", base.length);
    if (slash < 0) return undefined;
    try {
      return { routerId: decodeURIComponent(key.slice(base.length, slash)), taskId: key.slice(slash + 1) };
    } catch {
      return undefined;
    }
  }

  /** Marks the index of unfinished tasks complete (meta/open-index): see services/status/open-index.ts. */
  openIndexMarker(): string {
    return `${this.prefix}meta/open-index`;
  }

  /** Held (under a lease) by the one status server that builds the index of unfinished tasks. */
  openIndexBuildLock(): string {
    return `${this.prefix}meta/open-index-build`;
  }

  /** Cancel requests: cancels/<task id>, written by any router, acted on by the owner. */
  cancels(): string {
    return `${this.prefix}cancels/`;
  }

  cancel(taskId: string): string {
    return `${this.prefix}cancels/${taskId}`;
  }
}

/** The kinds of member, as they appear in keys. */
export type MemberKindName = "router" | "worker" | "status";
