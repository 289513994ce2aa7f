/**
 * A GeoMirror device: the NBD Backend that mirrors each write to the local volume and the remote
 * peer, keeping the state map so failures cost a resync, never data (DESIGN §4). This class only
 * builds the parts and forwards to them; each file next to it holds one concern:
 *
 *   context.ts      the state the parts share          lifecycle.ts   state transitions, start, stop
 *   start-rules.ts  start's rules and refusal texts     write-path.ts  the one write path, per mode
 *   region-claim.ts lock, pull, mark; the outcome       hwm.ts         async admission by the HWM
 *   trim-zero.ts    TRIM and WRITE_ZEROES               flush.ts       FLUSH and the clean gate's flush
 *   membership.ts   the active peer, resync triggers    receiver.ts    the peer's data requests
 *   peer-control.ts the peer's control requests         map-admin.ts   dirty, clean, unify, takeover
 *   status.ts       status()                            timeouts.ts    timeouts and sizes, with reasons
 */

import type { Backend, BackendFlags, WriteOptions, ZeroOptions } from '../../../nbd/backend.js';
import { CleanGate } from '../clean-gate.js';
import type { MapPort } from '../ports.js';
import type { GmdState, PeerInfo } from '../protocol.js';
import { DeviceContext } from './context.js';
import { Flusher } from './flush.js';
import { HwmAdmission } from './hwm.js';
import { Lifecycle } from './lifecycle.js';
import { MapAdmin } from './map-admin.js';
import { PeerMembership } from './membership.js';
import { PeerControl } from './peer-control.js';
import { PeerReceiver } from './receiver.js';
import { RegionClaims } from './region-claim.js';
import { deviceStatus } from './status.js';
import { CLEAN_FLUSH_MS, DEFAULT_HELLO_TIMEOUT_MS } from './timeouts.js';
import { TrimZero } from './trim-zero.js';
import type { GmdAttributes, GmdEvent, GmdOptions, GmdStats, GmdStatus } from './types.js';
import { WritePath } from './write-path.js';

/** Largest single request the GMD accepts (NBD_INFO_BLOCK_SIZE maximum). */
const MAX_REQUEST_BYTES = 32 * 1024 * 1024;

export class GeoMirrorDevice implements Backend {
  readonly name: string;
  readonly minor: number;
  readonly machine: string;
  readonly peers: string[];
  readonly configDigest: string;
  /** gmddown given (or Promote Failure Timeout expired) for these peers. */
  readonly downGiven: Set<string>;
  readonly stats: GmdStats;

  private readonly ctx: DeviceContext;
  /** Writes done on both sides wait here for a flush of both volumes before their regions are cleaned. */
  private readonly gate: CleanGate;
  private readonly membership: PeerMembership;
  private readonly writes: WritePath;
  private readonly zeros: TrimZero;
  private readonly flusher: Flusher;
  private readonly lifecycle: Lifecycle;
  private readonly admin: MapAdmin;

  constructor(opts: GmdOptions) {
    const ctx = this.ctx = new DeviceContext(opts);
    this.name = ctx.name; this.minor = ctx.minor; this.machine = ctx.machine; this.peers = ctx.peers;
    this.configDigest = ctx.configDigest; this.downGiven = ctx.downGiven; this.stats = ctx.stats;
    this.gate = new CleanGate({
      endWrite: (first, last, outcome) => ctx.res?.map.endWrite(first, last, outcome),
      flushBoth: () => this.flusher.flushBoth(),
      onError: (e) => ctx.event('error', `volume flush failed (regions stay marked): ${(e as Error)?.message ?? String(e)}`),
    }, CLEAN_FLUSH_MS);
    this.membership = new PeerMembership(ctx, this.gate);
    const hwm = new HwmAdmission(ctx.stats);
    const claims = new RegionClaims(ctx, this.gate, this.membership);
    this.writes = new WritePath(ctx, claims, this.membership, hwm);
    ctx.onMirrorChange = () => this.writes.choose();
    this.zeros = new TrimZero(ctx, claims, this.membership, this.writes);
    this.flusher = new Flusher(ctx, this.gate, this.membership);
    this.lifecycle = new Lifecycle(ctx, this.membership, hwm, this.gate, opts.open, opts.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS);
    this.admin = new MapAdmin(ctx);
    new PeerReceiver(ctx).register();
    new PeerControl(ctx, this.membership, (reason) => this.stop(reason)).register();
  }

