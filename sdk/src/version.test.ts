import test from "ava";
import { compareVersions, DSAT_VERSION, formatVersion, isCompatible, parseVersion } from "./version.ts";
import { readFileSync } from "node:fs";

test("parses X.Y.Z and defaults Z to 0", (t) => {
  t.deepEqual(parseVersion("1.2.3"), { major: 1, minor: 2, patch: "3" });
  t.deepEqual(parseVersion("1.2.b"), { major: 1, minor: 2, patch: "b" });
  t.deepEqual(parseVersion("10.0"), { major: 10, minor: 0, patch: "0" });
  t.is(formatVersion(parseVersion("4.5")), "4.5.0");
});

test("refuses malformed versions with a message that says what is expected", (t) => {
  for (const bad of ["", "1", "1.2.3.4", "01.2.3", "1.02.3", "1.2.10", "1.2.A", "1.2.-", "a.b.c", "1..3", " 1.2.3x"]) {
    const e = t.throws(() => parseVersion(bad), { instanceOf: RangeError }, bad);
    t.regex(e?.message ?? "", /expected X\.Y\.Z/);
  }
});

test("orders X and Y as numbers, not as strings", (t) => {
  t.true(compareVersions("1.10.0", "1.9.0") > 0);
  t.true(compareVersions("10.0.0", "9.9.z") > 0);
  t.true(compareVersions("1.2.0", "1.2.0") === 0);
});

test("orders Z the same as a base-36 number and as a string", (t) => {
  const zs = "0123456789abcdefghijklmnopqrstuvwxyz".split("");
  for (let i = 0; i + 1 < zs.length; i++) {
    const a = `1.2.${zs[i]}`;
    const b = `1.2.${zs[i + 1]}`;
    t.true(compareVersions(a, b) < 0, `${a} < ${b}`);
    t.true((zs[i] as string) < (zs[i + 1] as string), "string order agrees");
  }
  const shuffled = ["1.2.z", "1.2.0", "1.2.a", "1.2.9", "1.10.0", "1.3.0"];
  t.deepEqual([...shuffled].sort(compareVersions), ["1.2.0", "1.2.9", "1.2.a", "1.2.z", "1.3.0", "1.10.0"]);
});

test("compatibility is the same X.Y; Z never breaks it", (t) => {
  t.true(isCompatible("1.2.0", "1.2.z"));
  t.true(isCompatible("1.2", "1.2.7"));
  t.false(isCompatible("1.2.0", "1.3.0"));
  t.false(isCompatible("2.2.0", "1.2.0"));
  t.false(isCompatible("garbage", "1.2.0"));
});

test("DSAT_VERSION is a valid version and matches the SDK package", (t) => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
  t.notThrows(() => parseVersion(DSAT_VERSION));
  t.is(pkg.version, DSAT_VERSION);
});
