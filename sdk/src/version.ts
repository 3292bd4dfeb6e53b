/**
 * dsat versions are X.Y.Z: X and Y are decimal numbers, Z is one character of [a-z0-9]
 * (default "0"). X or Y changes when compatibility breaks; Z never breaks it.
 *
 * Z is a single base-36 digit so that its order is the same whether it is read as a
 * number ("0" < "9" < "a" < "z" as 0 < 9 < 10 < 35) or as a string (ASCII order).
 */

/** The version of the dsat protocol this SDK speaks, announced by every member. */
export const DSAT_VERSION = "0.1.2";

/** A parsed version. */
export interface Version {
  readonly major: number;
  readonly minor: number;
  /** One character of [a-z0-9]. */
  readonly patch: string;
}

const VERSION_RE = /^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(?:\.([a-z0-9]))?$/;

/** Parses "X.Y" or "X.Y.Z"; throws a RangeError that says what is wrong. */
export function parseVersion(text: string): Version {
  const m = VERSION_RE.exec(text.trim());
  if (!m) {
    throw new RangeError(
      `invalid version "${text}": expected X.Y.Z with X and Y numbers without leading zeros ` +
        `and Z a single character of [a-z0-9] (for example "1.4.0" or "1.4.b")`,
    );
  }
  return { major: Number(m[1]), minor: Number(m[2]), patch: m[3] ?? "0" };
}

/** Formats a version as X.Y.Z. */
export function formatVersion(v: Version): string {
  return `${v.major}.${v.minor}.${v.patch}`;
}

/** Orders two versions: negative, zero or positive, like Array.prototype.sort wants. */
export function compareVersions(a: Version | string, b: Version | string): number {
  const x = typeof a === "string" ? parseVersion(a) : a;
  const y = typeof b === "string" ? parseVersion(b) : b;
  if (x.major !== y.major) return x.major - y.major;
  if (x.minor !== y.minor) return x.minor - y.minor;
  return patchValue(x.patch) - patchValue(y.patch);
}

/** True when two versions can talk: the same X and Y. Invalid versions are never compatible. */
export function isCompatible(a: string, b: string): boolean {
  try {
    const x = parseVersion(a);
    const y = parseVersion(b);
    return x.major === y.major && x.minor === y.minor;
  } catch {
    return false;
  }
}

function patchValue(z: string): number {
  return Number.parseInt(z, 36);
}
