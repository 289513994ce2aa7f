/**
 * The one write path of the GMD: an application write is claimed (region-claim.ts), then issued
 * the way the current write mode says (no peer, async, sync, mwc), and finished with its outcome
 * in the state map. The mode is chosen when the mode or the active peer changes, not per write;
 * each mode names what its write does on each event (issue, local write done, remote write done).
 *
 * A write's state lives in a pooled WriteOp whose callbacks are made once per op, so a write
 * allocates no promise and no closure (at 20k writes/s per-write closures were a steady stream of
 * young garbage); async allocates one closure for the remote copy that outlives the op.
 */

import { WriteBatcher } from '../batcher.js';
import { FLAG_FUA, KIND_APP, type GmdMode } from '../protocol.js';
import type { DeviceContext } from './context.js';
import type { HwmAdmission } from './hwm.js';
import type { PeerMembership } from './membership.js';
import type { RangeClaim, RegionClaims } from './region-claim.js';
import { BATCH_BYTES, WRITE_OP_POOL_MAX } from './timeouts.js';
import type { GmdResources } from './types.js';

const EMPTY = Buffer.alloc(0);

/** One application write; pooled and reused. */
interface WriteOp extends RangeClaim {
  data: Buffer; fua: boolean;
  cb: ((err: Error | null) => void) | null;
  /** The peer and the write mode current when the regions were marked: the op ends with them. */
  peer: string | null; mode: WriteMode | null;
  /** mwc: writes (local, remote) still outstanding; ok: the peer has it; localError: the local write's. */
  left: number; ok: boolean; localError: Error | null;
  readonly localDone: (e: Error | null) => void;
  readonly remoteDone: (err: unknown) => void;
  readonly admitted: () => void;
}

/** How a marked write goes: what it issues, and what each of its completion events does. */
interface WriteMode {
  issue(op: WriteOp): void;
  localDone(op: WriteOp, e: Error | null): void;
  remoteDone(op: WriteOp, err: unknown): void;
}

type LocalWrite = (offset: number, data: Buffer, fua: boolean, cb: (err: Error | null) => void) => void;
const noVolume: LocalWrite = (_offset, _data, _fua, cb) => cb(new Error('no volume'));

export class WritePath {
  private readonly pool: WriteOp[] = [];
  private readonly modes: Record<'local' | GmdMode, WriteMode>;
  /** How the next marked write goes (choose()). */
  private mode: WriteMode;
  /** The volume's callback write, or an adapter for a volume without one (chosen with the mode). */
  private writeLocal: LocalWrite = noVolume;
  /** MWC ops whose local write waits for this turn's batch to be sent (deferLocal). */
  private localQueue: WriteOp[] = [];
  private localScheduled = false;
  private batcher: WriteBatcher | null = null;
  private batcherPeer: string | null = null;

  constructor(private readonly ctx: DeviceContext, private readonly claims: RegionClaims,
    private readonly membership: PeerMembership, private readonly hwm: HwmAdmission) {
    this.modes = this.makeModes();
    this.mode = this.modes.local;
  }

  /** Chooses how writes go from now on; called when the resources or the active peer change. */
  choose(): void {
    const res = this.ctx.res;
    if (!res) { this.mode = this.modes.local; this.writeLocal = noVolume; return; }
    const local = res.local;
    this.writeLocal = local.writeCb ? local.writeCb.bind(local)
      : (offset, data, fua, cb) => { local.write(offset, data, { fua }).then(() => cb(null), (e: unknown) => cb(e as Error)); };
    this.mode = this.ctx.activePeer ? this.modes[res.attrs.mode] : this.modes.local;
  }

