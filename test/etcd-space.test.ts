// StatusService watches etcd's database size against its quota: a warning well before etcd
// refuses writes (NOSPACE), the sizes as metrics, and a line once space is given back.
import test from "ava";
import { AlarmAction, AlarmType } from "etcd3";
import { connectEtcd } from "@dsat/sdk";
import { fillPastQuota } from "./helpers/etcd.ts";
import { startMesh, type TestMesh } from "./helpers/mesh.ts";
import { scrape } from "./helpers/metrics.ts";
import { waitFor } from "./helpers/wait.ts";

const QUOTA = 4 * 1024 * 1024;
let mesh: TestMesh;

test.before(async () => {
  mesh = await startMesh({
    etcdArgs: ["--quota-backend-bytes", String(QUOTA)],
    statusArgs: ["--etcd-quota-bytes", String(QUOTA), "--etcd-space-check-ms", "100"],
    metrics: true,
  });
});

test.after.always(async () => {
  await mesh?.close();
});

test("past 80% of etcd's quota the status server warns with what to do, serves the sizes, and says when space is back", async (t) => {
  const status = mesh.status[0];
  if (!status) throw new Error("no status server");
  const dbBytes = async () => (await scrape(status)).find((m) => m.name === "dsat_status_etcd_db_bytes" && m.labels.kind === "allocated")?.value;
  const quota = (await scrape(status)).find((m) => m.name === "dsat_status_etcd_quota_bytes")?.value;
  t.is(quota, QUOTA);
  await waitFor(async () => ((await dbBytes()) ?? 0) > 0, { what: "a first reading of etcd's size" });
  t.notRegex(status.stderr(), /of its quota/, "no warning while etcd is nearly empty");

  t.true(await fillPastQuota(mesh.etcd.endpoint), "etcd refused a write once past its quota");
  const warning = await waitFor(() => status.stderr().split("\n").find((l) => l.includes("of its quota")), {
    what: "the status server's warning",
  });
  const line = JSON.parse(warning) as { level: string; msg: string; db_bytes: number; quota_bytes: number };
  t.log(line.msg);
  t.is(line.level, "warn");
  t.regex(line.msg, /NOSPACE/);
  t.regex(line.msg, /--task-retention-ms/);
  t.is(line.quota_bytes, QUOTA);
  t.true(line.db_bytes >= 0.8 * QUOTA);
  t.true(((await dbBytes()) ?? 0) >= 0.8 * QUOTA, "the metric shows it too");

  // Give the space back as docs/operations.md says: delete, compact, defragment, disarm.
  const etcd = connectEtcd({ endpoints: mesh.etcd.endpoint });
  try {
    await etcd.delete().prefix("/fill/");
    const { header } = await etcd.kv.range({ key: Buffer.from("/") });
    await etcd.kv.compact({ revision: header.revision, physical: true });
    await etcd.maintenance.defragment({});
    await etcd.maintenance.alarm({ action: AlarmAction.Deactivate, alarm: AlarmType.Nospace, memberID: "0" });
  } finally {
    etcd.close();
  }
  await waitFor(() => status.stderr().includes("back under 70% of its quota"), { what: "the all-clear line" });
  t.true(((await dbBytes()) ?? QUOTA) < 0.7 * QUOTA);
});
