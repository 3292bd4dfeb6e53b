/** Bytes of payload that items may share one message with, at most (well under gRPC's 4 MiB). */
export const MAX_BATCH_BYTES = 1024 * 1024;

/**
 * Splits items, in order, into batches whose summed size stays within `maxBytes`, and of at
 * most `maxItems` items (each counted `countOf` times: an item that takes several operations
 * of an etcd transaction); an item larger than either limit goes alone. Used wherever many
 * items share one message or one etcd transaction, so that none passes its limit.
 */
export function splitBySize<T>(
  items: readonly T[],
  sizeOf: (item: T) => number,
  maxBytes = MAX_BATCH_BYTES,
  maxItems = Number.POSITIVE_INFINITY,
  countOf?: (item: T) => number,
): T[][] {
  const out: T[][] = [];
  let batch: T[] = [];
  let bytes = 0;
  let count = 0;
  for (const item of items) {
    const size = sizeOf(item);
    const n = countOf ? countOf(item) : 1;
    if (batch.length > 0 && (count + n > maxItems || bytes + size > maxBytes)) {
      out.push(batch);
      batch = [];
      bytes = 0;
      count = 0;
    }
    batch.push(item);
    bytes += size;
    count += n;
  }
  if (batch.length > 0) out.push(batch);
  return out;
}
