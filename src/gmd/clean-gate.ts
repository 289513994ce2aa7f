/**
 * Flush-gated cleaning (DESIGN §4 rules 1 and 2 under power loss, not only kill -9).
 *
 * A write acknowledged by both sides may still sit in either machine's page cache: a power cut of
 * that machine loses it while the other keeps it. If the region were cleaned at once, nothing would
 * record the difference and no resync would ever repair it:
 *  - the secondary loses power: the primary, still running, had cleaned the region; when the
 *    secondary rejoins only regions marked since the drop travel;
 *  - the primary loses power after its map persisted the clean cell (lazy cleaning, then any
 *    durable commit) but before its volume's pages were written back.
 * So a region done on both sides is cleaned only once both volumes have been flushed after its
 * write. Until then the write stays in flight in the state map (marked on disk: a crash of this
 * machine resyncs it), and if the peer drops or restarts first it becomes stale (the peer may have
 * lost it; it travels again on rejoin). An application FLUSH that reached both volumes releases
 * everything completed on both sides before it (in async, a write whose remote copy was still
 * travelling waits for the next flush); otherwise the gate flushes both volumes itself every
 * `intervalMs`, or sooner when `maxRegions` regions wait (65536: 2 GiB of 32 KiB regions, the
 * post-crash resync this adds at most). Resync keeps the same rule on its own
 * (resync.ts: the peer is flushed before copied regions are cleaned).
 */

export interface CleanGateHooks {
  /** The state map's endWrite, once for every reference the gate ends (one per region, first = last). */
  endWrite(first: number, last: number, outcome: 'both' | 'local-only'): void;
  /**
   * Flushes the local volume and the peer's. Resolves true when both are durable, false when the
   * peer could not confirm (it is dropped then); rejects when the local flush fails.
   */
  flushBoth(): Promise<boolean>;
  /** A gate flush failed locally: the regions stay in flight and are tried again. */
  onError(e: unknown): void;
}

/** A point in the gate's history: writes completed before it are covered by a flush started after it. */
export interface GateMark { session: number; gen: number }

export class CleanGate {
  /**
   * Regions holding one state-map reference each (a write's beginWrite not yet ended), with the
   * number of the last write done there. Later writes to a held region end their own reference at
   * once and only move the number up, so the map's in-flight counts stay small and the gate's memory
   * follows the regions written since the last flush, not the writes.
   */
  private held = new Map<number, number>();
  /** Writes numbered so far in this session (marks compare against it). */
  private gen = 0;
  /** Bumped when the peer is lost: a flush started before that proves nothing for the new peer. */
  private session = 0;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private readonly tick = (): void => { this.timer = null; void this.flushNow(); };

  constructor(private readonly h: CleanGateHooks, private readonly intervalMs = 30_000, private readonly maxRegions = 65536) {}

  /** Regions waiting for a flush. */
  get waiting(): number { return this.held.size; }

  /** A write finished on both volumes (in their caches, not yet durable). */
  done(first: number, last: number): void {
    const g = ++this.gen;
    const held = this.held;
    for (let r = first; r <= last; r++) {
      const size = held.size;
      held.set(r, g); // one hash lookup per write (this runs for every mirrored write)
      if (held.size === size) this.h.endWrite(r, r, 'both'); // the region stays held by an earlier reference
    }
    if (held.size >= this.maxRegions) void this.flushNow();
    else if (!this.timer && !this.running) this.timer = setTimeout(this.tick, this.intervalMs).unref();
  }

  /** Taken before an application flush is issued. */
  mark(): GateMark { return { session: this.session, gen: this.gen }; }

  /** Both volumes were flushed after `m` was taken: regions whose last write came before it are clean. */
  covered(m: GateMark): void {
    if (m.session === this.session) this.release(m.gen, 'both');
  }

  /** The peer dropped or restarted: every region not yet covered is stale now. */
  peerLost(): void {
    this.session++;
    this.release(Infinity, 'local-only');
  }

  /** Flushes both volumes and releases what that covers; one at a time (callers share a running one). */
  flushNow(): Promise<void> {
    if (this.running) return this.running;
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    if (this.held.size === 0) return Promise.resolve();
    const m = this.mark();
    this.running = this.h.flushBoth().then(
      (ok) => {
        if (m.session !== this.session) return;
        this.release(m.gen, ok ? 'both' : 'local-only');
      },
      (e: unknown) => this.h.onError(e),
    ).finally(() => {
      this.running = null;
      if (this.held.size > 0 && !this.timer) this.timer = setTimeout(this.tick, this.intervalMs).unref();
    });
    return this.running;
  }

  /** Stop: flush until nothing waits (or the flush fails); what the peer cannot confirm is stale. */
  async drain(): Promise<void> {
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    while (this.running) await this.running;
    if (this.held.size === 0) return;
    const m = this.mark();
    let ok = false;
    try { ok = await this.h.flushBoth(); } catch (e) { this.h.onError(e); }
    if (m.session !== this.session) return;
    // Also when the local flush failed: the map then keeps the regions stale, never clean.
    this.release(m.gen, ok ? 'both' : 'local-only');
  }

  /** Ends the reference of every held region whose last write is numbered ≤ upTo. */
  private release(upTo: number, outcome: 'both' | 'local-only'): void {
    for (const [r, g] of this.held) {
      if (g > upTo) continue;
      this.held.delete(r);
      this.h.endWrite(r, r, outcome);
    }
  }
}
