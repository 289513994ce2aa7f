/**
 * Byte-range lock that keeps overlapping operations in arrival order.
 *
 * Why: two overlapping writes in flight at once could land in different orders on the local and
 * the remote volume, leaving them different with nothing marked. Resync of a region must also
 * exclude application writes to it. Non-overlapping operations run concurrently.
 *
 * A waiter is granted only when it overlaps neither an active range nor an earlier waiter, so
 * overlapping requests are served strictly FIFO (this is what keeps async write order on the
 * secondary). Callback style: the write path avoids a promise per I/O when there is no conflict.
 */
interface Waiter { start: number; end: number; grant: () => void }

export class RangeLock {
  // Active ranges as flat [start, end) pairs in active[0, n); small (bounded by queue depth), so a
  // linear scan wins. A typed array with a count: shrinking a JS array's length is a V8 runtime call
  // and the next push regrows it, once per write on both sides (seen in profiles).
  private active = new Float64Array(64);
  private n = 0;
  private readonly waiters: Waiter[] = [];

  /** Number of active holders (tests and stats). */
  get held(): number { return this.n / 2; }

  /** Calls `grant` (synchronously when free) once [start, end) is held; release with `release(start, end)`. */
  acquire(start: number, end: number, grant: () => void): void {
    if (!this.conflictsActive(start, end) && !this.conflictsWaiters(start, end, this.waiters.length)) {
      this.hold(start, end);
      grant();
      return;
    }
    this.waiters.push({ start, end, grant });
  }

  /** Promise form for cold paths (resync, admin). */
  lock(start: number, end: number): Promise<void> {
    return new Promise((resolve) => this.acquire(start, end, resolve));
  }

  release(start: number, end: number): void {
    const a = this.active;
    for (let i = 0; i < this.n; i += 2) {
      if (a[i] === start && a[i + 1] === end) {
        this.n -= 2;
        a[i] = a[this.n]!; a[i + 1] = a[this.n + 1]!;
        break;
      }
    }
    if (this.waiters.length === 0) return;
    const granted: Array<() => void> = [];
    for (let i = 0; i < this.waiters.length;) {
      const w = this.waiters[i]!;
      if (!this.conflictsActive(w.start, w.end) && !this.conflictsWaiters(w.start, w.end, i)) {
        this.waiters.splice(i, 1);
        this.hold(w.start, w.end);
        granted.push(w.grant);
      } else i++;
    }
    for (const g of granted) g();
  }

  private hold(start: number, end: number): void {
    if (this.n === this.active.length) {
      const bigger = new Float64Array(this.active.length * 2);
      bigger.set(this.active);
      this.active = bigger;
    }
    this.active[this.n] = start;
    this.active[this.n + 1] = end;
    this.n += 2;
  }

  private conflictsActive(start: number, end: number): boolean {
    const a = this.active;
    for (let i = 0; i < this.n; i += 2) if (start < a[i + 1]! && a[i]! < end) return true;
    return false;
  }

  private conflictsWaiters(start: number, end: number, upTo: number): boolean {
    for (let i = 0; i < upTo; i++) {
      const w = this.waiters[i]!;
      if (start < w.end && w.start < end) return true;
    }
    return false;
  }
}
