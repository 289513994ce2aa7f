/**
 * Async admission by the high water mark (DESIGN §2): counts the bytes of async writes whose remote
 * copy is still travelling; a write that finds them above the HWM is acknowledged only once the
 * remote queue is back at or below it (the GMD behaves as MWC until it has caught up). Also lets
 * stop wait for the remote queue to empty. Accounting only: it sends nothing.
 */

import type { GmdStats } from './types.js';

export class HwmAdmission {
  /** Bytes of async writes sent to the peer and not yet answered. */
  private inflight = 0;
  /** Async writes acknowledged only once in-flight bytes are at or below the HWM again (FIFO). */
  private waiters: Array<() => void> = [];
  /** Above the mark since the last catch-up (counts fallbacks and catch-ups once each). */
  private fallenBack = false;
  private drained: Array<() => void> = [];

  constructor(private readonly stats: GmdStats) {}

  /** An async write's remote copy was queued. */
  sent(len: number): void {
    this.inflight += len;
    this.stats.asyncInflightBytes = this.inflight;
    if (this.inflight > this.stats.asyncInflightMax) this.stats.asyncInflightMax = this.inflight;
  }

  /** Whether a write just queued must wait for admission. */
  over(hwm: number): boolean { return this.inflight > hwm; }

  /** An async write whose remote copy took in-flight bytes over the HWM waits here; `admit` is called once caught up. */
  wait(admit: () => void): void {
    if (!this.fallenBack) { this.fallenBack = true; this.stats.hwmFallbacks++; }
    this.stats.hwmWaits++;
    this.waiters.push(admit);
  }

  /** An async write's remote copy was answered (either way): admit the waiters once below the mark. */
  landed(len: number, hwm: number): void {
    this.inflight -= len;
    this.stats.asyncInflightBytes = this.inflight;
    if (this.waiters.length > 0 && this.inflight <= hwm) {
      // Caught up below the mark: admit every waiting write (their bytes are already counted).
      const ws = this.waiters;
      this.waiters = [];
      for (const w of ws) w();
    }
    if (this.fallenBack && this.waiters.length === 0) { this.fallenBack = false; this.stats.hwmCatchUps++; }
    if (this.inflight === 0) for (const w of this.drained.splice(0)) w();
  }

  /** Resolves once nothing is in flight, or after `timeoutMs` (what is left stays marked in the map). */
  waitDrained(timeoutMs: number): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      this.drained.push(() => { clearTimeout(t); resolve(); });
    });
  }
}