  get state(): GmdState { return this.ctx.state; }
  get peer(): string | null { return this.ctx.activePeer; }
  get attrs(): GmdAttributes | null { return this.ctx.res?.attrs ?? null; }
  get map(): MapPort | null { return this.ctx.res?.map ?? null; }

  // State transitions (lifecycle.ts).
  configure(): Promise<void> { return this.lifecycle.configure(); }
  unconfigure(): Promise<void> { return this.lifecycle.unconfigure(); }
  setAttributes(a: Partial<GmdAttributes>): void { this.lifecycle.setAttributes(a); }
  down(peer: string): Promise<{ stoppedRemote: boolean }> { return this.lifecycle.down(peer); }
  start(): Promise<{ message: string; peer: string | null }> { return this.lifecycle.start(); }
  stop(reason = 'stopgmd'): Promise<void> { return this.lifecycle.stop(reason); }

  // Map administration (map-admin.ts).
  dirty(): Promise<void> { return this.admin.dirty(); }
  clean(): Promise<void> { return this.admin.clean(); }
  cells(): Uint8Array { return this.admin.cells(); }
  peerInfo(peer: string): Promise<PeerInfo> { return this.admin.peerInfo(peer); }
  peerFacts(peer: string): Promise<unknown> { return this.admin.peerFacts(peer); }
  peerCells(peer: string): Promise<Uint8Array> { return this.admin.peerCells(peer); }
  unify(master: string, preview: boolean): Promise<{ unified: Uint8Array; cleared: string | null }> { return this.admin.unify(master, preview); }
  takeover(other: MapPort): Promise<void> { return this.admin.takeover(other); }

  // ---------------------------------------------------------------- Backend

  size(): number { return this.ctx.devSize; }

  flags(): BackendFlags {
    // TRIM and FAST_ZERO follow this side's volume: both need fallocate here (see TrimZero.trim).
    const fast = this.ctx.res?.local.flags().canFastZero ?? false;
    return {
      readOnly: false, canFlush: true, canFua: true, canTrim: fast, canZero: true, canFastZero: fast,
      canCache: false, canMultiConn: true, canExtents: false, rotational: false,
    };
  }

  blockSizes(): { minimum: number; preferred: number; maximum: number } {
    return { minimum: 1, preferred: 4096, maximum: MAX_REQUEST_BYTES };
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const ctx = this.ctx;
    const res = ctx.admit();
    try {
      ctx.stats.reads++; ctx.stats.readBytes += length;
      const engine = this.membership.resync;
      if (engine?.pulling) {
        // A region resync has not pulled yet is pulled first: this side's copy is older.
        await ctx.lock.lock(offset, offset + length);
        try {
          await engine.pullOnDemand(...res.map.regionRange(offset, length));
          return await res.local.read(offset, length);
        } finally { ctx.lock.release(offset, offset + length); }
      }
      return await res.local.read(offset, length);
    } finally { ctx.done(); }
  }

  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> { return this.writes.write(offset, data, opts.fua); }

  /** The NBD server's fast path (Backend.writeCb): see write-path.ts. */
  writeCb(offset: number, data: Buffer, fua: boolean, cb: (err: Error | null) => void): void { this.writes.writeCb(offset, data, fua, cb); }

  flush(): Promise<void> { return this.flusher.flush(); }
  trim(offset: number, length: number, opts: WriteOptions): Promise<void> { return this.zeros.trim(offset, length, opts); }
  zero(offset: number, length: number, opts: ZeroOptions): Promise<void> { return this.zeros.zero(offset, length, opts); }
  async close(): Promise<void> { /* the runner owns the lifetime (stop/unconfigure) */ }

  // ---------------------------------------------------------------- peers and reporting

  /** Hooks up GeoMessage events: Promote Failure Timeout and peer restarts. */
  attachNetEvents(): void { this.membership.attachNetEvents(); }

  /** What this GMD tells a peer about itself. */
  info(): PeerInfo { return this.ctx.info(); }

  event(level: GmdEvent['level'], message: string): void { this.ctx.event(level, message); }

  status(): GmdStatus { return deviceStatus(this.ctx, this.membership, this.gate); }
}
