/**
 * The receiving side of the peer's data requests (nbdkit's protocol layer, for the GMD's own
 * protocol): mirrored and resync writes, write batches, resync reads, flushes and zeros from the
 * peer, each validated in full before it touches the volume and counted as I/O that stop() waits for.
 */

import { GeormError } from '../../util/errors.js';
import { getPooledBuffer, releaseBuffer } from '../../../nbd/protocol/buffer-pool.js';
import type { NetMessage } from '../ports.js';
import {
  FLAG_FUA, FLAG_NO_HOLE, FLAG_TRIM, HEADER_BYTES, KIND_RESYNC, SVC_FLUSH, SVC_READ, SVC_WRITE, SVC_WRITEV, SVC_ZERO,
  WRITEV_FIRST_ENTRY, checkWriteBatch, decodeHeader, entryData, headerFlags, headerLength, headerOffset, nextEntry,
} from '../protocol.js';
import type { DeviceContext } from './context.js';

const EMPTY = Buffer.alloc(0);

export class PeerReceiver {
  constructor(private readonly ctx: DeviceContext) {}

  /** Registers the data services with GeoMessage. */
  register(): void {
    const net = this.ctx.net;
    net.handle(SVC_WRITE, (m) => this.onWrite(m));
    // Write batches are received into pooled memory, given back once written (onWriteV keeps nothing).
    net.handle(SVC_WRITEV, (m) => this.onWriteV(m), { payloads: { take: getPooledBuffer, give: releaseBuffer } });
    net.handle(SVC_READ, (m) => this.onRead(m));
    net.handle(SVC_FLUSH, () => this.onFlush());
    net.handle(SVC_ZERO, (m) => this.onZero(m));
  }

  /**
   * Why a write or zero from `peer` may not change our volume now, or null when it may. Refused once
   * stop() has begun, too: stop waits only for what it admitted. The peer takes the error reply (or,
   * once we are gone, the missing one) as a failed remote write and marks the regions stale.
   */
  private refusal(peer: string): GeormError | null {
    const ctx = this.ctx;
    if (!ctx.res || ctx.state !== 'AVAILABLE' || ctx.stopping) {
      return new GeormError('GMD_ERR_NOT_AVAILABLE', `${ctx.name} on ${ctx.machine} is ${ctx.state === 'AVAILABLE' ? 'stopping' : ctx.state}`);
    }
    // A write from a peer we are not mirroring with (e.g. it was dropped): refuse so it marks stale.
    if (!ctx.mirrorsWith(peer)) return new GeormError('GMD_ERR_NOT_AVAILABLE', `${peer} is not the active peer of ${ctx.name}`);
    return null;
  }

  /**
   * Runs one validated peer request on the volume as I/O stop() waits for: `apply` starts it
   * under the range lock (taken now, in handler-call order: ordered messages keep their order) and
   * calls back once; the lock is released and the count ended before the reply settles.
   */
  private apply(offset: number, end: number, apply: (done: (e: Error | null) => void) => void): Promise<Buffer> {
    const ctx = this.ctx;
    ctx.beginPeerIo();
    return new Promise<Buffer>((resolve, reject) => {
      ctx.lock.acquire(offset, end, () => apply((e) => {
        ctx.lock.release(offset, end);
        ctx.done();
        if (e) reject(e); else resolve(EMPTY);
      }));
    });
  }

  /** A peer's request on our volume, counted as I/O stop() waits for until it has settled. */
  private async counted<T>(op: () => Promise<T>): Promise<T> {
    this.ctx.beginPeerIo();
    try { return await op(); } finally { this.ctx.done(); }
  }

