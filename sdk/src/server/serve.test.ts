import type { NetworkInterfaceInfo } from "node:os";
import test from "ava";
import { advertisedAddress, bindTarget } from "./serve.ts";

const nic = (address: string, family: "IPv4" | "IPv6", internal: boolean): NetworkInterfaceInfo =>
  ({ address, family, internal, netmask: "", mac: "", cidr: null }) as NetworkInterfaceInfo;
const machine = {
  lo: [nic("127.0.0.1", "IPv4", true), nic("::1", "IPv6", true)],
  eth0: [nic("fe80::1", "IPv6", false), nic("10.1.2.3", "IPv4", false)],
};

test("a named host is advertised as it is, with the port bound", (t) => {
  t.is(advertisedAddress("127.0.0.1", 7001, "", machine), "127.0.0.1:7001");
  t.is(advertisedAddress("10.9.9.9", 7001, "", machine), "10.9.9.9:7001");
  t.is(advertisedAddress("::1", 7001, "", machine), "[::1]:7001");
});

test("a wildcard host advertises the machine's first non-internal IPv4, else 127.0.0.1", (t) => {
  t.is(advertisedAddress("0.0.0.0", 7001, "", machine), "10.1.2.3:7001");
  t.is(advertisedAddress("::", 7001, "", machine), "10.1.2.3:7001");
  t.is(advertisedAddress("0.0.0.0", 7001, "", { lo: machine.lo }), "127.0.0.1:7001");
});

test("--advertise wins: a host gets the port bound, host:port is taken as it is", (t) => {
  t.is(advertisedAddress("0.0.0.0", 7001, "router-1.internal", machine), "router-1.internal:7001");
  t.is(advertisedAddress("0.0.0.0", 7001, "203.0.113.5:30001", machine), "203.0.113.5:30001");
  t.is(advertisedAddress("0.0.0.0", 7001, "2001:db8::5", machine), "[2001:db8::5]:7001");
  t.is(advertisedAddress("0.0.0.0", 7001, "[2001:db8::5]:30001", machine), "[2001:db8::5]:30001");
});

test("what is bound: an empty host is every interface, an IPv6 host goes in brackets", (t) => {
  t.is(bindTarget("127.0.0.1", 0), "127.0.0.1:0");
  t.is(bindTarget("", 7001), "0.0.0.0:7001");
  t.is(bindTarget("  ", 7001), "0.0.0.0:7001");
  t.is(bindTarget("::", 7001), "[::]:7001");
  t.is(bindTarget("::1", 0), "[::1]:0");
  t.is(bindTarget("[::1]", 0), "[::1]:0");
  t.is(bindTarget("localhost", 7002), "localhost:7002");
});
