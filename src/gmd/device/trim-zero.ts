/**
 * TRIM and WRITE_ZEROES on a GMD: both sides end up reading zeros over the range, claimed and
 * recorded like a write (region-claim.ts), with the peer's part sent as SVC_ZERO (16 bytes, not data).
 */

import type { WriteOptions, ZeroOptions } from '../../../nbd/backend.js';
import { FLAG_FUA, FLAG_NO_HOLE, FLAG_TRIM, KIND_APP, SVC_ZERO, encodeHeader } from '../protocol.js';
import type { DeviceContext } from './context.js';
import { ioError, isFastZeroRefusal } from './errors.js';
import type { PeerMembership } from './membership.js';
import type { RegionClaims } from './region-claim.js';
import type { GmdResources } from './types.js';
import type { WritePath } from './write-path.js';

export class TrimZero {
  constructor(private readonly ctx: DeviceContext, private readonly claims: RegionClaims,
    private readonly membership: PeerMembership, private readonly writes: WritePath) {}

  /**
   * TRIM on a GMD is "zero, holes allowed" on each side (the rule that keeps the volumes identical).
   * NBD lets a trimmed range read back as anything, but a failover must not expose different data,
   * and the two volumes may differ in what they can do (no addon, a filesystem or block device that
   * refuses FALLOC_FL_PUNCH_HOLE, an unaligned range on a block device). So each side punches a hole
   * where it can, else uses ZERO_RANGE, else writes zeros: both then read zeros, whatever each could
   * do. Where this side cannot zero quickly (no fallocate), TRIM is not advertised and a TRIM sent
   * anyway changes nothing on either side (TRIM is advisory). Everything else is a WRITE_ZEROES:
   * marked in the state map first, under the range lock, in write order in async, stale if the peer
   * lacks it (resync then copies zeros, see Resync).
   */
  async trim(offset: number, length: number, opts: WriteOptions): Promise<void> {
    if (!this.ctx.res?.local.flags().canFastZero) { this.ctx.admit(); this.ctx.done(); return; }
    await this.zeroLike(offset, length, FLAG_TRIM | (opts.fua ? FLAG_FUA : 0), false,
      (res) => res.local.zero(offset, length, { fua: opts.fua, noHole: false, fastZero: false, deallocate: true }));
  }

  /**
   * WRITE_ZEROES, mirrored with its NO_HOLE flag (the peer keeps the range allocated too). FAST_ZERO
   * is judged on this side's volume, which is zeroed first: when it refuses (ENOTSUP), nothing was
   * sent, so neither volume changed (the spec: data untouched). The peer is never asked for a fast
   * zero; one that cannot zero quickly writes zeros itself.
   */
  async zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    if (opts.fastZero && !this.ctx.res?.local.flags().canFastZero) throw ioError('ENOTSUP', 'fast zero not supported');
    const flags = (opts.noHole ? FLAG_NO_HOLE : 0) | (opts.fua ? FLAG_FUA : 0);
    await this.zeroLike(offset, length, flags, opts.fastZero, (res) => res.local.zero(offset, length, opts));
  }

  /**
   * Zeroes [offset, offset+length) on both sides: the claim of a write (range lock, pull, durable
   * mark), then the local operation and SVC_ZERO to the peer (together; with `localFirst`, the peer
   * only after the local one succeeded). The lock is held until both sides are done, so later
   * overlapping writes follow on both.
   */
  private async zeroLike(offset: number, length: number, flags: number, localFirst: boolean, op: (res: GmdResources) => Promise<void>): Promise<void> {
    const ctx = this.ctx;
    const res = ctx.admit();
    const end = offset + length;
    try {
      const { first, last, keepStale } = await this.claims.claimRange(res, offset, end);
      let peer = ctx.activePeer;
      if (localFirst) {
        try { await op(res); } catch (e) {
          if (isFastZeroRefusal(e)) {
            // FAST_ZERO refused here and nothing was sent: neither volume changed.
            this.claims.settle(res.map, first, last, peer !== null, keepStale);
          } else {
            this.claims.markLocalOnly(res.map, first, last);
            ctx.event('error', `local volume zero failed: ${(e as Error).message}`);
          }
          throw e;
        }
        peer = ctx.activePeer;
      }
      const remote = peer ? this.remoteZero(res, peer, flags, offset, length) : Promise.resolve(false);
      const local = localFirst ? Promise.resolve() : this.localZero(res, first, last, () => op(res));
      // Both settle before the lock is released: a failed local zero must not let a later write
      // overtake the zero still travelling to the peer.
      const [l, r] = await Promise.allSettled([local, remote]);
      if (l.status === 'rejected') throw l.reason; // localZero left the regions marked
      this.claims.settle(res.map, first, last, r.status === 'fulfilled' && r.value, keepStale);
    } finally {
      // A claim fails only with the lock held (a failed pull or mark): released here either way.
      ctx.lock.release(offset, end);
      ctx.done();
    }
  }

  /** Local zero; on failure the regions are left marked (the peer may hold the zeros) and the error goes back. */
  private async localZero(res: GmdResources, first: number, last: number, op: () => Promise<void>): Promise<void> {
    try { await op(); } catch (e) {
      this.claims.markLocalOnly(res.map, first, last);
      this.ctx.event('error', `local volume write failed: ${(e as Error).message}`);
      throw e;
    }
  }

  /** SVC_ZERO to the peer: true once its volume reads zeros there; false (and the peer dropped) on failure. */
  private remoteZero(res: GmdResources, peer: string, flags: number, offset: number, length: number): Promise<boolean> {
    const ordered = res.attrs.mode === 'async';
    // async: mirrored writes acknowledged before this zero may still sit in the batcher (it sends at
    // the end of the event-loop turn). Send them first, so the zero follows them on the ordered
    // channel and the peer applies both in our order (the secondary stays a prefix of our writes).
    if (ordered) this.writes.flushBatchTo(peer);
    return this.ctx.net.request(peer, SVC_ZERO, encodeHeader(KIND_APP, flags, offset, length), { ordered })
      .then(() => true, (e: unknown) => { this.membership.peerFailed(peer, e); return false; });
  }
}
