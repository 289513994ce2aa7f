/**
 * Sliding replay window over packet numbers (like IPsec's): accepts each number once, refuses
 * numbers older than `size` behind the highest seen. Packets reordered by less than the window are
 * still accepted.
 */
export class ReplayWindow {
  private highest = 0;
  private readonly bits: Uint32Array;
  private readonly size: number;

  constructor(sizeBits = 8192) {
    this.size = sizeBits;
    this.bits = new Uint32Array(sizeBits >>> 5);
  }

  /** True (and records it) when `n` was not seen and is inside the window. */
  check(n: number): boolean {
    if (n === 0) return false;
    if (n > this.highest) {
      const shift = n - this.highest;
      if (shift >= this.size) this.bits.fill(0);
      else for (let i = this.highest + 1; i < n; i++) this.clear(i);
      this.highest = n;
      this.set(n);
      return true;
    }
    if (this.highest - n >= this.size) return false;
    if (this.get(n)) return false;
    this.set(n);
    return true;
  }

  private idx(n: number): number { return n % this.size; }
  private get(n: number): boolean { const i = this.idx(n); return (this.bits[i >>> 5]! & (1 << (i & 31))) !== 0; }
  private set(n: number): void { const i = this.idx(n); this.bits[i >>> 5]! |= 1 << (i & 31); }
  private clear(n: number): void { const i = this.idx(n); this.bits[i >>> 5]! &= ~(1 << (i & 31)); }
}

/**
 * The packet numbers received from a peer, as at most `max` ranges (newest first): the source of
 * selective acknowledgements. Old ranges fall off; a sender whose packet's ack was lost that way
 * retransmits and the receiver's duplicate suppression absorbs it.
 */
export class ReceivedRanges {
  /** flat [hi0, lo0, hi1, lo1, …], hi0 the highest */
  readonly r: number[] = [];
  constructor(private readonly max = 160) {}

  add(n: number): void {
    const r = this.r;
    if (r.length === 0 || n > r[0]! + 1) {
      r.unshift(n, n);
    } else if (n === r[0]! + 1) {
      r[0] = n;
    } else {
      let i = 0;
      while (i < r.length && n < r[i + 1]!) i += 2;     // skip ranges entirely above n
      if (i < r.length && n <= r[i]!) return;           // already inside range i
      // n is between range i-2 (above) and range i (below), or below everything
      const joinsAbove = i >= 2 && n === r[i - 1]! - 1;
      const joinsBelow = i < r.length && n === r[i]! + 1;
      if (joinsAbove && joinsBelow) { r[i - 1] = r[i + 1]!; r.splice(i, 2); }
      else if (joinsAbove) r[i - 1] = n;
      else if (joinsBelow) r[i] = n;
      else r.splice(i, 0, n, n);
    }
    if (r.length > this.max * 2) r.length = this.max * 2;
  }
}
