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
