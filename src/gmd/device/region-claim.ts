/**
 * What every write-like request (an application write, a zero, a trim) does around its data, in one
 * place: the claim before (range lock, pull from the peer if a resync still has to, durable mark in
 * the state map) and the outcome after (the regions wait for the clean gate when both sides hold
 * the data, else stay marked and a follow-up resync is queued). Exactly one outcome per mark.
 */

import type { CleanGate } from '../clean-gate.js';
import type { MapPort } from '../ports.js';
import { CELL_STALE } from '../../statemap/index.js';
import type { DeviceContext } from './context.js';
import type { PeerMembership } from './membership.js';
import type { GmdResources } from './types.js';

/** A request's claim on its regions. Its callbacks are made once per claim, bound to it. */
export interface RangeClaim {
  res: GmdResources | null;
  /** Bytes [offset, end) and the regions [first, last] they touch. */
  offset: number; end: number; first: number; last: number;
  /** A region was stale already when marked: it stays stale whatever the outcome. */
  keepStale: boolean;
  /** The range lock is held: call RegionClaims.granted. */
  readonly granted: () => void;
  /** The on-demand pull is done: call RegionClaims.mark. */
  readonly pulled: () => void;
  /** The pull failed: the claim fails (lock still held). */
  readonly pullFailed: (e: unknown) => void;
  /** Marked durably (no argument), or marking failed (lock still held). */
  readonly marked: (err?: Error) => void;
}

export class RegionClaims {
  constructor(private readonly ctx: DeviceContext, private readonly gate: CleanGate, private readonly membership: PeerMembership) {}

  /** Starts a claim: its `granted` runs once the range lock is held (at once when free). */
  claim(c: RangeClaim): void {
    this.ctx.lock.acquire(c.offset, c.end, c.granted);
  }

  /** The range lock is held: pull the regions if resync still has to, then mark them. */
  granted(c: RangeClaim): void {
    const range = c.res!.map.regionRange(c.offset, c.end - c.offset);
    c.first = range[0]; c.last = range[1];
    // Checked with the lock held: a region not yet pulled from the peer is pulled before it is
    // overwritten, or the pull would later bring back older data.
    const engine = this.membership.resync;
    if (engine?.pulling) engine.pullOnDemand(c.first, c.last).then(c.pulled, c.pullFailed);
    else this.mark(c);
  }

  /** Notes whether a region was stale already, then durably marks the regions. */
  mark(c: RangeClaim): void {
    const map = c.res!.map;
    c.keepStale = anyStale(map, c.first, c.last);
    if (map.beginWriteCb(c.first, c.last, c.marked)) c.marked();
  }

  /** Promise form for the cold paths (zero, trim): resolves once marked. The caller releases the lock, also on failure. */
  claimRange(res: GmdResources, offset: number, end: number): Promise<RangeClaim> {
    return new Promise((resolve, reject) => {
      const c: RangeClaim = {
        res, offset, end, first: 0, last: 0, keepStale: false,
        granted: () => this.granted(c),
        pulled: () => this.mark(c),
        pullFailed: (e: unknown) => reject(e as Error),
        marked: (err?: Error) => { if (err) reject(err); else resolve(c); },
      };
      this.claim(c);
    });
  }

  /**
   * Records a marked range's outcome: regions both sides hold wait for the clean gate (cleaned once
   * both volumes are flushed); otherwise (the peer lacks the data, or a region was stale already)
   * they stay marked.
   */
  settle(map: MapPort, first: number, last: number, bothHaveIt: boolean, keepStale: boolean): void {
    if (bothHaveIt && !keepStale) this.gate.done(first, last); else this.markLocalOnly(map, first, last);
  }

  /** Only this side holds the data: the regions stay stale, and a resync is queued if the peer is attached. */
  markLocalOnly(map: MapPort, first: number, last: number): void {
    this.ctx.stats.staleMarkings++;
    map.endWrite(first, last, 'local-only');
    this.membership.resyncStaleSoon();
  }
}

function anyStale(map: MapPort, first: number, last: number): boolean {
  for (let r = first; r <= last; r++) if (map.cell(r) === CELL_STALE) return true;
  return false;
}