  /** Promise form of writeCb. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return new Promise((resolve, reject) => this.writeCb(offset, data, fua, (e) => { if (e) reject(e); else resolve(); }));
  }

  /**
   * One application write; `cb` is called exactly once. The server reuses `data` after `cb`; the
   * batcher copies it as it queues the remote write, so async (which acknowledges before the
   * remote copy is done) needs no copy of its own.
   */
  writeCb(offset: number, data: Buffer, fua: boolean, cb: (err: Error | null) => void): void {
    let res: GmdResources;
    try { res = this.ctx.admit(); } catch (e) { cb(e as Error); return; }
    const op = this.pool.pop() ?? this.newOp();
    op.res = res; op.offset = offset; op.end = offset + data.length; op.data = data; op.fua = fua; op.cb = cb;
    this.claims.claim(op);
  }

  /** Sends the queued mirrored writes to `peer` now (a zero must follow them on the ordered channel). */
  flushBatchTo(peer: string): void {
    if (this.batcher && this.batcherPeer === peer) this.batcher.flush();
  }

  /** The regions are durably marked (or marking failed): the current write mode issues the writes. */
  private marked(op: WriteOp, err?: Error): void {
    if (err) { this.ctx.lock.release(op.offset, op.end); this.ctx.done(); this.end(op, err); return; }
    const stats = this.ctx.stats;
    stats.localWrites++; stats.localWriteBytes += op.data.length;
    op.peer = this.ctx.activePeer;
    op.ok = false; op.localError = null;
    const mode = this.mode;
    op.mode = mode;
    mode.issue(op);
  }

  private makeModes(): Record<'local' | GmdMode, WriteMode> {
    return {
      // No peer: local only, the regions stay marked (stale marking).
      local: {
        issue: (op) => this.writeLocal(op.offset, op.data, op.fua, op.localDone),
        localDone: (op, e) => this.finish(op, e, false),
        remoteDone: () => undefined,
      },
      // Local first; then the remote copy is queued, the lock released and the write acknowledged
      // within the HWM (its outcome is recorded when the remote copy lands, asyncRemote).
      async: {
        issue: (op) => this.writeLocal(op.offset, op.data, op.fua, op.localDone),
        localDone: (op, e) => {
          if (e) { this.finish(op, e, false); return; }
          const res = op.res!;
          // Queued as a copy (the batcher's): the server reuses `data` once we call back.
          this.asyncRemote(res, op.peer!, op.first, op.last, op.offset, op.data, op.fua ? FLAG_FUA : 0, op.keepStale);
          // Release now: later overlapping writes queue behind in send order (secondary = prefix).
          this.ctx.lock.release(op.offset, op.end);
          if (this.hwm.over(res.attrs.hwm)) this.hwm.wait(op.admitted); else this.admitted(op);
        },
        remoteDone: () => undefined,
      },
      // Remote first; the local write is issued only once the peer has the data.
      sync: {
        issue: (op) => this.remote(op),
        localDone: (op, e) => this.finish(op, e, op.ok),
        remoteDone: (op, err) => {
          op.ok = err === null;
          if (!op.ok) this.membership.peerFailed(op.peer!, err);
          this.writeLocal(op.offset, op.data, op.fua, op.localDone);
        },
      },
      // Both at once: remote first, local once the batch has left (the peer's half of the round trip
      // then runs while this side writes, instead of after every local write of the turn).
      mwc: {
        issue: (op) => { op.left = 2; this.remote(op); this.deferLocal(op); },
        localDone: (op, e) => { op.localError = e; if (--op.left === 0) this.finish(op, op.localError, op.ok); },
        remoteDone: (op, err) => {
          op.ok = err === null;
          if (!op.ok) this.membership.peerFailed(op.peer!, err);
          if (--op.left === 0) this.finish(op, op.localError, op.ok);
        },
      },
    };
  }

  /**
   * Runs an op's local write in this turn's check phase, after the write batcher's flush (queued
   * earlier by remote(), and setImmediate callbacks run in order; the batch's packets leave in the
   * microtask right after the flush). The op keeps its range lock and the server's buffer meanwhile.
   */
  private deferLocal(op: WriteOp): void {
    this.localQueue.push(op);
    if (!this.localScheduled) { this.localScheduled = true; setImmediate(this.runLocalQueue); }
  }

