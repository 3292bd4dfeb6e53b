import { Code } from "@connectrpc/connect";
import test from "ava";
import { GRPCResourceExhastedError, GRPCUnavailableError } from "etcd3";
import { toDsatError } from "./errors.ts";

test("etcd out of space (NOSPACE) is RESOURCE_EXHAUSTED with what to do about it", (t) => {
  const e = toDsatError(new GRPCResourceExhastedError("etcdserver: mvcc: database space exceeded"));
  t.is(e.code, Code.ResourceExhausted);
  t.regex(e.rawMessage, /out of space/);
  t.regex(e.rawMessage, /--task-retention-ms/);
  t.regex(e.rawMessage, /alarm disarm/);
});

test("etcd unreachable is UNAVAILABLE and names the flag to check", (t) => {
  const e = toDsatError(new GRPCUnavailableError("14 UNAVAILABLE: connect ECONNREFUSED 127.0.0.1:2379"));
  t.is(e.code, Code.Unavailable);
  t.regex(e.rawMessage, /--etcd/);
});

test("a request too large for etcd is RESOURCE_EXHAUSTED", (t) => {
  const e = toDsatError(new GRPCResourceExhastedError("etcdserver: request is too large"));
  t.is(e.code, Code.ResourceExhausted);
  t.regex(e.rawMessage, /too large/);
});
