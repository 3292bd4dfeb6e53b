/**
 * `p`, or a rejection with `onTimeout()` once `ms` milliseconds have passed without it
 * settling (`p` itself goes on; its outcome is then ignored).
 */
export function withDeadline<T>(p: Promise<T>, ms: number, onTimeout: () => unknown): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(onTimeout()), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}
