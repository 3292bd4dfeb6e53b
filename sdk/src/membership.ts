import { EventEmitter } from "node:events";
import { fromJsonString, toJsonString } from "@bufbuild/protobuf";
import type { Etcd3, Lease, Watcher } from "etcd3";
import { type Member, MemberKind, MemberSchema } from "./gen/dsat/v1/member_pb.js";
import { Keys, type MemberKindName } from "./keys.ts";

/** Options of {@link registerMember}. */
export interface RegistrationOptions {
  /** Time to live of the lease, in seconds: a member that dies leaves after it. Default 5. */
  leaseTtlSeconds: number;
  /** Key prefix. Default "/dsat/v1/". */
  prefix: string;
}

const DEFAULT_REGISTRATION_OPTIONS: Readonly<RegistrationOptions> = Object.freeze({
  leaseTtlSeconds: 5,
  prefix: "/dsat/v1/",
});

/** The key-name form of a member kind. */
export function memberKindName(kind: MemberKind): MemberKindName {
  switch (kind) {
    case MemberKind.ROUTER:
      return "router";
    case MemberKind.WORKER:
      return "worker";
    case MemberKind.STATUS:
      return "status";
    default:
      throw new RangeError(`member kind ${kind} has no key`);
  }
}

/**
 * A member's registration: its record under a lease with keep-alive. When the lease is
 * lost (etcd restarted, a long pause), it registers again under a new lease, retrying
 * with backoff until it succeeds or is closed.
 * Events: "registered" (lease id), "lost" (error).
 */
export class Registration extends EventEmitter {
  readonly key: string;
  #lease: Lease | undefined;
  #closed = false;
  #member: Member;
  readonly #etcd: Etcd3;
  readonly #ttl: number;

  constructor(etcd: Etcd3, member: Member, options: Partial<RegistrationOptions> = {}) {
    super();
    const opts = { ...DEFAULT_REGISTRATION_OPTIONS, ...options };
    this.#etcd = etcd;
    this.#member = member;
    this.#ttl = opts.leaseTtlSeconds;
    this.key = new Keys(opts.prefix).member(memberKindName(member.kind), member.id);
  }

  get member(): Member {
    return this.#member;
  }

  /** Registers once; rejects when etcd cannot be reached. */
  async start(): Promise<void> {
    const lease = this.#etcd.lease(this.#ttl, { autoKeepAlive: true });
    this.#lease = lease;
    lease.on("lost", (err) => {
      if (this.#closed || this.#lease !== lease) return;
      this.emit("lost", err);
      void this.#reRegister();
    });
    try {
      await lease.put(this.key).value(toJsonString(MemberSchema, this.#member));
    } catch (err) {
      lease.release();
      throw err;
    }
    this.emit("registered", await lease.grant());
  }

  async #reRegister(): Promise<void> {
    let delay = 100;
    while (!this.#closed) {
      try {
        this.#lease?.release();
        await this.start();
        return;
      } catch {
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 2_000);
      }
    }
  }

  /** Updates the record in place (same lease). */
  async update(member: Member): Promise<void> {
    this.#member = member;
    await this.#lease?.put(this.key).value(toJsonString(MemberSchema, member));
  }

  /** Leaves the mesh at once: revokes the lease, which deletes the record. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const lease = this.#lease;
    this.#lease = undefined;
    if (!lease) return;
    try {
      await lease.revoke();
    } catch {
      lease.release();
    }
  }
}

/** Registers a member under a lease (see {@link Registration}). */
export async function registerMember(
  etcd: Etcd3,
  member: Member,
  options: Partial<RegistrationOptions> = {},
): Promise<Registration> {
  const r = new Registration(etcd, member, options);
  await r.start();
  return r;
}

/** Decodes a member record; undefined when it is not one. */
export function parseMember(value: Buffer | string): Member | undefined {
  try {
    return fromJsonString(MemberSchema, value.toString(), { ignoreUnknownFields: true });
  } catch {
    return undefined;
  }
}

/**
 * MemberWatcher keeps a live map of the members under a prefix: a read of what is there,
 * then an etcd watch from the next revision (never polling).
 * Events: "up" (member, previous?), "down" (member).
 */
export class MemberWatcher extends EventEmitter {
  readonly members = new Map<string, Member>();
  #watcher: Watcher | undefined;
  readonly #etcd: Etcd3;
  readonly #prefix: string;

  constructor(etcd: Etcd3, prefix: string) {
    super();
    this.#etcd = etcd;
    this.#prefix = prefix;
  }

  async start(): Promise<void> {
    const res = await this.#etcd.getAll().prefix(this.#prefix).exec();
    for (const kv of res.kvs) this.#put(kv.key.toString(), kv.value);
    const rev = BigInt(res.header.revision) + 1n;
    this.#watcher = await this.#etcd.watch().prefix(this.#prefix).startRevision(rev.toString()).create();
    this.#watcher.on("put", (kv) => this.#put(kv.key.toString(), kv.value));
    this.#watcher.on("delete", (kv) => this.#delete(kv.key.toString()));
    this.#watcher.on("error", (err) => this.emit("error", err));
    // After a reconnection (etcd restarted, a network cut) read everything again, so that
    // what changed while the watch was away is not missed.
    this.#watcher.on("disconnected", () => {
      this.#stale = true;
    });
    this.#watcher.on("connected", () => {
      if (this.#stale) void this.#resync();
    });
  }

  #stale = false;

  async #resync(): Promise<void> {
    this.#stale = false;
    try {
      const res = await this.#etcd.getAll().prefix(this.#prefix).exec();
      const seen = new Set<string>();
      for (const kv of res.kvs) {
        const key = kv.key.toString();
        seen.add(key);
        const prev = this.members.get(key);
        const next = parseMember(kv.value);
        if (next && (!prev || !equalMembers(prev, next))) this.#put(key, kv.value);
      }
      for (const key of [...this.members.keys()]) if (!seen.has(key)) this.#delete(key);
    } catch (err) {
      this.#stale = true;
      this.emit("error", err);
    }
  }

  #put(key: string, value: Buffer): void {
    const m = parseMember(value);
    if (!m) return;
    const prev = this.members.get(key);
    this.members.set(key, m);
    this.emit("up", m, prev);
  }

  #delete(key: string): void {
    const m = this.members.get(key);
    if (!m) return;
    this.members.delete(key);
    this.emit("down", m);
  }

  async close(): Promise<void> {
    await this.#watcher?.cancel();
  }
}

function equalMembers(a: Member, b: Member): boolean {
  return toJsonString(MemberSchema, a) === toJsonString(MemberSchema, b);
}

/** Lists the members registered now under a prefix. */
export async function listMembers(etcd: Etcd3, prefix: string = new Keys().members()): Promise<Member[]> {
  const res = await etcd.getAll().prefix(prefix).buffers();
  return Object.values(res)
    .map((v) => parseMember(v))
    .filter((m): m is Member => m !== undefined);
}
