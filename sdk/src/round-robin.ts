/**
 * RoundRobin picks the next item of a changing set in turn, skipping items that a
 * predicate rejects (for example workers without free capacity). Items added later
 * join the rotation; removed ones leave it. Picking is O(n) in the worst case and
 * O(1) when the next item in turn is eligible.
 */
export class RoundRobin<T> {
  readonly #items: T[] = [];
  #next = 0;

  /** The items in rotation order. */
  get items(): readonly T[] {
    return this.#items;
  }

  get size(): number {
    return this.#items.length;
  }

  /** Adds an item at the end of the rotation; adding one already present does nothing. */
  add(item: T): void {
    if (!this.#items.includes(item)) this.#items.push(item);
  }

  /** Removes an item; the rotation goes on with the item after it. */
  remove(item: T): boolean {
    const i = this.#items.indexOf(item);
    if (i < 0) return false;
    this.#items.splice(i, 1);
    if (i < this.#next) this.#next--;
    if (this.#next >= this.#items.length) this.#next = 0;
    return true;
  }

  /** The next eligible item in turn, or undefined when none is. */
  pick(eligible: (item: T) => boolean = () => true): T | undefined {
    const n = this.#items.length;
    for (let k = 0; k < n; k++) {
      const i = (this.#next + k) % n;
      const item = this.#items[i] as T;
      if (eligible(item)) {
        this.#next = (i + 1) % n;
        return item;
      }
    }
    return undefined;
  }
}
