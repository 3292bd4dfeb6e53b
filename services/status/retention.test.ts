import test from "ava";
import { retentionBucket } from "./retention.ts";

test("buckets are a tenth of the retention (at least a second); a lease lives retention + one bucket", (t) => {
  t.deepEqual(retentionBucket(3_600_000 * 5 + 359_999, 3_600_000), { bucket: 50, ttlSeconds: 3_960 });
  t.deepEqual(retentionBucket(3_600_000 * 5 + 360_000, 3_600_000), { bucket: 51, ttlSeconds: 3_960 });
  // Short retentions: buckets of 1 s, TTL rounded up to whole seconds.
  t.deepEqual(retentionBucket(12_345, 2_000), { bucket: 12, ttlSeconds: 3 });
  t.deepEqual(retentionBucket(12_345, 500), { bucket: 12, ttlSeconds: 2 });
});

test("a record written anywhere in a bucket stays at least the retention, at most a bucket more", (t) => {
  const retentionMs = 600_000;
  const widthMs = 60_000;
  for (const offset of [0, 1, 30_000, 59_999]) {
    const firstUse = 7 * widthMs; // the lease is granted at the bucket's first write
    const written = firstUse + offset;
    const { ttlSeconds } = retentionBucket(written, retentionMs);
    const expires = firstUse + ttlSeconds * 1_000;
    t.true(expires - written >= retentionMs, `offset ${offset}`);
    t.true(expires - written <= retentionMs + widthMs, `offset ${offset}`);
  }
});
