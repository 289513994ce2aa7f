/**
 * The GMD process's side of cluster management (HAGEO, `georm gmd run --cluster-managed`): under
 * Pacemaker the agent `ocf:georm:gmd` decides which side is promoted, and this module carries it out.
 *
 * - The application sees the device only on the promoted side: the NBD listeners and the kernel
 *   attachment (`nbd_device`) exist only while promoted (expose / hide).
 * - Roles follow the seed's role-change sequence: sync and MWC GMDs run with role `none` on both
 *   sides (either may write; only the exposed one does), async GMDs swap `secondary` -> `primary`
 *   through stop, unconfigure, set role, configure, start (attributes change only in DEFINED).
 * - Promotion is refused while this side is the target of a resync (the peer's map holds writes we
 *   lack) or diverged (both maps dirty): outdated data is never exposed to the application.
 * - Demotion hides the device first, then (async) waits until the peer holds every write.
 */
import { NbdServer } from '../../nbd/index.js';
import { transmissionFlags } from '../../nbd/index.js';
import { attachExport, DEFAULT_ATTACH_TIMEOUT_SEC, type Attached } from '../native/attach.js';
import { GeormError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { GeoMirrorDevice } from './device/index.js';
import type { GmdMode, GmdRole, PeerInfo } from './protocol.js';
import { FenceGate, type FenceGateOptions } from './fence-gate.js';

/** What the agent reads to choose its exit code and promotion score (control op `ha-status`). */
export interface HaStatus {
  gmd: string;
  machine: string;
  state: string;
  mode: GmdMode | null;
  role: GmdRole | null;
  /** NBD export / nbd_device present: the application can use the device here. */
  exposed: boolean;
  promoted: boolean;
  /** The peer writes are mirrored to, or null (stale marking / nobody to mirror to). */
  peer: string | null;
  /** This side's map has stale or inconsistent regions (it holds writes the peer lacks, or a crash left marks). */
  localDirty: boolean;
  staleRegions: number;
  inconsistentRegions: number;
  /** The active peer's map is dirty (it holds writes we lack); null when no peer is active or it did not answer. */
  peerMapDirty: boolean | null;
  peerRole: GmdRole | null;
  resync: { running: boolean; direction: 'push' | 'pull' | null; percent: number | null } | null;
  nbdUris: string[];
  /** Writes whose acknowledgement waited for the outdated record, and those failed for lack of it. */
  fence: { enabled: boolean; held: number; failed: number };
}

export interface ClusterRoleOptions {
  device: GeoMirrorDevice;
  /** NBD listen targets of this machine for the GMD (config `nbd_listen`). */
  listen: string[];
  /** The kernel NBD device to attach while promoted (config `nbd_device`), if any. */
  nbdDevice?: string | undefined;
  /** Resource-level fencing (`[hageo] fencing = "resource-only"`): the exported backend is a FenceGate. */
  fence?: FenceGateOptions | undefined;
  log: Logger;
}

/** How long a demote waits for an async peer to hold every write before it gives up (ms). */
const DEMOTE_DRAIN_MS = Number(process.env.GEORM_DEMOTE_DRAIN_MS) || 60_000;

export class ClusterRole {
  private readonly d: GeoMirrorDevice;
  private readonly opts: ClusterRoleOptions;
  private server: NbdServer | null = null;
  private attached: Attached | undefined;
  private uris: string[] = [];
  private gate: FenceGate | null = null;
  /** One promote or demote at a time: the agent may be retried by Pacemaker while one runs. */
  private busy: Promise<unknown> = Promise.resolve();

  constructor(opts: ClusterRoleOptions) {
    this.d = opts.device;
    this.opts = opts;
  }

  /** The role a managed GMD is configured with before it is promoted (set in DEFINED state). */
  static unpromotedRole(mode: GmdMode): GmdRole { return mode === 'async' ? 'secondary' : 'none'; }

  get exposed(): boolean { return this.server !== null; }

  get promoted(): boolean {
    const role = this.d.attrs?.role;
    return this.exposed || role === 'primary';
  }

  async status(): Promise<HaStatus> {
    const s = this.d.status();
    const peer = this.d.peer;
    let info: PeerInfo | null = null;
    if (peer) info = await this.d.peerInfo(peer).catch(() => null);
    const r = s.resync;
    return {
      gmd: s.name, machine: s.machine, state: s.state, mode: s.mode, role: s.role,
      exposed: this.exposed, promoted: this.promoted, peer,
      localDirty: !!s.map && (s.map.stale > 0 || s.map.inconsistent > 0),
      staleRegions: s.map?.stale ?? 0, inconsistentRegions: s.map?.inconsistent ?? 0,
      peerMapDirty: info ? info.mapDirty : null, peerRole: info ? info.role : null,
      resync: r ? { running: !r.complete && r.leftBytes > 0, direction: r.direction, percent: r.percent } : null,
      nbdUris: [...this.uris],
      fence: { enabled: !!this.opts.fence, held: this.gate?.held ?? 0, failed: this.gate?.failed ?? 0 },
    };
  }

  promote(): Promise<HaStatus> { return this.serial(() => this.doPromote()); }
  demote(): Promise<HaStatus> { return this.serial(() => this.doDemote()); }

  private serial<T>(f: () => Promise<T>): Promise<T> {
    const next = this.busy.then(f, f);
    this.busy = next.catch(() => undefined);
    return next;
  }

  private async doPromote(): Promise<HaStatus> {
    const d = this.d;
    if (d.state !== 'AVAILABLE') throw new GeormError('GMD_ERR_STATE', `${d.name} is ${d.state} on ${d.machine}, not AVAILABLE: start it (as secondary) before promoting`);
    const st = await this.status();
    if (st.promoted && st.exposed) return st;
    if (st.peer && st.peerMapDirty === true) {
      if (st.localDirty) {
        throw new GeormError('GMD_ERR_DIVERGENCE', `can't promote ${d.name} on ${d.machine}: both state maps are dirty (divergence); decide which site holds the right data and run 'georm unify ${d.name} --master <machine> --preview', then without --preview`);
      }
      throw new GeormError('GMD_ERR_OUTDATED', `can't promote ${d.name} on ${d.machine}: the peer ${st.peer} holds writes this side lacks (it is the target of a resync); wait until the resync completes`);
    }
    if (st.peer && st.peerMapDirty === null) {
      // An active peer that does not answer may hold newer data: do not guess.
      throw new GeormError('GMD_ERR_PEER', `can't promote ${d.name} on ${d.machine}: the active peer ${st.peer} does not answer; retry once it answers or is dropped`);
    }
    if (st.mode === 'async' && st.role !== 'primary') await this.restartWithRole('primary');
    await this.expose();
    d.event('info', `promoted on ${d.machine} (${st.mode}: role ${d.attrs?.role}, exposed ${this.uris.join(', ') || 'nbd_device only'})`);
    return this.status();
  }

  private async doDemote(): Promise<HaStatus> {
    const d = this.d;
    await this.hide();
    if (d.state === 'AVAILABLE' && d.attrs?.mode === 'async' && d.attrs.role === 'primary') {
      await this.drainToPeer();
      await this.restartWithRole('secondary');
    } else if (d.state === 'AVAILABLE' && d.peer && d.map && !d.map.isClean()) {
      // Sync/MWC: regions written on both sides stay marked until both volumes are flushed (the
      // clean gate, up to 30 s). The peer's promote refuses while our map is dirty, so a planned
      // switchover flushes them now: stop drains the gate, and the GMD starts again unpromoted.
      await d.stop('demote: flush before the peer is promoted');
      await startManaged(d);
    }
    d.event('info', `demoted on ${d.machine}: the device is not exposed (role ${d.attrs?.role ?? 'none'})`);
    return this.status();
  }

  /**
   * Async demote: waits until the peer holds every write (nothing in flight, no stale region while
   * it is attached). Without a peer there is nothing to wait for: the writes stay recorded as stale
   * here, and the peer's promotion is refused (resync target, or the outdated record) until they travel.
   */
  private async drainToPeer(): Promise<void> {
    const d = this.d;
    const deadline = Date.now() + DEMOTE_DRAIN_MS;
    for (;;) {
      const s = d.status();
      const peer = d.peer;
      if (!peer) return;
      if (s.stats.asyncInflightBytes === 0 && s.map && s.map.stale === 0 && !(s.resync && !s.resync.complete && s.resync.leftBytes > 0)) return;
      if (Date.now() > deadline) {
        throw new GeormError('GMD_ERR_TIMEOUT', `demote of ${d.name}: the peer ${peer} still lacks writes after ${DEMOTE_DRAIN_MS / 1000} s (${s.map?.stale ?? '?'} stale regions, ${s.stats.asyncInflightBytes} bytes in flight)`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Role change: the seed's sequence (attributes change only in DEFINED), then start again. */
  private async restartWithRole(role: GmdRole): Promise<void> {
    const d = this.d;
    const before = d.attrs?.role ?? ClusterRole.unpromotedRole(d.attrs?.mode ?? 'async');
    await d.stop(`role change to ${role}`);
    await d.unconfigure();
    d.setAttributes({ role });
    try {
      await d.configure();
      await startManaged(d);
    } catch (e) {
      // Refused (e.g. the peer is still primary): back to the role it had, running, so a failed
      // promote leaves the GMD as it found it.
      d.event('warn', `role change to ${role} failed (${(e as Error).message}); back to ${before}`);
      if (d.state === 'STOPPED') await d.unconfigure();
      d.setAttributes({ role: before });
      await d.configure();
      await startManaged(d);
      throw e;
    }
  }

  /** Opens the NBD listeners and attaches nbd_device: the application can use the device here now. */
  async expose(): Promise<void> {
    if (this.server) return;
    const d = this.d;
    // With fencing, writes the peer lacks are acknowledged only once it is recorded outdated.
    this.gate = this.opts.fence ? new FenceGate(d, this.opts.fence) : null;
    const server = new NbdServer({ exports: [{ name: d.name, description: `GeoMirror device ${d.name}`, backend: this.gate ?? d }] });
    const uris: string[] = [];
    try {
      for (const target of this.opts.listen) uris.push((await server.listen(target)).uri);
    } catch (e) {
      await server.close(0).catch(() => undefined);
      throw e;
    }
    this.server = server;
    this.uris = uris;
    if (this.opts.nbdDevice) {
      this.attached = attachExport(this.opts.nbdDevice, DEFAULT_ATTACH_TIMEOUT_SEC, d.size(), transmissionFlags(d, false), (s) => server.serveSocket(s, d.name), this.opts.log);
    }
  }

  /** Detaches nbd_device and closes the listeners and every NBD client (in-flight requests finish first). */
  async hide(): Promise<void> {
    const server = this.server;
    const attached = this.attached;
    this.attached = undefined;
    if (attached) await attached.detach().catch((e: unknown) => this.opts.log.error({ err: (e as Error).message }, 'detach failed'));
    if (!server) return;
    await server.close(5000).catch(() => undefined);
    this.server = null;
    this.uris = [];
  }
}

/**
 * Starts a managed GMD: with the peer when it is AVAILABLE; otherwise (unreachable, or up but not
 * AVAILABLE) with gmddown for it, which is harmless here because an unpromoted GMD takes no
 * application write — whether this side's data may be promoted is decided at promote, not here.
 * A peer that is itself starting is waited for.
 */
export async function startManaged(d: GeoMirrorDevice, timeoutMs = 60_000): Promise<{ message: string; peer: string | null }> {
  const deadline = Date.now() + timeoutMs;
  let down: string[] = [];
  for (;;) {
    try {
      for (const p of down) await d.down(p);
      return await d.start();
    } catch (e) {
      const code = (e as GeormError).code ?? '';
      if (Date.now() > deadline) throw e;
      if (code === 'GMD_ERR_START_PEER_UNREACHABLE' || code === 'GMD_ERR_START_PEER_NOT_AVAILABLE') {
        // gmddown on a peer that became AVAILABLE meanwhile would stop it: only for peers that are not.
        const infos = await Promise.all(d.peers.map(async (p) => [p, await d.peerInfo(p).catch(() => null)] as const));
        down = infos.filter(([, i]) => i?.state !== 'AVAILABLE').map(([p]) => p);
        if (infos.some(([, i]) => i?.state === 'STARTING')) await new Promise((r) => setTimeout(r, 300 + Math.random() * 500));
        continue;
      }
      if (code === 'GMD_ERR_START_PEER_STARTING') { await new Promise((r) => setTimeout(r, 300 + Math.random() * 500)); continue; }
      throw e;
    }
  }
}
