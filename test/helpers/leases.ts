import { type connectEtcd, Keys, type MemberKindName as Kind } from "@dsat/sdk";
import { waitFor } from "./wait.ts";

type Etcd = ReturnType<typeof connectEtcd>;

/** The lease a member's record is written under ("0" when there is no record). */
export async function leaseOf(etcd: Etcd, kind: Kind, id: string): Promise<string> {
  const res = await etcd.get(new Keys().member(kind, id)).exec();
  return String(res.kvs[0]?.lease ?? "0");
}

/**
 * Revokes a member's lease behind its back, as a lost lease (etcd restarted, a long pause)
 * would end it: its record goes at once, as if it had died. Resolves once the member has
 * registered again under a new lease, with the old one.
 */
export async function revokeLeaseOf(etcd: Etcd, kind: Kind, id: string): Promise<string> {
  const lease = await leaseOf(etcd, kind, id);
  await etcd.leaseClient.leaseRevoke({ ID: lease });
  await waitFor(async () => {
    const now = await leaseOf(etcd, kind, id);
    return now !== "0" && now !== lease;
  }, { what: `${kind} ${id} to register again under a new lease` });
  return lease;
}
