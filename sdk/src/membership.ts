import { EventEmitter } from "node:events";
import { fromJsonString, toJsonString } from "@bufbuild/protobuf";
import type { Etcd3, Lease } from "etcd3";
import { type Member, MemberKind, MemberSchema } from "./gen/dsat/v1/member_pb.js";
import { Keys, type MemberKindName } from "./keys.ts";
import { PrefixWatch } from "./prefix-watch.ts";

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
 * then an etcd watch from the next revision (never polling), mended after reconnections
 * and compactions (see PrefixWatch).
 * Events: "up" (member, previous?), "down" (member).
 */
export class MemberWatcher extends EventEmitter {
  readonly members = new Map<string, Member>();
  readonly #watch: PrefixWatch;

  constructor(etcd: Etcd3, prefix: string) {
    super();
    this.#watch = new PrefixWatch(etcd, prefix, {
      onSnapshot: (kvs) => {
        const seen = new Set<string>();
        for (const kv of kvs) {
          const key = kv.key.toString();
          seen.add(key);
          const prev = this.members.get(key);
          const next = parseMember(kv.value);
          if (next && (!prev || !equalMembers(prev, next))) this.#put(key, kv.value);
        }
        for (const key of [...this.members.keys()]) if (!seen.has(key)) this.#delete(key);
      },
      onPut: (kv) => this.#put(kv.key.toString(), kv.value),
      onDelete: (kv) => this.#delete(kv.key.toString()),
    });
  }

  async start(): Promise<void> {
    await this.#watch.start();
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
    await this.#watch.close();
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
