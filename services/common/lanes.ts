/**
 * The lane of a task id: FNV-1a (32 bits) of its UTF-16 code units, modulo the lane count.
 * Routers (StatusReporter) and StatusService (TaskStore) spread tasks over lanes with it:
 * a task's items always travel in one lane, one batch at a time, so they stay in order
 * while the lanes run side by side.
 */
export function laneOf(taskId: string, lanes: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < taskId.length; i++) {
    h ^= taskId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % lanes;
}
