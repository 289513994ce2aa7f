/**
 * Which peer the GMD mirrors with, and when data must be resynchronised: attaching and dropping the
 * active peer (joins, leaves, failed remote writes, GeoMessage's peer-down and restart events), and
 * starting a resync after a join or when a region turns stale while the peer is attached.
 */

import type { CleanGate } from '../clean-gate.js';
import type { PeerInfo } from '../protocol.js';
import { Resync, type ResyncProgress } from '../resync.js';
import type { DeviceContext } from './context.js';
import { RESYNC_CONTROL_MS } from './timeouts.js';

export class PeerMembership {
  private engine: Resync | null = null;
  private lastResync: ResyncProgress | null = null;
  /** A follow-up resync is queued for this turn (resyncStaleSoon). */
  private restaleQueued = false;

  constructor(private readonly ctx: DeviceContext, private readonly gate: CleanGate) {}

  /** The resync engine of the last resync started (running or not). */
  get resync(): Resync | null { return this.engine; }

  /** The running resync's progress, else the last one's result. */
  resyncProgress(): ResyncProgress | null {
    return this.engine?.running ? this.engine.progress() : this.lastResync;
  }

  /** A request to `peer` failed: stop mirroring to it (its writes are then marked stale). */
  peerFailed(peer: string, e: unknown): void {
    this.ctx.stats.remoteFailures++;
    if (this.ctx.activePeer === peer) this.dropPeer(peer, `remote write failed: ${(e as Error)?.message ?? String(e)}`);
  }

  /** Stop mirroring to `peer`: from now on writes are marked stale. */
  dropPeer(peer: string, why: string): void {
    if (this.ctx.activePeer !== peer) return;
    this.ctx.setActivePeer(null, null);
    // Writes it acknowledged but never flushed may die with its page cache: stale, so they travel again.
    this.gate.peerLost();
    void this.engine?.stop();
    this.ctx.event('warn', `mirroring to ${peer} stopped (${why}); writes are marked stale until it rejoins`);
  }

  attachPeer(peer: string, info: PeerInfo): void {
    const previous = this.ctx.activePeer;
    if (previous && previous !== peer) {
      // A second remote peer joined while one was active: the seed's driver gmddowns the old one.
      this.dropPeer(previous, `remote peer ${peer} joined while ${previous} was active (automatic gmddown)`);
      this.ctx.downGiven.add(previous);
    }
    this.ctx.setActivePeer(peer, info);
    this.ctx.downGiven.delete(peer);
    this.ctx.event('info', `mirroring to ${peer}`);
    this.maybeResync(peer, info);
  }

  /**
   * A region turned stale while the peer is attached: an async write into a region that was stale
   * when it began stays stale when its remote copy lands (keepStale), and one that lands after the
   * resync's last pass would otherwise wait for the next rejoin; a failed local write does the same.
   * Queued once per turn; a resync already running sees the region in its next pass instead.
   */
  resyncStaleSoon(): void {
    if (this.restaleQueued || !this.ctx.activePeer) return;
    this.restaleQueued = true;
    setImmediate(() => { this.restaleQueued = false; this.resyncStale(); });
  }

  private resyncStale(): void {
    const ctx = this.ctx;
    const res = ctx.res;
    const peer = ctx.activePeer;
    if (!res || !peer || !ctx.activePeerInfo || ctx.stopping || ctx.state !== 'AVAILABLE') return;
    if (this.engine?.running || res.map.counts().stale === 0) return;
    this.maybeResync(peer, ctx.activePeerInfo);
  }

  /** Decides who copies what after a join: data flows from the dirty map's side (DESIGN §4 item 3). */
  private maybeResync(peer: string, info: PeerInfo): void {
    const res = this.ctx.res!;
    const localDirty = !res.map.isClean();
    // The side where applications write drives the resync, so it can order resync against its own writes.
    const driver = res.attrs.role === 'primary' || (res.attrs.role === 'none' && info.role !== 'primary' && (localDirty || this.ctx.machine < peer));
    if (!driver) return;
    if (!localDirty && !info.mapDirty) return;
    this.startResync(peer, localDirty ? 'push' : 'pull');
  }

  private startResync(peer: string, direction: 'push' | 'pull'): void {
    if (this.engine?.running) return;
    const ctx = this.ctx;
    const res = ctx.res!;
    const engine = new Resync({
      direction, peer, net: ctx.net, map: res.map, local: res.local, lock: ctx.lock,
      syncRate: res.attrs.syncRate, regionSize: res.attrs.regionSize, rateLimit: res.attrs.resyncRateLimit,
      ordered: res.attrs.mode === 'async', size: ctx.devSize, stats: ctx.stats,
      isActive: () => ctx.activePeer === peer && ctx.state === 'AVAILABLE' && !ctx.stopping,
      control: (msg) => ctx.control(peer, msg, RESYNC_CONTROL_MS),
      logger: ctx.log,
    });
    this.engine = engine;
    ctx.event('info', `resync ${direction === 'push' ? `${ctx.machine} -> ${peer}` : `${peer} -> ${ctx.machine}`} started`);
    engine.run().then((p) => {
      this.lastResync = p;
      if (p.complete) ctx.event('info', `resync complete: ${p.doneBytes} bytes in ${p.elapsedSec.toFixed(1)} s`);
      else ctx.event('warn', `resync interrupted at ${p.percent.toFixed(1)}% (the state map keeps what is left)`);
      void res.map.flush().catch(() => undefined);
      // Regions that turned stale after its last look (see resyncStaleSoon) go in a follow-up.
      if (p.complete) this.resyncStale();
    }, (e: unknown) => ctx.event('error', `resync failed: ${(e as Error).message}`));
  }

  /** Hooks up GeoMessage events: Promote Failure Timeout and peer restarts. */
  attachNetEvents(): void {
    this.ctx.net.on('peer-down', (ev) => {
      if (this.ctx.activePeer === ev.peer) {
        // Not recorded as an admin gmddown: a later start must not stop a peer that came back.
        this.dropPeer(ev.peer, `Promote Failure Timeout exceeded for ${ev.peer}: gmddown`);
        this.ctx.log.warn({ gmd: this.ctx.name, peer: ev.peer }, 'promote failure timeout: gmddown');
      }
    });
    this.ctx.net.on('peer-restart', (ev) => {
      if (this.ctx.activePeer === ev.peer) this.dropPeer(ev.peer, `${ev.peer} restarted`);
    });
  }
}
