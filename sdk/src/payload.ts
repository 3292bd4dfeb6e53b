const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The bytes of a task's payload or output, with ways to read them. */
export class Payload {
  readonly bytes: Uint8Array;

  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
  }

  /** The bytes as UTF-8 text. */
  text(): string {
    return decoder.decode(this.bytes);
  }

  /** The bytes as JSON; undefined for an empty payload. Throws a SyntaxError on bad JSON. */
  json<T = unknown>(): T {
    if (this.bytes.length === 0) return undefined as T;
    return JSON.parse(this.text()) as T;
  }
}

/**
 * Encodes a value as payload bytes: a Uint8Array is sent as it is, undefined as no bytes,
 * anything else as JSON.
 */
export function encodePayload(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (value === undefined) return new Uint8Array(0);
  return encoder.encode(JSON.stringify(value));
}
