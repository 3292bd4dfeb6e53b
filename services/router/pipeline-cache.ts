import { fromJsonString } from "@bufbuild/protobuf";
import type { Etcd3 } from "etcd3";
import { type Keys, type Pipeline, PipelineSchema, PrefixWatch } from "@dsat/sdk";

/**
 * PipelineCache holds the pipelines a router needs: the current version of each (kept up
 * to date by an etcd watch) and any older version a task in flight was submitted with.
 */
export class PipelineCache {
  readonly #etcd: Etcd3;
  readonly #keys: Keys;
  readonly #current = new Map<string, Pipeline>();
  readonly #versions = new Map<string, Pipeline>();
  #watch: PrefixWatch | undefined;

  constructor(etcd: Etcd3, keys: Keys) {
    this.#etcd = etcd;
    this.#keys = keys;
  }

  async start(): Promise<void> {
    const prefix = this.#keys.pipelinesCurrent();
    this.#watch = new PrefixWatch(this.#etcd, prefix, {
      onSnapshot: (kvs) => {
        for (const kv of kvs) this.#put(kv.value);
      },
      onPut: (kv) => this.#put(kv.value),
      onDelete: (kv) => this.#current.delete(kv.key.toString().slice(prefix.length)),
    });
    await this.#watch.start();
  }

  #put(value: Buffer): Pipeline | undefined {
    try {
      const p = fromJsonString(PipelineSchema, value.toString(), { ignoreUnknownFields: true });
      const prev = this.#current.get(p.name);
      if (!prev || prev.version <= p.version) this.#current.set(p.name, p);
      this.#versions.set(`${p.name}@${p.version}`, p);
      return p;
    } catch {
      return undefined;
    }
  }

  /** The current version of a pipeline; asks etcd when the watch has not brought it yet. */
  async current(name: string): Promise<Pipeline | undefined> {
    const p = this.#current.get(name);
    if (p) return p;
    const v = await this.#etcd.get(this.#keys.pipelineCurrent(name)).buffer();
    return v ? this.#put(v) : undefined;
  }

  /** A given version of a pipeline. */
  async version(name: string, version: bigint): Promise<Pipeline | undefined> {
    const p = this.#versions.get(`${name}@${version}`);
    if (p) return p;
    const v = await this.#etcd.get(this.#keys.pipelineVersion(name, version)).buffer();
    return v ? this.#put(v) : undefined;
  }

  async close(): Promise<void> {
    await this.#watch?.close();
  }
}
