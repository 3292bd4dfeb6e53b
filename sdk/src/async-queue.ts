/**
 * An unbounded queue read as an async iterable, for feeding a streaming call. Writers
 * that care about memory check `size` (the readers' lag) and hold back themselves.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  readonly #items: T[] = [];
  #waiter: ((r: IteratorResult<T>) => void) | undefined;
  #failWaiter: ((e: unknown) => void) | undefined;
  #ended = false;
  #error: unknown;

  get size(): number {
    return this.#items.length;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Adds an item; false when the queue has ended (the item is dropped). */
  push(item: T): boolean {
    if (this.#ended) return false;
    const w = this.#waiter;
    if (w) {
      this.#waiter = undefined;
      this.#failWaiter = undefined;
      w({ value: item, done: false });
    } else this.#items.push(item);
    return true;
  }

  /** Ends the queue: readers get what is left, then the end. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    const w = this.#waiter;
    this.#waiter = undefined;
    this.#failWaiter = undefined;
    if (w && this.#items.length === 0) w({ value: undefined, done: true });
  }

  /** Ends the queue with an error that the reader throws after what is left. */
  fail(err: unknown): void {
    if (this.#ended) return;
    this.#error = err;
    this.#ended = true;
    const f = this.#failWaiter;
    this.#waiter = undefined;
    this.#failWaiter = undefined;
    if (f) f(err);
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.#items.length > 0) return Promise.resolve({ value: this.#items.shift() as T, done: false });
        if (this.#ended) {
          return this.#error === undefined
            ? Promise.resolve({ value: undefined, done: true })
            : Promise.reject(this.#error);
        }
        return new Promise<IteratorResult<T>>((resolve, reject) => {
          this.#waiter = resolve;
          this.#failWaiter = reject;
        });
      },
      return: () => {
        this.end();
        this.#items.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
      throw: (err?: unknown) => {
        this.fail(err);
        this.#items.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