  private readonly runLocalQueue = (): void => {
    this.localScheduled = false;
    const q = this.localQueue;
    this.localQueue = [];
    for (const op of q) this.writeLocal(op.offset, op.data, op.fua, op.localDone);
  };

  /** Queues the mirrored copy of an op's write (batched per event-loop turn). */
  private remote(op: WriteOp): void {
    const stats = this.ctx.stats;
    stats.remoteWrites++; stats.remoteWriteBytes += op.data.length;
    this.batcherFor(op.peer!).add(KIND_APP, op.fua ? FLAG_FUA : 0, op.offset, op.data, op.remoteDone);
  }

  /**
   * Queues the remote copy of an async write (in write order, pipelined) and counts its bytes in
   * flight. `data` is copied into the batch before this returns. The one closure per write carries
   * what its landing needs: the op has been answered and reused by then.
   */
  private asyncRemote(res: GmdResources, peer: string, first: number, last: number, offset: number, data: Buffer, flags: number, keepStale: boolean): void {
    const len = data.length;
    this.hwm.sent(len);
    const stats = this.ctx.stats;
    stats.remoteWrites++; stats.remoteWriteBytes += len;
    this.batcherFor(peer).add(KIND_APP, flags, offset, data, (err) => {
      if (err !== null) this.membership.peerFailed(peer, err);
      this.claims.settle(res.map, first, last, err === null, keepStale);
      this.hwm.landed(len, res.attrs.hwm);
    });
  }

  /** Records the outcome in the map, releases the lock and answers the client. */
  private finish(op: WriteOp, err: Error | null, ok: boolean): void {
    const map = op.res!.map;
    if (err) {
      this.claims.markLocalOnly(map, op.first, op.last);
      this.ctx.event('error', `local volume write failed: ${err.message}`);
    } else this.claims.settle(map, op.first, op.last, ok, op.keepStale);
    this.ctx.lock.release(op.offset, op.end);
    this.ctx.done();
    this.end(op, err);
  }

  /** Async: acknowledged once the remote queue is within the HWM (the lock is already released). */
  private admitted(op: WriteOp): void {
    this.ctx.done();
    this.end(op, null);
  }

  /** Returns the op to the pool (dropping its references), then calls the client back. */
  private end(op: WriteOp, err: Error | null): void {
    const cb = op.cb!;
    op.res = null; op.data = EMPTY; op.cb = null; op.peer = null; op.localError = null; op.mode = null;
    if (this.pool.length < WRITE_OP_POOL_MAX) this.pool.push(op);
    cb(err);
  }

  private newOp(): WriteOp {
    const op: WriteOp = {
      res: null, offset: 0, end: 0, first: 0, last: 0, data: EMPTY, fua: false, keepStale: false, cb: null,
      peer: null, mode: null, left: 0, ok: false, localError: null,
      granted: () => this.claims.granted(op),
      pulled: () => this.claims.mark(op),
      pullFailed: (e: unknown) => this.marked(op, e as Error),
      marked: (err?: Error) => this.marked(op, err),
      localDone: (e: Error | null) => op.mode!.localDone(op, e),
      remoteDone: (err: unknown) => op.mode!.remoteDone(op, err),
      admitted: () => this.admitted(op),
    };
    return op;
  }

  /** The batcher of mirrored writes to `peer` (made anew when the peer changes). */
  private batcherFor(peer: string): WriteBatcher {
    if (!this.batcher || this.batcherPeer !== peer) {
      this.batcher = new WriteBatcher(this.ctx.net, peer, this.ctx.res?.attrs.mode === 'async', BATCH_BYTES);
      this.batcherPeer = peer;
    }
    return this.batcher;
  }
}
