/**
 * The packets in flight to one peer, by packet number. Numbers are handed out in ascending order and
 * each is added once, so the queue is a ring indexed by number: adding, finding and deleting cost an
 * array access, where a Map cost a hash insert and delete per packet and a rehash (with fresh memory)
 * whenever its deleted entries piled up — a few per cent of a mirroring primary's CPU.
 *
 * Walk it in ascending order with `for (let n = q.low; n < q.high; n++) { const v = q.get(n); … }`;
 * deleting during the walk is allowed. The span [low, high) also covers numbers that were never
 * added (control packets) or were deleted above the oldest one still in flight.
 */
export class InflightQueue<T> {
  private slots: Array<T | undefined>;
  private mask: number;
  /** Lowest number that may still be present (every lower one is gone), and its slot. */
  private base = 0;
  private baseSlot = 0;
  /** One past the highest number added. */
  private top = 0;
  private count = 0;

  constructor(capacity = 1024) {
    let c = 16;
    while (c < capacity) c *= 2;
    this.slots = new Array<T | undefined>(c).fill(undefined);
    this.mask = c - 1;
  }

  get size(): number { return this.count; }
  get low(): number { return this.base; }
  get high(): number { return this.top; }

  /** Adds `value` under `n`, which must be higher than every number added before. */
  add(n: number, value: T): void {
    if (n < this.top) throw new RangeError(`in-flight packet number ${n} is not above ${this.top - 1}`);
    if (this.count === 0) { this.base = n; }
    if (n - this.base >= this.slots.length) this.grow(n - this.base + 1);
    this.slots[(this.baseSlot + (n - this.base)) & this.mask] = value;
    this.count++;
    this.top = n + 1;
  }

  get(n: number): T | undefined {
    if (n < this.base || n >= this.top) return undefined;
    return this.slots[(this.baseSlot + (n - this.base)) & this.mask];
  }

  /** The entry with the lowest number, if any. */
  first(): T | undefined {
    return this.count === 0 ? undefined : this.slots[this.baseSlot];
  }

  delete(n: number): boolean {
    if (n < this.base || n >= this.top) return false;
    const i = (this.baseSlot + (n - this.base)) & this.mask;
    if (this.slots[i] === undefined) return false;
    this.slots[i] = undefined;
    this.count--;
    if (n === this.base) this.advance();
    return true;
  }

  clear(): void {
    this.slots.fill(undefined);
    this.count = 0;
    this.base = this.top;
    this.baseSlot = 0;
  }

  /** Moves the base past deleted numbers, up to the next entry (or to top when empty). */
  private advance(): void {
    if (this.count === 0) { this.base = this.top; this.baseSlot = 0; return; }
    while (this.slots[this.baseSlot] === undefined) {
      this.base++;
      this.baseSlot = (this.baseSlot + 1) & this.mask;
    }
  }

  /** Re-lays the span in a ring that holds at least `need` numbers, base at slot 0. */
  private grow(need: number): void {
    let c = this.slots.length * 2;
    while (c < need) c *= 2;
    const next = new Array<T | undefined>(c).fill(undefined);
    const span = this.top - this.base;
    for (let k = 0; k < span; k++) next[k] = this.slots[(this.baseSlot + k) & this.mask];
    this.slots = next;
    this.mask = c - 1;
    this.baseSlot = 0;
  }
}
