/**
 * Per-region write accounting and the activity log of a state map.
 *
 * Writes in flight are counted per region (6 bits in a typed array, a Map only past 62 at once), so
 * the per-write path allocates nothing. The activity log keeps regions that went idle still marked
 * on disk, so a hot region costs one durable marking instead of one per write: a CLOCK ring (an LRU
 * approximation) with a second-chance bit, bounded by the map's capacity, and aged by a timer so a
 * quiet device converges to a truthful map. Regions leaving it are cleaned on disk by the owner
 * (ActivityLogHost.cleanOnDisk); entries that became active or stale are dropped lazily when the hand
 * or the timer meets them.
 */
import { CELL_CLEAN } from './format.js';

/** meta bits: in-flight count (6 bits; all ones = see overflow), in activity log, referenced. */
const INFLIGHT_MASK = 0x3f;
const IN_AL = 0x40;
const REF = 0x80;

/** What the log asks of the map that owns it. */
export interface ActivityLogHost {
  /** The region's marking is still being committed: it must stay marked for now. */
  markingUnsynced(region: number): boolean;
  /** The region leaves the log: zero it in the disk image (written lazily). */
  cleanOnDisk(region: number): void;
}

export class ActivityLog {
  /**
   * Per region: bits 0–5 writes in flight (63 = the count is in `overflow`), bit 6 in the activity
   * log, bit 7 referenced since the clock hand or the idle timer last passed.
   */
  private readonly meta: Uint8Array;
  private readonly overflow = new Map<number, number>();
  /** Regions with at least one write in flight. */
  inflightRegions = 0;
  private ring: Int32Array;
  private ringAge: Uint16Array;
  /** Regions in the log now. */
  length = 0;
  private hand = 0;

  /** `cells`: the map's in-memory cells (read only here); `idleTicks`: ticks before an idle region leaves. */
  constructor(private readonly cells: Uint8Array, private readonly idleTicks: number, private readonly host: ActivityLogHost) {
    this.meta = new Uint8Array(cells.length);
    this.ring = new Int32Array(Math.min(cells.length, 1024));
    this.ringAge = new Uint16Array(this.ring.length);
  }

  /** One more write of region r; returns its writes in flight. */
  incInflight(r: number): number {
    const m = this.meta[r]!;
    const c = m & INFLIGHT_MASK;
    if (c === 0) this.inflightRegions++;
    if (c < INFLIGHT_MASK - 1) { this.meta[r] = m + 1; return c + 1; }
    if (c === INFLIGHT_MASK - 1) { this.meta[r] = m + 1; this.overflow.set(r, INFLIGHT_MASK); return INFLIGHT_MASK; }
    const n = this.overflow.get(r)! + 1;
    this.overflow.set(r, n);
    return n;
  }

  /** One write of region r ended; returns the writes still in flight (0 if none were counted). */
  decInflight(r: number): number {
    const m = this.meta[r]!;
    const c = m & INFLIGHT_MASK;
    if (c === 0) return 0;
    if (c === INFLIGHT_MASK) {
      const n = this.overflow.get(r)! - 1;
      if (n >= INFLIGHT_MASK) { this.overflow.set(r, n); return n; }
      this.overflow.delete(r);
      this.meta[r] = m - 1;
      return n;
    }
    this.meta[r] = m - 1;
    if (c === 1) this.inflightRegions--;
    return c - 1;
  }

  inflightOf(r: number): number {
    const c = this.meta[r]! & INFLIGHT_MASK;
    return c === INFLIGHT_MASK ? this.overflow.get(r)! : c;
  }

  /** Region r went idle, clean in memory and still marked on disk: (re)enter the activity log. */
  add(r: number): void {
    const m = this.meta[r]!;
    if (m & IN_AL) { this.meta[r] = m | REF; return; }
    if (this.length === this.ring.length) {
      const size = Math.min(this.cells.length, this.ring.length * 2);
      const ring = new Int32Array(size); ring.set(this.ring);
      const age = new Uint16Array(size); age.set(this.ringAge);
      this.ring = ring;
      this.ringAge = age;
    }
    this.meta[r] = m | IN_AL | REF;
    this.ring[this.length] = r;
    this.ringAge[this.length] = 0;
    this.length++;
  }

  private removeAt(i: number): void {
    const r = this.ring[i]!;
    this.meta[r] = this.meta[r]! & ~(IN_AL | REF);
    this.length--;
    if (i !== this.length) {
      this.ring[i] = this.ring[this.length]!;
      this.ringAge[i] = this.ringAge[this.length]!;
    }
  }

  /** Empties the log without cleaning anything (every cell is being rewritten). */
  clear(): void {
    for (let i = 0; i < this.length; i++) this.meta[this.ring[i]!] = this.meta[this.ring[i]!]! & ~(IN_AL | REF);
    this.length = 0;
    this.hand = 0;
  }

  /**
   * What to do with ring entry i whose region has no second chance left: 'drop' it (became active or
   * stale: its mark is needed, it re-enters when idle again), 'keep' it (its marking is still being
   * committed), or clean it on disk (lazily) and remove it.
   */
  private retire(i: number): 'dropped' | 'kept' | 'cleaned' {
    const r = this.ring[i]!;
    if (this.cells[r] !== CELL_CLEAN || (this.meta[r]! & INFLIGHT_MASK) !== 0) { this.removeAt(i); return 'dropped'; }
    if (this.host.markingUnsynced(r)) return 'kept';
    this.removeAt(i);
    this.host.cleanOnDisk(r);
    return 'cleaned';
  }

  /** Cleans idle regions on disk (lazily), CLOCK order, until at most `keep` remain. */
  evict(keep: number): void {
    // Two passes clear every second chance; a third finds victims (or only unevictable entries remain).
    for (let budget = 3 * this.length; this.length > keep && budget > 0; budget--) {
      if (this.hand >= this.length) this.hand = 0;
      const r = this.ring[this.hand]!;
      const m = this.meta[r]!;
      if (keep > 0 && (m & REF) && this.cells[r] === CELL_CLEAN) {
        this.meta[r] = m & ~REF;
        this.hand++;
        continue;
      }
      if (this.retire(this.hand) === 'kept') this.hand++;
    }
  }

  /** One timer tick: regions idle for idleTicks leave the log. */
  tick(): void {
    for (let i = 0; i < this.length;) {
      const r = this.ring[i]!;
      const m = this.meta[r]!;
      if (m & REF) {
        this.meta[r] = m & ~REF;
        this.ringAge[i] = 0;
        i++;
        continue;
      }
      const age = this.ringAge[i]! + 1;
      this.ringAge[i] = Math.min(age, 0xffff);
      if (age < this.idleTicks) { i++; continue; }
      // retire() swaps the last entry into i, which is then looked at in turn.
      if (this.retire(i) === 'kept') i++;
    }
  }
}