  /** Mirror and resync writes from the peer; overlapping ones apply in arrival (= send) order. */
  private onWrite(m: NetMessage): Promise<Buffer> {
    const refused = this.refusal(m.peer);
    if (refused) return Promise.reject(refused);
    const ctx = this.ctx;
    const h = decodeHeader(m.payload, ctx.devSize);
    if (!h || m.payload.length - HEADER_BYTES !== h.length) return Promise.reject(new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed write'));
    const local = ctx.res!.local;
    const data = m.payload.subarray(HEADER_BYTES);
    return this.apply(h.offset, h.offset + h.length, (done) => {
      local.write(h.offset, data, { fua: (h.flags & FLAG_FUA) !== 0 }).then(() => {
        if (h.kind === KIND_RESYNC) ctx.stats.resyncBytesReceived += h.length;
        else { ctx.stats.incomingWrites++; ctx.stats.incomingWriteBytes += h.length; }
        done(null);
      }, (e: unknown) => done(e as Error));
    });
  }

  /** A batch of mirrored writes: all validated first (bad input changes no data), then applied in order. */
  private onWriteV(m: NetMessage): Promise<Buffer> {
    const refused = this.refusal(m.peer);
    if (refused) return Promise.reject(refused);
    const ctx = this.ctx;
    const p = m.payload;
    const n = checkWriteBatch(p, ctx.devSize);
    if (n < 0) return Promise.reject(new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed write batch'));
    if (n === 0) return Promise.resolve(EMPTY);
    const local = ctx.res!.local;
    const stats = ctx.stats;
    // The batch counts as one unit of I/O for stop(), ended once its last write has settled.
    ctx.beginPeerIo();
    return new Promise<Buffer>((resolve, reject) => {
      let left = n;
      let failed: Error | null = null;
      // One reply for the whole batch once every write in it is done; data is written straight from
      // the received message (subarray views, no copy).
      const one = (e: Error | null): void => {
        if (e && !failed) failed = e;
        if (--left > 0) return;
        ctx.done();
        if (failed) reject(failed); else resolve(EMPTY);
      };
      let at = WRITEV_FIRST_ENTRY;
      for (let i = 0; i < n; i++) {
        const length = headerLength(p, at);
        const offset = headerOffset(p, at);
        const fua = (headerFlags(p, at) & FLAG_FUA) !== 0;
        const data = entryData(p, at);
        at = nextEntry(p, at);
        const end = offset + length;
        // Locks are requested now, in batch order: overlapping writes apply in the order sent.
        ctx.lock.acquire(offset, end, () => {
          const after = (e: Error | null): void => {
            ctx.lock.release(offset, end);
            stats.incomingWrites++; stats.incomingWriteBytes += length;
            one(e);
          };
          if (local.writeCb) local.writeCb(offset, data, fua, after);
          else local.write(offset, data, { fua }).then(() => after(null), (e: unknown) => after(e as Error));
        });
      }
    });
  }

  /** A resync pull reading our volume. Served while the volume is open; counted so stop() waits for it. */
  private async onRead(m: NetMessage): Promise<Buffer> {
    const res = this.ctx.configuredRes();
    const h = decodeHeader(m.payload, this.ctx.devSize);
    if (!h) throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed read');
    return this.counted(() => res.local.read(h.offset, h.length));
  }

  /**
   * The peer's flush of our volume (its clean gate and resync clean regions once it succeeded).
   * Without an open volume it fails: a success would let the peer clean regions whose data may
   * still sit in a page cache we can no longer flush.
   */
  private async onFlush(): Promise<Buffer> {
    const res = this.ctx.configuredRes();
    await this.counted(() => res.local.flush());
    return EMPTY;
  }

  private onZero(m: NetMessage): Promise<Buffer> {
    const refused = this.refusal(m.peer);
    if (refused) return Promise.reject(refused);
    const ctx = this.ctx;
    const h = decodeHeader(m.payload, ctx.devSize);
    if (!h) return Promise.reject(new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed zero'));
    const local = ctx.res!.local;
    return this.apply(h.offset, h.offset + h.length, (done) => {
      // A TRIM is a zero here too, holes allowed (TrimZero.trim): this volume reads zeros whatever
      // it can do, as the sender's does. Never a fast zero: fall back to writing zeros.
      const trim = (h.flags & FLAG_TRIM) !== 0;
      local.zero(h.offset, h.length, {
        fua: (h.flags & FLAG_FUA) !== 0, noHole: !trim && (h.flags & FLAG_NO_HOLE) !== 0, fastZero: false, deallocate: trim,
      }).then(() => {
        if (h.kind === KIND_RESYNC) ctx.stats.resyncBytesReceived += h.length;
        done(null);
      }, (e: unknown) => done(e as Error));
    });
  }
}
