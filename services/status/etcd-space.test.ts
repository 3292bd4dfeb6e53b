import test from "ava";
import { DEFAULT_ETCD_SPACE_OPTIONS, spaceMessage, spaceWarning } from "./etcd-space.ts";

const opts = { ...DEFAULT_ETCD_SPACE_OPTIONS, quotaBytes: 1000 };
const size = (dbBytes: number, inUseBytes = dbBytes) => ({ dbBytes, inUseBytes });

test("the warning starts at 80% of the quota and ends under 70%: no flapping at the mark", (t) => {
  t.false(spaceWarning(false, size(799), opts));
  t.true(spaceWarning(false, size(800), opts));
  t.true(spaceWarning(true, size(750), opts), "still on between 70% and 80%");
  t.true(spaceWarning(true, size(700), opts));
  t.false(spaceWarning(true, size(699), opts));
  t.false(spaceWarning(false, size(750), opts), "not started between 70% and 80%");
});

test("no quota, no warning", (t) => {
  t.false(spaceWarning(false, size(10 ** 12), { ...opts, quotaBytes: 0 }));
});

test("the message says how full, what happens at 100% and what to do, and when defragmenting would help", (t) => {
  const m = spaceMessage(size(1_800_000_000, 1_700_000_000), 2_000_000_000);
  t.regex(m, /90% of its quota: 1800\.0 MB of 2000\.0 MB, 1700\.0 MB in use\./);
  t.regex(m, /NOSPACE/);
  t.regex(m, /--task-retention-ms/);
  t.regex(m, /--quota-backend-bytes/);
  t.notRegex(m, /defragment etcd to give it back/);
  t.regex(spaceMessage(size(1_800_000_000, 600_000_000), 2_000_000_000), /1200\.0 MB of it free inside the file: defragment etcd to give it back/);
});
