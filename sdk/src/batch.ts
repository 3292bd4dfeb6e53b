/** Bytes of payload that items may share one message with, at most (well under gRPC's 4 MiB). */
export const MAX_BATCH_BYTES = 1024 * 1024;

/**
 * Splits items, in order, into batches whose summed size stays within `maxBytes`, and of at
 * most `maxItems` items; an item larger than `maxBytes` goes alone. Used wherever many items
 * share one message or one etcd transaction, so that none passes its limit.
 */
export function splitBySize<T>(
  items: readonly T[],
  sizeOf: (item: T) => number,
  maxBytes = MAX_BATCH_BYTES,
  maxItems = Number.POSITIVE_INFINITY,
): T[][] {
  const out: T[][] = [];
  let batch: T[] = [];
  let bytes = 0;
  for (const item of items) {
    const size = sizeOf(item);
    if (batch.length > 0 && (batch.length >= maxItems || bytes + size > maxBytes)) {
      out.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(item);
    bytes += size;
  }
  if (batch.length > 0) out.push(batch);
  return out;
}
