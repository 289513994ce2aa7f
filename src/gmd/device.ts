import type { Backend, BackendFlags, WriteOptions, ZeroOptions } from '../../nbd/backend.js';
import { GeormError } from '../util/errors.js';
import { isMode, isRole } from '../config/vocabulary.js';
import type { Logger } from '../util/log.js';
import type { MapPort, NetMessage, PeerTransport } from './ports.js';
import {
  SVC_CONTROL, SVC_FLUSH, SVC_READ, SVC_WRITE, SVC_WRITEV, SVC_ZERO, KIND_APP, KIND_RESYNC, FLAG_FUA, FLAG_TRIM, FLAG_NO_HOLE,
  HEADER_BYTES, encodeHeader, decodeHeader, type ControlMessage, type GmdMode, type GmdRole, type GmdState, type PeerInfo,
} from './protocol.js';
import { RangeLock } from './rangelock.js';
import { CleanGate } from './clean-gate.js';
import { WriteBatcher } from './batcher.js';
import { getPooledBuffer, releaseBuffer } from '../../nbd/protocol/buffer-pool.js';
import { getU32 } from '../../nbd/protocol/bytes.js';
import { Resync, type ResyncProgress } from './resync.js';
import { sourceRuns } from './zero-runs.js';
import { CELL_CLEAN, CELL_STALE } from '../statemap/index.js';

const EMPTY = Buffer.alloc(0);
/** Bytes of mirrored writes per GeoMessage batch (GEORM_GMD_BATCH_BYTES overrides, for measurements). */
const BATCH_BYTES = Number(process.env.GEORM_GMD_BATCH_BYTES) || 512 * 1024;
/**
 * How often the clean gate flushes both volumes itself when the application does not (clean-gate.ts).
 * 30 s follows the kernel's own writeback age (vm.dirty_expire_centisecs = 3000), so the forced
 * flush mostly finds pages already written back; at 1 s a randomly rewritten volume was written back
 * every second and 4 KiB async writes lost about half their rate.
 */
const CLEAN_FLUSH_MS = Number(process.env.GEORM_GMD_FLUSH_MS) || 30_000;

export interface GmdAttributes {
  mode: GmdMode;
  role: GmdRole;
  regionSize: number;
  /** Bytes per resync request. */
  syncRate: number;
  /** Async high water mark in bytes. */
  hwm: number;
  /** Resync bytes per second, 0 = unlimited. */
  resyncRateLimit: number;
}

/** Local resources of a configured (STOPPED/AVAILABLE) GMD. */
export interface GmdResources { local: Backend; map: MapPort; attrs: GmdAttributes }

export interface GmdOptions {
  name: string;
  minor: number;
  machine: string;
  /** Remote peers (machines at the other site holding this GMD). */
  peers: string[];
  net: PeerTransport;
  /** Opens volume and state map (DEFINED -> STOPPED); re-reads the configuration each time. */
  open: () => Promise<GmdResources>;
  configDigest?: string;
  logger: Logger;
  /** geo_verify facts of this machine (src/config/verify), sent to a peer that verifies. */
  facts?: () => Promise<unknown>;
  /** How long start waits for a peer's answer before calling it unreachable. */
  helloTimeoutMs?: number;
}

export interface GmdStats {
  reads: number; readBytes: number;
  localWrites: number; localWriteBytes: number;
  remoteWrites: number; remoteWriteBytes: number; remoteFailures: number;
  incomingWrites: number; incomingWriteBytes: number;
  resyncBytesSent: number; resyncBytesReceived: number; resyncRegions: number;
  staleMarkings: number;
  /** Async: times in-flight bytes went above the HWM (fell back to MWC-like waiting), writes that
   * waited for admission, and times the remote queue caught up below the HWM again. */
  hwmFallbacks: number; hwmWaits: number; hwmCatchUps: number;
  asyncInflightBytes: number; asyncInflightMax: number;
  rejectedIo: number;
  /** Regions written on both sides that wait for a flush of both volumes before cleaning (clean-gate.ts). */
  unflushedRegions: number;
}

export interface GmdEvent { time: string; level: 'info' | 'warn' | 'error'; message: string }

export interface GmdStatus {
  name: string; minor: number; machine: string;
  state: GmdState; role: GmdRole | null; mode: GmdMode | null;
  size: number;
  peers: Array<{ machine: string; link: string; active: boolean; downGiven: boolean }>;
  map: { regions: number; clean: number; inconsistent: number; stale: number; crashed: boolean } | null;
  resync: ResyncProgress | null;
  stats: GmdStats;
  attrs: GmdAttributes | null;
  events: GmdEvent[];
}

/** Idle WriteOps kept for reuse (more than the NBD layer lets be in flight per connection). */
const OP_POOL_MAX = 512;

/** A write-like request's claim on its regions: range lock, on-demand pull, durable mark. */
interface RangeClaim {
  res: GmdResources | null;
  offset: number; end: number; first: number; last: number;
  /** A region was stale already when marked: it stays stale whatever the outcome. */
  keepStale: boolean;
  // Made once per claim, bound to it.
  readonly granted: () => void;
  readonly pulled: () => void;
  readonly pullFailed: (e: unknown) => void;
  readonly marked: (err?: Error) => void;
}

/** One application write (GeoMirrorDevice.writeCb); pooled and reused. */
interface WriteOp extends RangeClaim {
  data: Buffer; fua: boolean;
  cb: ((err: Error | null) => void) | null;
  /** The peer and the write mode current when the regions were marked: the op ends with them. */
  peer: string | null; how: WriteMode | null;
  /** mwc: writes (local, remote) still outstanding; ok: the peer has it; localError: the local write's. */
  left: number; ok: boolean; localError: Error | null;
  // Callbacks made once per op (newOp), bound to it.
  readonly localDone: (e: Error | null) => void;
  readonly remoteDone: (err: unknown) => void;
  readonly admitted: () => void;
}

/** How a marked write goes (no peer, async, sync, mwc): what it issues and what each of its events does. */
interface WriteMode {
  issue(op: WriteOp): void;
  localDone(op: WriteOp, e: Error | null): void;
  remoteDone(op: WriteOp, err: unknown): void;
}

type LocalWriteCb = (offset: number, data: Buffer, fua: boolean, cb: (err: Error | null) => void) => void;
const noLocalWrite: LocalWriteCb = (_o, _d, _f, cb) => cb(new Error('no volume'));

/** An errno-carrying error for the NBD server. */
function ioError(code: 'EPERM' | 'EIO' | 'ENOTSUP', errno: number, message: string): Error {
  const e = new GeormError(`GMD_ERR_${code}`, message) as GeormError & { errno: number; nbdCode: string };
  e.errno = errno;
  Object.defineProperty(e, 'code', { value: code });
  return e;
}

/**
 * A GeoMirror device: the NBD Backend that mirrors each write to the local volume and the remote
 * peer, keeping the state map so failures cost a resync, never data (DESIGN §4).
 */
export class GeoMirrorDevice implements Backend {
  readonly name: string;
  readonly minor: number;
  readonly machine: string;
  readonly peers: string[];
  private readonly net: PeerTransport;
  private readonly log: Logger;
  private readonly openRes: () => Promise<GmdResources>;
  private readonly helloTimeoutMs: number;
  readonly configDigest: string;
  private readonly facts: (() => Promise<unknown>) | undefined;

  private res: GmdResources | null = null;
  private devSize = 0;
  private stateValue: GmdState = 'DEFINED';
  /** The peer writes are mirrored to; null = none (stale marking). */
  private activePeer: string | null = null;
  /** The peer our start is joining: its resync may reach us before the join reply does. */
  private joiningPeer: string | null = null;
  /** gmddown given (or Promote Failure Timeout expired) for these peers. */
  readonly downGiven = new Set<string>();
  private stopping = false;
  /** The stop() under way: a second caller (stopgmd during a peer's gmddown) waits for the same one. */
  private stopInProgress: Promise<void> | null = null;
  private readonly lock = new RangeLock();
  /**
   * I/O on the volume that stop() waits for before the GMD is STOPPED (and the volume may be closed):
   * application requests (admit/done) and the peer's requests applied here (onWrite, onWriteV,
   * onZero, onRead, SVC_FLUSH), from admission until their last local operation has settled.
   */
  private ioInflight = 0;
  private ioDrained: (() => void) | null = null;
  private asyncInflight = 0;
  private asyncDrained: Array<() => void> = [];
  /** Async writes acknowledged only once in-flight bytes are at or below the HWM again (FIFO). */
  private hwmWaiters: Array<() => void> = [];
  private hwmMode = false;
  private attrOverrides: Partial<GmdAttributes> = {};
  private resyncEngine: Resync | null = null;
  /** What the active peer said of itself when it joined (who drives a resync, maybeResync). */
  private activePeerInfo: PeerInfo | null = null;
  /** A follow-up resync is queued for this turn (resyncStale). */
  private restaleQueued = false;
  private readonly opPool: WriteOp[] = [];
  private readonly modes = this.makeWriteModes();
  /** How the next marked write goes; chosen by chooseWriteMode when the mode or the active peer changes. */
  private writeMode: WriteMode = this.modes.local;
  /** The volume's callback write (or an adapter for a volume without one); chosen with writeMode. */
  private writeLocal: LocalWriteCb = noLocalWrite;
  /** MWC ops whose local write waits for this turn's batch to be sent (deferLocal). */
  private localQ: WriteOp[] = [];
  private localScheduled = false;
  private batcher: WriteBatcher | null = null;
  /** Writes done on both sides wait here for a flush of both volumes before their regions are cleaned. */
  private readonly gate = new CleanGate({
    endWrite: (first, last, outcome) => this.res?.map.endWrite(first, last, outcome),
    flushBoth: () => this.flushBoth(),
    onError: (e) => this.event('error', `volume flush failed (regions stay marked): ${(e as Error)?.message ?? String(e)}`),
  }, CLEAN_FLUSH_MS);
  private batcherPeer: string | null = null;
  private lastResync: ResyncProgress | null = null;
  private readonly events: GmdEvent[] = [];
  readonly stats: GmdStats = {
    reads: 0, readBytes: 0, localWrites: 0, localWriteBytes: 0, remoteWrites: 0, remoteWriteBytes: 0,
    remoteFailures: 0, incomingWrites: 0, incomingWriteBytes: 0, resyncBytesSent: 0, resyncBytesReceived: 0,
    resyncRegions: 0, staleMarkings: 0, hwmFallbacks: 0, hwmWaits: 0, hwmCatchUps: 0, asyncInflightBytes: 0, asyncInflightMax: 0,
    rejectedIo: 0, unflushedRegions: 0,
  };

  constructor(opts: GmdOptions) {
    this.name = opts.name;
    this.minor = opts.minor;
    this.machine = opts.machine;
    this.peers = opts.peers;
    this.net = opts.net;
    this.log = opts.logger;
    this.openRes = opts.open;
    this.helloTimeoutMs = opts.helloTimeoutMs ?? 5000;
    this.configDigest = opts.configDigest ?? '';
    this.facts = opts.facts;
    this.registerHandlers();
  }

  get state(): GmdState { return this.stateValue; }
  get peer(): string | null { return this.activePeer; }
  get attrs(): GmdAttributes | null { return this.res?.attrs ?? null; }
  get map(): MapPort | null { return this.res?.map ?? null; }

  // ---------------------------------------------------------------- state transitions

  /** DEFINED -> STOPPED: open the volume and state map, check the peer agrees on mode/size/minor. */
  async configure(): Promise<void> {
    if (this.stateValue !== 'DEFINED') return;
    const res = await this.openRes();
    res.attrs = { ...res.attrs, ...this.attrOverrides };
    if (res.attrs.mode === 'async' && res.attrs.role === 'none') {
      // Either side may write under role none: in async that lets both sides write (DESIGN §4 rule 6).
      await res.map.close();
      await res.local.close?.();
      throw new GeormError('GMD_ERR_BAD_REQUEST', `${this.name}: an async GMD needs role primary or secondary, not none (change the role or the mode with set, in DEFINED state)`);
    }
    this.res = res;
    this.chooseWriteMode();
    this.devSize = res.local.size();
    this.stateValue = 'STOPPED';
    if (res.map.crashed) this.event('warn', `state map was not closed cleanly; ${res.map.counts().inconsistent} region(s) in flight at the crash will be resynchronised`);
    this.event('info', `configured (STOPPED): mode ${res.attrs.mode}, role ${res.attrs.role}, size ${this.devSize}`);
  }

  /** STOPPED -> DEFINED. */
  async unconfigure(): Promise<void> {
    if (this.stateValue === 'AVAILABLE') throw new GeormError('GMD_ERR_STATE', `${this.name} is AVAILABLE: stop it first (stopgmd)`);
    if (this.stateValue === 'DEFINED') return;
    const res = this.res!;
    this.res = null;
    this.chooseWriteMode();
    this.stateValue = 'DEFINED';
    await res.map.close();
    await res.local.close?.();
    this.event('info', 'unconfigured (DEFINED)');
  }

  /** Attributes change only in DEFINED (seed §2.1.1); they apply at the next configure. */
  setAttributes(a: Partial<GmdAttributes>): void {
    if (this.stateValue !== 'DEFINED') {
      throw new GeormError('GMD_ERR_STATE', `attributes of ${this.name} can only be changed in the DEFINED state (now ${this.stateValue}); run ucfggmd first`);
    }
    this.attrOverrides = { ...this.attrOverrides, ...checkAttributes(a) };
  }

  /** gmddown: the peer is down. On a STOPPED GMD it allows start without it; a peer that is in fact
   * AVAILABLE is told to stop (protection against divergence). */
  async down(peer: string): Promise<{ stoppedRemote: boolean }> {
    if (!this.peers.includes(peer)) throw new GeormError('GMD_ERR_PEER', `${peer} is not a remote peer of ${this.name} (peers: ${this.peers.join(', ')})`);
    this.downGiven.add(peer);
    if (this.activePeer === peer) this.dropPeer(peer, 'gmddown');
    let stoppedRemote = false;
    try {
      const info = await this.control(peer, { op: 'hello', from: this.info() }, 2000) as PeerInfo;
      if (info.state === 'AVAILABLE') {
        await this.control(peer, { op: 'down', reason: `gmddown issued on ${this.machine}` }, 5000);
        stoppedRemote = true;
        this.event('warn', `gmddown ${peer}: the remote GMD was AVAILABLE and has been stopped to protect against divergence`);
      }
    } catch { /* unreachable: that is what gmddown is for */ }
    this.event('info', `gmddown ${peer}`);
    return { stoppedRemote };
  }

  /** STOPPED -> AVAILABLE, applying the start rules of DESIGN §4 item 4. */
  async start(): Promise<{ message: string; peer: string | null }> {
    if (this.stateValue === 'AVAILABLE') return { message: `${this.name} is already AVAILABLE`, peer: this.activePeer };
    if (this.stateValue === 'DEFINED') await this.configure();
    if (this.stateValue !== 'STOPPED') throw new GeormError('GMD_ERR_STATE', `${this.name} is ${this.stateValue}`);
    const res = this.res!;
    this.stateValue = 'STARTING';
    try {
      const localDirty = !res.map.isClean();
      const infos = new Map<string, PeerInfo>();
      const unreachable: string[] = [];
      await Promise.all(this.peers.map(async (p) => {
        // A peer GeoMessage still holds for down (after a Promote Failure Timeout) is refused at once
        // until its next keepalive gets through: keep asking until the hello timeout.
        const deadline = Date.now() + this.helloTimeoutMs;
        for (;;) {
          try { infos.set(p, await this.control(p, { op: 'hello', from: this.info() }, Math.max(100, deadline - Date.now())) as PeerInfo); break; } catch {
            if (Date.now() + 200 >= deadline) { unreachable.push(p); break; }
            await new Promise((r) => setTimeout(r, 200));
          }
        }
      }));
      for (const [p, info] of infos) {
        const diff: string[] = [];
        // A DEFINED peer has not loaded its attributes: its mode and size are placeholders. They are
        // compared when it starts (its own hello reaches us then).
        const loaded = info.state !== 'DEFINED';
        if (loaded && info.mode !== res.attrs.mode) diff.push(`mode ${res.attrs.mode} here, ${info.mode} on ${p}`);
        if (info.minor !== this.minor) diff.push(`minor ${this.minor} here, ${info.minor} on ${p}`);
        if (loaded && info.size !== this.devSize) diff.push(`size ${this.devSize} here, ${info.size} on ${p}`);
        if (diff.length) throw refuse('MISMATCH', `can't start ${this.name}: the remote peer's definition differs (${diff.join('; ')}); make the GMD definitions identical (georm verify shows all differences)`);
      }
      for (const [p, info] of infos) {
        if (info.state === 'STARTING') throw refuse('PEER_STARTING', `can't start ${this.name}: remote peer ${p} is in the process of starting; wait until it is AVAILABLE and start again`);
      }
      const available = this.peers.filter((p) => infos.get(p)?.state === 'AVAILABLE');
      if (available.length > 1) throw refuse('MULTIPLE_PEERS', `can't start ${this.name}: more than one remote peer is active (${available.join(', ')}); stop all but one of them (stopgmd) first`);
      for (const [p, info] of infos) {
        if (localDirty && info.mapDirty) throw refuse('DIVERGENCE', `can't start ${this.name}: data divergence — the state maps on ${this.machine} and ${p} are both dirty; decide which site holds the right data and run 'georm unify ${this.name} --master <machine> --preview', then without --preview`);
      }
      const peer = available[0] ?? null;
      if (peer) {
        const info = infos.get(peer)!;
        if (res.attrs.role === 'primary' && info.role === 'primary') throw refuse('BOTH_PRIMARY', `can't start ${this.name}: the AVAILABLE remote peer ${peer} is also primary; one side must be secondary (change the role in DEFINED state)`);
        if (localDirty && !this.downGiven.has(peer)) throw refuse('LOCAL_STALE', `can't start ${this.name}: remote peer ${peer} is AVAILABLE and the local state map has ${res.map.counts().stale + res.map.counts().inconsistent} dirty region(s); stop the GMD on ${peer} (stopgmd), start here with gmddown ${peer}, then start ${peer} so the data flows from here`);
      }
      for (const p of this.peers) {
        if (this.downGiven.has(p) || available.includes(p)) continue;
        if (unreachable.includes(p)) throw refuse('PEER_UNREACHABLE', `can't start ${this.name}: remote peer ${p} is not reachable on any geographic network; if it is down, run 'gmddown -l ${this.name} ${p}' (georm down) and start again`);
        throw refuse('PEER_NOT_AVAILABLE', `can't start ${this.name}: remote peer ${p} is up but its GMD is ${infos.get(p)?.state ?? 'unknown'}, not AVAILABLE; start it there first, or run 'gmddown -l ${this.name} ${p}' and start again`);
      }
      // A peer given as down but in fact AVAILABLE is stopped (DESIGN §4 item 5).
      if (peer && this.downGiven.has(peer)) {
        const r = await this.control(peer, { op: 'down', reason: `started on ${this.machine} with gmddown` }, 5000).catch((e: unknown) => e as Error);
        if (r instanceof Error) throw refuse('PEER_NOT_STOPPED', `can't start ${this.name}: remote peer ${peer} is AVAILABLE although gmddown was given, and stopping it failed (${r.message}); stop it there (stopgmd) and start again`);
        this.event('warn', `remote peer ${peer} was AVAILABLE although gmddown was given; it has been stopped`);
        this.stateValue = 'AVAILABLE';
        this.stopping = false;
        this.event('info', `started without remote peers (stale marking)`);
        return { message: `${this.name} started successfully; ${peer} was stopped (gmddown)`, peer: null };
      }
      this.stateValue = 'AVAILABLE';
      this.stopping = false;
      if (!peer) {
        this.event('info', 'started without remote peers (stale marking)');
        return { message: `No remote peers currently available for ${this.name}.\n${this.name} started successfully.`, peer: null };
      }
      this.joiningPeer = peer;
      const reply = await this.control(peer, { op: 'join', from: this.info() }, this.helloTimeoutMs).catch((e: unknown) => e as Error)
        .finally(() => { this.joiningPeer = null; });
      if (reply instanceof Error) {
        this.stateValue = 'STOPPED';
        throw refuse('PEER_UNREACHABLE', `can't start ${this.name}: joining remote peer ${peer} failed (${reply.message}); retry, or use gmddown`);
      }
      this.attachPeer(peer, reply as PeerInfo);
      return { message: `${this.name} started successfully, mirroring to ${peer}.`, peer };
    } catch (e) {
      if (this.stateValue === 'STARTING') this.stateValue = 'STOPPED';
      if (e instanceof GeormError && e.code.startsWith('GMD_ERR_START_')) this.event('warn', e.message);
      throw e;
    }
  }

  /** AVAILABLE -> STOPPED: refuse new I/O (the application's and the peer's), drain, tell the peer we leave. */
  stop(reason = 'stopgmd'): Promise<void> {
    if (this.stopInProgress) return this.stopInProgress;
    if (this.stateValue !== 'AVAILABLE') return Promise.resolve();
    this.stopInProgress = this.drainAndStop(reason).finally(() => { this.stopInProgress = null; });
    return this.stopInProgress;
  }

  private async drainAndStop(reason: string): Promise<void> {
    this.stopping = true;
    await this.resyncEngine?.stop();
    if (this.ioInflight > 0) await new Promise<void>((r) => { this.ioDrained = r; });
    await this.waitAsyncDrained(10000);
    await this.gate.drain();
    const peer = this.activePeer;
    this.activePeer = null;
    this.chooseWriteMode();
    this.activePeerInfo = null;
    if (peer) await this.control(peer, { op: 'leave' }, 3000).catch(() => undefined);
    this.stateValue = 'STOPPED';
    await this.res!.map.flush();
    this.event('info', `stopped (${reason})`);
  }

  // ---------------------------------------------------------------- admin on the map

  async dirty(): Promise<void> { this.needStoppedMap('gmddirty'); await this.res!.map.setAll(CELL_STALE); this.event('warn', 'state map dirtied (all regions stale)'); }
  async clean(): Promise<void> {
    this.needStoppedMap('gmdclean');
    for (const p of this.peers) {
      const info = await this.control(p, { op: 'hello', from: this.info() }, 1500).catch(() => null) as PeerInfo | null;
      if (info?.state === 'AVAILABLE') throw new GeormError('GMD_ERR_STATE', `can't clean ${this.name}: remote GMD on ${p} is AVAILABLE`);
    }
    await this.res!.map.setAll(CELL_CLEAN);
    this.event('warn', 'state map cleaned (all regions consistent)');
  }

  /** Cells of this machine's map (1 byte per region). */
  cells(): Uint8Array { this.needMap(); return this.res!.map.cells(); }

  /** What a peer says about itself (hello). */
  peerInfo(peer: string): Promise<PeerInfo> {
    return this.control(peer, { op: 'hello', from: this.info() }, 3000) as Promise<PeerInfo>;
  }

  /** A peer's geo_verify facts. */
  peerFacts(peer: string): Promise<unknown> { return this.control(peer, { op: 'facts' }, 10000); }

  /** Fetches a peer's map cells over GeoMessage. */
  async peerCells(peer: string): Promise<Uint8Array> {
    const r = await this.control(peer, { op: 'cells' }, 5000) as { cells: string };
    return new Uint8Array(Buffer.from(r.cells, 'base64'));
  }

  /** Unify: master := OR of both maps, the other cleared. With preview, returns the unified cells only. */
  async unify(master: string, preview: boolean): Promise<{ unified: Uint8Array; cleared: string | null }> {
    this.needMap();
    const peer = this.peers.find((p) => p !== this.machine && (master === this.machine || p === master)) ?? null;
    if (master !== this.machine && !this.peers.includes(master)) throw new GeormError('GMD_ERR_PEER', `unify: ${master} is neither this machine (${this.machine}) nor a remote peer of ${this.name}`);
    if (!peer) throw new GeormError('GMD_ERR_PEER', 'unify: no remote peer');
    const local = this.res!.map.cells();
    const remote = await this.peerCells(peer);
    if (remote.length !== local.length) throw new GeormError('GMD_ERR_MISMATCH', `unify: the state maps have different sizes (${local.length} vs ${remote.length} regions)`);
    const unified = new Uint8Array(local.length);
    for (let i = 0; i < local.length; i++) unified[i] = local[i]! | remote[i]!;
    if (preview) return { unified, cleared: null };
    if (this.stateValue === 'AVAILABLE') throw new GeormError('GMD_ERR_STATE', `unify: stop ${this.name} on ${this.machine} first`);
    const info = await this.control(peer, { op: 'hello', from: this.info() }, 3000) as PeerInfo;
    if (info.state === 'AVAILABLE') throw new GeormError('GMD_ERR_STATE', `unify: stop ${this.name} on ${peer} first`);
    if (master === this.machine) {
      await this.res!.map.orWith(remote);
      await this.control(peer, { op: 'clear-map' }, 5000);
      this.event('warn', `unify: master ${master}; state map of ${peer} cleared`);
      return { unified, cleared: peer };
    }
    await this.control(peer, { op: 'or-map', cells: Buffer.from(local).toString('base64') }, 5000);
    await this.res!.map.setAll(CELL_CLEAN);
    this.event('warn', `unify: master ${master}; state map of ${this.machine} cleared`);
    return { unified, cleared: this.machine };
  }

  /** Local takeover (seed §2.2): OR another machine's map into ours, then clean it. */
  async takeover(other: MapPort): Promise<void> {
    this.needStoppedMap('takeover');
    await this.res!.map.orWith(other.cells());
    await other.setAll(CELL_CLEAN);
    await this.res!.map.flush();
    this.event('warn', 'local takeover: merged the failed machine\'s state map and cleaned it');
  }

  private needMap(): void { if (!this.res) throw new GeormError('GMD_ERR_STATE', `${this.name} is DEFINED: configure it first (cfggmd)`); }
  private needStoppedMap(what: string): void {
    this.needMap();
    if (this.stateValue !== 'STOPPED') throw new GeormError('GMD_ERR_STATE', `${what}: ${this.name} must be STOPPED (now ${this.stateValue})`);
  }

  // ---------------------------------------------------------------- Backend

  size(): number { return this.devSize; }

  flags(): BackendFlags {
    // TRIM and FAST_ZERO follow this side's volume: both need fallocate here (see trim()).
    const fast = this.res?.local.flags().canFastZero ?? false;
    return {
      readOnly: false, canFlush: true, canFua: true, canTrim: fast, canZero: true, canFastZero: fast,
      canCache: false, canMultiConn: true, canExtents: false, rotational: false,
    };
  }

  blockSizes(): { minimum: number; preferred: number; maximum: number } {
    return { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  }

  /** Rejects I/O a GMD must not take: secondary role, or not AVAILABLE. Returns the resources. */
  private admit(): GmdResources {
    const res = this.res;
    if (res && res.attrs.role === 'secondary') {
      this.stats.rejectedIo++;
      throw ioError('EPERM', 1, `${this.name} is secondary on ${this.machine}: application I/O is refused (it originates on the primary)`);
    }
    if (!res || this.stateValue !== 'AVAILABLE' || this.stopping) {
      this.stats.rejectedIo++;
      throw ioError('EIO', 5, `${this.name} is ${this.stateValue}, not AVAILABLE`);
    }
    this.ioInflight++;
    return res;
  }

  /** Ends one unit of ioInflight (application I/O or a peer's request). */
  private done(): void {
    if (--this.ioInflight === 0 && this.ioDrained) { const d = this.ioDrained; this.ioDrained = null; d(); }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const res = this.admit();
    try {
      this.stats.reads++; this.stats.readBytes += length;
      if (this.resyncEngine?.pulling) {
        await this.lock.lock(offset, offset + length);
        try {
          await this.resyncEngine.pullOnDemand(...res.map.regionRange(offset, length));
          return await res.local.read(offset, length);
        } finally { this.lock.release(offset, offset + length); }
      }
      return await res.local.read(offset, length);
    } finally { this.done(); }
  }

  /** Promise form of writeCb: the same single write path. */
  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    return new Promise((resolve, reject) => this.writeCb(offset, data, opts.fua, (e) => { if (e) reject(e); else resolve(); }));
  }

  /**
   * NBD fast path (Backend.writeCb), and the only write path: range lock, durable mark (statemap
   * beginWriteCb), local and remote writes as the current write mode orders them. Each write's state
   * lives in a pooled WriteOp whose callbacks are made once per op, so a write allocates no promise
   * and no closure (at 20k writes/s per-write closures were a steady stream of young garbage). The
   * server reuses `data` after `cb`; the batcher copies it as it queues the remote write, so async
   * (which acknowledges before the remote copy is done) needs no copy of its own.
   */
  writeCb(offset: number, data: Buffer, fua: boolean, cb: (err: Error | null) => void): void {
    let res: GmdResources;
    try { res = this.admit(); } catch (e) { cb(e as Error); return; }
    const op = this.opPool.pop() ?? this.newOp();
    op.res = res; op.offset = offset; op.end = offset + data.length; op.data = data; op.fua = fua; op.cb = cb;
    this.lock.acquire(offset, op.end, op.granted);
  }

  /** The range lock is held: pull the regions if resync still has to, then mark them (claimMark). */
  private claimGranted(c: RangeClaim): void {
    const range = c.res!.map.regionRange(c.offset, c.end - c.offset);
    c.first = range[0]; c.last = range[1];
    // Checked with the lock held: a region not yet pulled from the peer is pulled before it is
    // overwritten, or the pull would later bring back older data.
    const engine = this.resyncEngine;
    if (engine?.pulling) engine.pullOnDemand(c.first, c.last).then(c.pulled, c.pullFailed);
    else this.claimMark(c);
  }

  /** Notes whether a region was stale already (it then stays stale), then durably marks the regions. */
  private claimMark(c: RangeClaim): void {
    const map = c.res!.map;
    c.keepStale = this.anyStale(map, c.first, c.last);
    if (map.beginWriteCb(c.first, c.last, c.marked)) c.marked();
  }

  /** Promise form of a claim for the cold paths (zero, trim): resolves once the regions are marked, lock held. */
  private claimRange(res: GmdResources, offset: number, end: number): Promise<RangeClaim> {
    return new Promise((resolve, reject) => {
      const c: RangeClaim = {
        res, offset, end, first: 0, last: 0, keepStale: false,
        granted: () => this.claimGranted(c),
        pulled: () => this.claimMark(c),
        pullFailed: (e: unknown) => reject(e as Error),
        marked: (err?: Error) => { if (err) reject(err); else resolve(c); },
      };
      this.lock.acquire(offset, end, c.granted);
    });
  }

  /**
   * Records a marked range's outcome, exactly once per beginWrite: regions both sides hold wait for
   * the clean gate, others (the peer lacks it, or a region was stale already) stay marked.
   */
  private settle(map: MapPort, first: number, last: number, bothHaveIt: boolean, keepStale: boolean): void {
    if (bothHaveIt && !keepStale) this.gate.done(first, last); else this.markLocalOnly(map, first, last);
  }

  /** The regions are durably marked (or marking failed): the current write mode issues the writes. */
  private opMarked(op: WriteOp, err?: Error): void {
    if (err) { this.lock.release(op.offset, op.end); this.done(); this.opEnd(op, err); return; }
    this.stats.localWrites++; this.stats.localWriteBytes += op.data.length;
    op.peer = this.activePeer;
    op.ok = false; op.localError = null;
    const how = this.writeMode;
    op.how = how;
    how.issue(op);
  }

  /** Chooses how writes go from now on; called whenever the mode or the active peer changes. */
  private chooseWriteMode(): void {
    const res = this.res;
    if (!res) { this.writeMode = this.modes.local; this.writeLocal = noLocalWrite; return; }
    const local = res.local;
    this.writeLocal = local.writeCb ? local.writeCb.bind(local)
      : (offset, data, fua, cb) => { local.write(offset, data, { fua }).then(() => cb(null), (e: unknown) => cb(e as Error)); };
    if (!this.activePeer) this.writeMode = this.modes.local;
    else this.writeMode = this.modes[res.attrs.mode];
  }

  /** The four ways a marked write goes; each names what happens on the events of its write. */
  private makeWriteModes(): Record<'local' | GmdMode, WriteMode> {
    return {
      // No peer: local only, the regions stay marked (stale marking).
      local: {
        issue: (op) => this.writeLocal(op.offset, op.data, op.fua, op.localDone),
        localDone: (op, e) => this.opFinish(op, e, false),
        remoteDone: () => undefined,
      },
      // Local first; the remote copy is queued once it succeeded and the write is acknowledged within the HWM.
      async: {
        issue: (op) => this.writeLocal(op.offset, op.data, op.fua, op.localDone),
        localDone: (op, e) => {
          if (e) { this.opFinish(op, e, false); return; }
          const res = op.res!;
          // Queued as a copy (the batcher's): the server reuses `data` once we call back.
          this.asyncRemote(res, op.peer!, op.first, op.last, op.offset, op.data, op.fua ? FLAG_FUA : 0, op.keepStale);
          // Release now: later overlapping writes queue behind in send order (secondary = prefix).
          this.lock.release(op.offset, op.end);
          if (this.asyncInflight > res.attrs.hwm) this.hwmWait(op.admitted); else this.opAdmitted(op);
        },
        remoteDone: () => undefined,
      },
      // Remote first; the local write is issued only once the peer has the data.
      sync: {
        issue: (op) => this.opRemote(op),
        localDone: (op, e) => this.opFinish(op, e, op.ok),
        remoteDone: (op, err) => {
          op.ok = err === null;
          if (!op.ok) this.peerFailed(op.peer!, err);
          this.writeLocal(op.offset, op.data, op.fua, op.localDone);
        },
      },
      // Both at once: remote first, local once the batch has left (the peer's half of the round trip
      // then runs while this side writes, instead of after every local write of the turn).
      mwc: {
        issue: (op) => { op.left = 2; this.opRemote(op); this.deferLocal(op); },
        localDone: (op, e) => { op.localError = e; if (--op.left === 0) this.opFinish(op, op.localError, op.ok); },
        remoteDone: (op, err) => {
          op.ok = err === null;
          if (!op.ok) this.peerFailed(op.peer!, err);
          if (--op.left === 0) this.opFinish(op, op.localError, op.ok);
        },
      },
    };
  }

  /**
   * Runs an op's local write in this turn's check phase, after the write batcher's flush (queued
   * earlier by opRemote, and setImmediate callbacks run in order; the batch's packets leave in the
   * microtask right after the flush). The op keeps its range lock and the server's buffer meanwhile.
   */
  private deferLocal(op: WriteOp): void {
    this.localQ.push(op);
    if (!this.localScheduled) { this.localScheduled = true; setImmediate(this.runLocalQ); }
  }

  private readonly runLocalQ = (): void => {
    this.localScheduled = false;
    const q = this.localQ;
    this.localQ = [];
    for (const op of q) this.writeLocal(op.offset, op.data, op.fua, op.localDone);
  };

  /** Queues the mirrored copy of an op's write (batched per event-loop turn). */
  private opRemote(op: WriteOp): void {
    this.stats.remoteWrites++; this.stats.remoteWriteBytes += op.data.length;
    this.batcherFor(op.peer!).add(KIND_APP, op.fua ? FLAG_FUA : 0, op.offset, op.data, op.remoteDone);
  }

  /** Records the outcome in the map, releases the lock and answers the client. */
  private opFinish(op: WriteOp, err: Error | null, ok: boolean): void {
    const map = op.res!.map;
    if (err) {
      this.markLocalOnly(map, op.first, op.last);
      this.event('error', `local volume write failed: ${err.message}`);
    } else this.settle(map, op.first, op.last, ok, op.keepStale);
    this.lock.release(op.offset, op.end);
    this.done();
    this.opEnd(op, err);
  }

  /** Async: acknowledged once the remote queue is within the HWM (the lock is already released). */
  private opAdmitted(op: WriteOp): void {
    this.done();
    this.opEnd(op, null);
  }

  /** Returns the op to the pool (dropping its references), then calls the client back. */
  private opEnd(op: WriteOp, err: Error | null): void {
    const cb = op.cb!;
    op.res = null; op.data = EMPTY; op.cb = null; op.peer = null; op.localError = null; op.how = null;
    if (this.opPool.length < OP_POOL_MAX) this.opPool.push(op);
    cb(err);
  }

  private newOp(): WriteOp {
    const op: WriteOp = {
      res: null, offset: 0, end: 0, first: 0, last: 0, data: EMPTY, fua: false, keepStale: false, cb: null,
      peer: null, how: null, left: 0, ok: false, localError: null,
      granted: () => this.claimGranted(op),
      pulled: () => this.claimMark(op),
      pullFailed: (e: unknown) => this.opMarked(op, e as Error),
      marked: (err?: Error) => this.opMarked(op, err),
      localDone: (e: Error | null) => op.how!.localDone(op, e),
      remoteDone: (err: unknown) => op.how!.remoteDone(op, err),
      admitted: () => this.opAdmitted(op),
    };
    return op;
  }

  async flush(): Promise<void> {
    const res = this.admit();
    try {
      const peer = this.activePeer;
      // Writes completed before this flush are durable on both volumes once it has reached both.
      const mark = this.gate.mark();
      const remote = peer ? this.flushPeer(peer, res) : Promise.resolve(false);
      await res.local.flush();
      // async: the application does not wait for the peer (it may lag); the gate still may.
      if (res.attrs.mode !== 'async') { if (await remote) this.gate.covered(mark); }
      else void remote.then((ok) => { if (ok) this.gate.covered(mark); });
    } finally { this.done(); }
  }

  /** SVC_FLUSH to the peer: true once its volume is durable; false (and the peer dropped) on failure. */
  private flushPeer(peer: string, res: GmdResources): Promise<boolean> {
    return this.net.request(peer, SVC_FLUSH, EMPTY, { ordered: res.attrs.mode === 'async' })
      .then(() => true, (e: unknown) => { this.peerFailed(peer, e); return false; });
  }

  /** The clean gate's flush: both volumes, or false when there is no peer to confirm. */
  private async flushBoth(): Promise<boolean> {
    const res = this.res;
    const peer = this.activePeer;
    if (!res || !peer) return false;
    const remote = this.flushPeer(peer, res);
    await res.local.flush();
    return remote;
  }

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
    if (!this.res?.local.flags().canFastZero) { this.admit(); this.done(); return; }
    await this.zeroLike(offset, length, FLAG_TRIM | (opts.fua ? FLAG_FUA : 0), false,
      (res) => res.local.zero(offset, length, { fua: opts.fua, noHole: false, fastZero: false, deallocate: true }));
  }

  /**
   * WRITE_ZEROES, mirrored with its NO_HOLE flag (the peer keeps the range allocated too). FAST_ZERO
   * is judged on this side's volume, which is zeroed first: when it refuses (ENOTSUP), nothing was
   * sent, so neither volume changed (the spec: data untouched). The peer is never asked for a fast
   * zero; one that cannot zero quickly writes zeros itself (the mirror carries 16 bytes, not data).
   */
  async zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    if (opts.fastZero && !this.res?.local.flags().canFastZero) throw ioError('ENOTSUP', 95, 'fast zero not supported');
    const flags = (opts.noHole ? FLAG_NO_HOLE : 0) | (opts.fua ? FLAG_FUA : 0);
    await this.zeroLike(offset, length, flags, opts.fastZero, (res) => res.local.zero(offset, length, opts));
  }

  /**
   * Zeroes [offset, offset+length) on both sides: the same claim as a write (range lock, pull,
   * durable mark), then the local operation and SVC_ZERO to the peer (together; with `localFirst`,
   * the peer only after the local one succeeded). The lock is held until both sides are done, so
   * later overlapping writes follow on both.
   */
  private async zeroLike(offset: number, length: number, flags: number, localFirst: boolean, op: (res: GmdResources) => Promise<void>): Promise<void> {
    const res = this.admit();
    const end = offset + length;
    try {
      const { first, last, keepStale } = await this.claimRange(res, offset, end);
      let peer = this.activePeer;
      if (localFirst) {
        try { await op(res); } catch (e) {
          if ((e as { errno?: unknown }).errno === 95) {
            // FAST_ZERO refused here and nothing was sent: neither volume changed.
            this.settle(res.map, first, last, peer !== null, keepStale);
          } else {
            this.markLocalOnly(res.map, first, last);
            this.event('error', `local volume zero failed: ${(e as Error).message}`);
          }
          throw e;
        }
        peer = this.activePeer;
      }
      const remote = peer ? this.remoteZero(res, peer, flags, offset, length) : Promise.resolve(false);
      const local = localFirst ? Promise.resolve() : this.localZero(res, first, last, () => op(res));
      // Both settle before the lock is released: a failed local zero must not let a later write
      // overtake the zero still travelling to the peer.
      const [l, r] = await Promise.allSettled([local, remote]);
      if (l.status === 'rejected') throw l.reason; // localZero left the regions marked
      this.settle(res.map, first, last, r.status === 'fulfilled' && r.value, keepStale);
    } finally {
      // The claim fails only with the lock held (a failed pull or mark), so it is always released.
      this.lock.release(offset, end);
      this.done();
    }
  }

  /** SVC_ZERO to the peer: true once its volume reads zeros there; false (and the peer dropped) on failure. */
  private remoteZero(res: GmdResources, peer: string, flags: number, offset: number, length: number): Promise<boolean> {
    const ordered = res.attrs.mode === 'async';
    // async: mirrored writes acknowledged before this zero may still sit in the batcher (it sends at
    // the end of the event-loop turn). Send them first, so the zero follows them on the ordered
    // channel and the peer applies both in our order (the secondary stays a prefix of our writes).
    if (ordered && this.batcher && this.batcherPeer === peer) this.batcher.flush();
    return this.net.request(peer, SVC_ZERO, encodeHeader(KIND_APP, flags, offset, length), { ordered })
      .then(() => true, (e: unknown) => { this.peerFailed(peer, e); return false; });
  }

  async close(): Promise<void> { /* the runner owns the lifetime (stop/unconfigure) */ }

  // ---------------------------------------------------------------- write helpers

  private anyStale(map: MapPort, first: number, last: number): boolean {
    for (let r = first; r <= last; r++) if (map.cell(r) === CELL_STALE) return true;
    return false;
  }

  /** Local zero; on failure the region is left marked (the peer may hold the new data) and EIO goes back. */
  private async localZero(res: GmdResources, first: number, last: number, op: () => Promise<void>): Promise<void> {
    try { await op(); } catch (e) {
      this.markLocalOnly(res.map, first, last);
      this.event('error', `local volume write failed: ${(e as Error).message}`);
      throw e;
    }
  }

  private markLocalOnly(map: MapPort, first: number, last: number): void {
    this.stats.staleMarkings++;
    map.endWrite(first, last, 'local-only');
    this.resyncStaleSoon();
  }

  /** The batcher of mirrored writes to `peer` (made anew when the peer changes). */
  private batcherFor(peer: string): WriteBatcher {
    if (!this.batcher || this.batcherPeer !== peer) {
      this.batcher = new WriteBatcher(this.net, peer, this.res?.attrs.mode === 'async', BATCH_BYTES);
      this.batcherPeer = peer;
    }
    return this.batcher;
  }

  /**
   * Queues the remote copy of an async write (in write order, pipelined) and counts its bytes in
   * flight. `data` is copied into the batch before this returns. The one closure per write carries
   * what its landing needs: the op itself has been answered and reused by then.
   */
  private asyncRemote(res: GmdResources, peer: string, first: number, last: number, offset: number, data: Buffer, flags: number, keepStale: boolean): void {
    const len = data.length;
    this.asyncInflight += len;
    this.stats.asyncInflightBytes = this.asyncInflight;
    if (this.asyncInflight > this.stats.asyncInflightMax) this.stats.asyncInflightMax = this.asyncInflight;
    this.stats.remoteWrites++; this.stats.remoteWriteBytes += len;
    this.batcherFor(peer).add(KIND_APP, flags, offset, data, (err) => {
      if (err !== null) this.peerFailed(peer, err);
      this.settle(res.map, first, last, err === null, keepStale);
      this.asyncInflight -= len;
      this.stats.asyncInflightBytes = this.asyncInflight;
      if (this.hwmWaiters.length > 0 && this.asyncInflight <= res.attrs.hwm) {
        // Caught up below the mark: admit every waiting write (their bytes are already counted).
        const ws = this.hwmWaiters;
        this.hwmWaiters = [];
        for (const w of ws) w();
      }
      if (this.hwmMode && this.hwmWaiters.length === 0) { this.hwmMode = false; this.stats.hwmCatchUps++; }
      if (this.asyncInflight === 0) for (const w of this.asyncDrained.splice(0)) w();
    });
  }

  /** An async write whose remote copy took in-flight bytes over the HWM waits here (DESIGN §2: behaves as MWC until caught up). */
  private hwmWait(admit: () => void): void {
    if (!this.hwmMode) { this.hwmMode = true; this.stats.hwmFallbacks++; }
    this.stats.hwmWaits++;
    this.hwmWaiters.push(admit);
  }

  private waitAsyncDrained(timeoutMs: number): Promise<void> {
    if (this.asyncInflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      this.asyncDrained.push(() => { clearTimeout(t); resolve(); });
    });
  }

  // ---------------------------------------------------------------- peer membership

  private peerFailed(peer: string, e: unknown): void {
    this.stats.remoteFailures++;
    if (this.activePeer === peer) this.dropPeer(peer, `remote write failed: ${(e as Error)?.message ?? String(e)}`);
  }

  /** Stop mirroring to `peer`: from now on writes are marked stale. */
  private dropPeer(peer: string, why: string): void {
    if (this.activePeer !== peer) return;
    this.activePeer = null;
    this.chooseWriteMode();
    this.activePeerInfo = null;
    // Writes it acknowledged but never flushed may die with its page cache: stale, so they travel again.
    this.gate.peerLost();
    void this.resyncEngine?.stop();
    this.event('warn', `mirroring to ${peer} stopped (${why}); writes are marked stale until it rejoins`);
  }

  private attachPeer(peer: string, info: PeerInfo): void {
    const previous = this.activePeer;
    if (previous && previous !== peer) {
      // A second remote peer joined while one was active: the seed's driver gmddowns the old one.
      this.dropPeer(previous, `remote peer ${peer} joined while ${previous} was active (automatic gmddown)`);
      this.downGiven.add(previous);
    }
    this.activePeer = peer;
    this.chooseWriteMode();
    this.activePeerInfo = info;
    this.downGiven.delete(peer);
    this.event('info', `mirroring to ${peer}`);
    this.maybeResync(peer, info);
  }

  /**
   * A region turned stale while the peer is attached: an async write into a region that was stale
   * when it began stays stale when its remote copy lands (keepStale), and one that lands after the
   * resync's last pass would otherwise wait for the next rejoin; a failed local write does the same.
   * Queued once per turn; a resync already running sees the region in its next pass instead.
   */
  private resyncStaleSoon(): void {
    if (this.restaleQueued || !this.activePeer) return;
    this.restaleQueued = true;
    setImmediate(() => { this.restaleQueued = false; this.resyncStale(); });
  }

  private resyncStale(): void {
    const res = this.res;
    const peer = this.activePeer;
    if (!res || !peer || !this.activePeerInfo || this.stopping || this.stateValue !== 'AVAILABLE') return;
    if (this.resyncEngine?.running || res.map.counts().stale === 0) return;
    this.maybeResync(peer, this.activePeerInfo);
  }

  /** Decides who copies what after a join: data flows from the dirty map's side (DESIGN §4 item 3). */
  private maybeResync(peer: string, info: PeerInfo): void {
    const res = this.res!;
    const localDirty = !res.map.isClean();
    // The side where applications write drives the resync, so it can order resync against its own writes.
    const driver = res.attrs.role === 'primary' || (res.attrs.role === 'none' && info.role !== 'primary' && (localDirty || this.machine < peer));
    if (!driver) return;
    if (!localDirty && !info.mapDirty) return;
    this.startResync(peer, localDirty ? 'push' : 'pull');
  }

  private startResync(peer: string, direction: 'push' | 'pull'): void {
    if (this.resyncEngine?.running) return;
    const res = this.res!;
    const engine = new Resync({
      direction, peer, net: this.net, map: res.map, local: res.local, lock: this.lock,
      syncRate: res.attrs.syncRate, regionSize: res.attrs.regionSize, rateLimit: res.attrs.resyncRateLimit,
      ordered: res.attrs.mode === 'async', size: this.devSize, stats: this.stats,
      isActive: () => this.activePeer === peer && this.stateValue === 'AVAILABLE' && !this.stopping,
      control: (msg) => this.control(peer, msg, 10000),
      logger: this.log,
    });
    this.resyncEngine = engine;
    this.event('info', `resync ${direction === 'push' ? `${this.machine} -> ${peer}` : `${peer} -> ${this.machine}`} started`);
    engine.run().then((p) => {
      this.lastResync = p;
      if (p.complete) this.event('info', `resync complete: ${p.doneBytes} bytes in ${p.elapsedSec.toFixed(1)} s`);
      else this.event('warn', `resync interrupted at ${p.percent.toFixed(1)}% (the state map keeps what is left)`);
      void res.map.flush().catch(() => undefined);
      // Regions that turned stale after its last look (see resyncStaleSoon) go in a follow-up.
      if (p.complete) this.resyncStale();
    }, (e: unknown) => this.event('error', `resync failed: ${(e as Error).message}`));
  }

  /** Hooks up GeoMessage events: Promote Failure Timeout and peer restarts. */
  attachNetEvents(): void {
    this.net.on('peer-down', (ev) => {
      if (this.activePeer === ev.peer) {
        // Not recorded as an admin gmddown: a later start must not stop a peer that came back.
        this.dropPeer(ev.peer, `Promote Failure Timeout exceeded for ${ev.peer}: gmddown`);
        this.log.warn({ gmd: this.name, peer: ev.peer }, 'promote failure timeout: gmddown');
      }
    });
    this.net.on('peer-restart', (ev) => {
      if (this.activePeer === ev.peer) this.dropPeer(ev.peer, `${ev.peer} restarted`);
    });
  }

  // ---------------------------------------------------------------- incoming messages

  info(): PeerInfo {
    const res = this.res;
    return {
      machine: this.machine, gmd: this.name, minor: this.minor, size: this.devSize,
      mode: res?.attrs.mode ?? 'mwc', role: res?.attrs.role ?? 'none', state: this.stateValue,
      mapDirty: res ? !res.map.isClean() : false, activePeers: this.activePeer ? [this.activePeer] : [],
      regionSize: res?.attrs.regionSize ?? 0, configDigest: this.configDigest,
    };
  }

  private async control(peer: string, msg: ControlMessage, timeoutMs: number): Promise<unknown> {
    const reply = await this.net.request(peer, SVC_CONTROL, Buffer.from(JSON.stringify(msg)), { timeoutMs });
    return JSON.parse(reply.toString('utf8')) as unknown;
  }

  private registerHandlers(): void {
    this.net.handle(SVC_WRITE, (m) => this.onWrite(m));
    // Write batches are received into pooled memory, given back once written (onWriteV keeps nothing).
    this.net.handle(SVC_WRITEV, (m) => this.onWriteV(m), { payloads: { take: getPooledBuffer, give: releaseBuffer } });
    this.net.handle(SVC_READ, (m) => this.onRead(m));
    this.net.handle(SVC_FLUSH, () => this.onFlush());
    this.net.handle(SVC_ZERO, (m) => this.onZero(m));
    this.net.handle(SVC_CONTROL, (m) => this.onControl(m));
  }

  /**
   * Whether writes from `peer` may change our volume: the active peer, or the peer our start is joining.
   * A peer that accepted our join mirrors to us at once; its writes (and its resync) can arrive before
   * its join reply does, and refusing them would make it drop us and mark everything stale.
   */
  private mirrorsWith(peer: string): boolean {
    return this.activePeer === peer || this.joiningPeer === peer;
  }

  /**
   * Why a write or zero from `peer` may not change our volume now, or null when it may. Refused once
   * stop() has begun, too: stop waits only for what it admitted. The peer takes the error reply (or,
   * once we are gone, the missing one) as a failed remote write and marks the regions stale.
   */
  private peerRefusal(peer: string): GeormError | null {
    if (!this.res || this.stateValue !== 'AVAILABLE' || this.stopping) {
      return new GeormError('GMD_ERR_NOT_AVAILABLE', `${this.name} on ${this.machine} is ${this.stateValue === 'AVAILABLE' ? 'stopping' : this.stateValue}`);
    }
    // A write from a peer we are not mirroring with (e.g. it was dropped): refuse so it marks stale.
    if (!this.mirrorsWith(peer)) return new GeormError('GMD_ERR_NOT_AVAILABLE', `${peer} is not the active peer of ${this.name}`);
    return null;
  }

  /**
   * Runs one validated peer request on the volume as I/O stop() waits for: `apply` starts it
   * under the range lock (taken now, in handler-call order: ordered messages keep their order) and
   * calls back once; the lock is released and the count ended before the reply settles.
   */
  private applyPeer(offset: number, end: number, apply: (done: (e: Error | null) => void) => void): Promise<Buffer> {
    this.ioInflight++;
    return new Promise<Buffer>((resolve, reject) => {
      this.lock.acquire(offset, end, () => apply((e) => {
        this.lock.release(offset, end);
        this.done();
        if (e) reject(e); else resolve(EMPTY);
      }));
    });
  }

  /** Mirror and resync writes from the peer; overlapping ones apply in arrival (= send) order. */
  private onWrite(m: NetMessage): Promise<Buffer> {
    const refused = this.peerRefusal(m.peer);
    if (refused) return Promise.reject(refused);
    const h = decodeHeader(m.payload, this.devSize);
    if (!h || m.payload.length - 16 !== h.length) return Promise.reject(new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed write'));
    const local = this.res!.local;
    const data = m.payload.subarray(16);
    return this.applyPeer(h.offset, h.offset + h.length, (done) => {
      local.write(h.offset, data, { fua: (h.flags & FLAG_FUA) !== 0 }).then(() => {
        if (h.kind === KIND_RESYNC) this.stats.resyncBytesReceived += h.length;
        else { this.stats.incomingWrites++; this.stats.incomingWriteBytes += h.length; }
        done(null);
      }, (e: unknown) => done(e as Error));
    });
  }

  /** A batch of mirrored writes: all validated first (bad input changes no data), then applied in order. */
  private onWriteV(m: NetMessage): Promise<Buffer> {
    const refused = this.peerRefusal(m.peer);
    if (refused) return Promise.reject(refused);
    const res = this.res!;
    const p = m.payload;
    const bad = () => Promise.reject(new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed write batch'));
    if (p.length < 4) return bad();
    const n = p.readUInt32BE(0);
    // Validate every header first (hand-written reads, no object per entry): bad input changes no data.
    const size = this.devSize;
    let pos = 4;
    for (let i = 0; i < n; i++) {
      if (pos + HEADER_BYTES > p.length) return bad();
      const length = getU32(p, pos + 4);
      const offset = getU32(p, pos + 8) * 0x100000000 + getU32(p, pos + 12);
      if (length === 0 || offset + length > size || pos + HEADER_BYTES + length > p.length) return bad();
      pos += HEADER_BYTES + length;
    }
    if (pos !== p.length) return bad();
    if (n === 0) return Promise.resolve(EMPTY);
    // The batch counts as one unit of I/O for stop(), ended once its last write has settled.
    this.ioInflight++;
    return new Promise<Buffer>((resolve, reject) => {
      let left = n;
      let failed: Error | null = null;
      const local = res.local;
      // One reply for the whole batch once every write in it is done; data is written straight from
      // the received message (subarray views, no copy).
      const one = (e: Error | null): void => {
        if (e && !failed) failed = e;
        if (--left > 0) return;
        this.done();
        if (failed) reject(failed); else resolve(EMPTY);
      };
      let at = 4;
      for (let i = 0; i < n; i++) {
        const length = getU32(p, at + 4);
        const offset = getU32(p, at + 8) * 0x100000000 + getU32(p, at + 12);
        const fua = (p[at + 1]! & FLAG_FUA) !== 0;
        const data = p.subarray(at + HEADER_BYTES, at + HEADER_BYTES + length);
        at += HEADER_BYTES + length;
        const end = offset + length;
        // Locks are requested now, in batch order: overlapping writes apply in the order sent.
        this.lock.acquire(offset, end, () => {
          const after = (e: Error | null): void => {
            this.lock.release(offset, end);
            this.stats.incomingWrites++; this.stats.incomingWriteBytes += length;
            one(e);
          };
          if (local.writeCb) local.writeCb(offset, data, fua, after);
          else local.write(offset, data, { fua }).then(() => after(null), (e: unknown) => after(e as Error));
        });
      }
    });
  }

  /** This side's resources while its volume is open (STOPPED or AVAILABLE); refused when DEFINED. */
  private configuredRes(): GmdResources {
    if (!this.res) throw new GeormError('GMD_ERR_NOT_AVAILABLE', `${this.name} on ${this.machine} is DEFINED`);
    return this.res;
  }

  /** A peer's request on our volume, counted as I/O stop() waits for until it has settled. */
  private async peerIo<T>(op: () => Promise<T>): Promise<T> {
    this.ioInflight++;
    try { return await op(); } finally { this.done(); }
  }

  /** A resync pull reading our volume. Served while the volume is open; counted so stop() waits for it. */
  private async onRead(m: NetMessage): Promise<Buffer> {
    const res = this.configuredRes();
    const h = decodeHeader(m.payload, this.devSize);
    if (!h) throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed read');
    return this.peerIo(() => res.local.read(h.offset, h.length));
  }

  /**
   * The peer's flush of our volume (its clean gate and resync clean regions once it succeeded).
   * Without an open volume it fails: a success would let the peer clean regions whose data may
   * still sit in a page cache we can no longer flush.
   */
  private async onFlush(): Promise<Buffer> {
    const res = this.configuredRes();
    await this.peerIo(() => res.local.flush());
    return EMPTY;
  }

  private onZero(m: NetMessage): Promise<Buffer> {
    const refused = this.peerRefusal(m.peer);
    if (refused) return Promise.reject(refused);
    const h = decodeHeader(m.payload, this.devSize);
    if (!h) return Promise.reject(new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed zero'));
    const local = this.res!.local;
    return this.applyPeer(h.offset, h.offset + h.length, (done) => {
      // A TRIM is a zero here too, holes allowed (GeoMirrorDevice.trim): this volume reads zeros
      // whatever it can do, as the sender's does. Never a fast zero: fall back to writing zeros.
      const trim = (h.flags & FLAG_TRIM) !== 0;
      local.zero(h.offset, h.length, {
        fua: (h.flags & FLAG_FUA) !== 0, noHole: !trim && (h.flags & FLAG_NO_HOLE) !== 0, fastZero: false, deallocate: trim,
      }).then(() => {
        if (h.kind === KIND_RESYNC) this.stats.resyncBytesReceived += h.length;
        done(null);
      }, (e: unknown) => done(e as Error));
    });
  }

  private async onControl(m: NetMessage): Promise<Buffer> {
    let msg: ControlMessage;
    try { msg = JSON.parse(m.payload.toString('utf8')) as ControlMessage; } catch { throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed control message'); }
    if (!msg || typeof msg !== 'object' || typeof msg.op !== 'string') throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed control message');
    const reply = (v: unknown) => Buffer.from(JSON.stringify(v));
    switch (msg.op) {
      case 'hello':
        return reply(this.info());
      case 'join': {
        if (this.stateValue !== 'AVAILABLE') throw new GeormError('GMD_ERR_NOT_AVAILABLE', `${this.name} on ${this.machine} is ${this.stateValue}`);
        const from = msg.from;
        if (!from || typeof from !== 'object') throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed join');
        if (from.mode !== this.res!.attrs.mode || from.size !== this.devSize || from.minor !== this.minor) {
          throw new GeormError('GMD_ERR_MISMATCH', `${m.peer}'s definition of ${this.name} differs from ${this.machine}'s`);
        }
        if (from.role === 'primary' && this.res!.attrs.role === 'primary') throw new GeormError('GMD_ERR_BOTH_PRIMARY', 'both sides are primary');
        this.attachPeer(m.peer, from);
        return reply(this.info());
      }
      case 'leave':
        this.dropPeer(m.peer, `${m.peer} stopped its GMD`);
        return reply({ ok: true });
      case 'down':
        if (this.stateValue === 'AVAILABLE') {
          this.event('warn', `stopping: ${m.peer} declared this GMD down (${msg.reason}); protection against data divergence`);
          // Reply first, then stop, so the peer's request does not wait for our drain.
          setImmediate(() => { void this.stop('gmddown from peer'); });
        }
        return reply({ ok: true });
      case 'cells':
        this.needMap();
        return reply({ cells: Buffer.from(this.res!.map.cells()).toString('base64') });
      case 'or-map':
        this.needStoppedMap('unify');
        await this.res!.map.orWith(new Uint8Array(Buffer.from(msg.cells, 'base64')));
        this.event('warn', `unify: this machine is master; ${m.peer}'s state map ORed in`);
        return reply({ ok: true });
      case 'clear-map':
        this.needStoppedMap('unify');
        await this.res!.map.setAll(CELL_CLEAN);
        this.event('warn', `unify: state map cleared (master is ${m.peer})`);
        return reply({ ok: true });
      case 'clean-regions': {
        this.needMap();
        // Only the peer resyncing with us may clear staleness: from anyone else it would lose the
        // record of what that peer lacks (DESIGN §4 rules 1 and 3). All regions checked before any is cleaned.
        if (!this.mirrorsWith(m.peer)) throw new GeormError('GMD_ERR_NOT_AVAILABLE', `${m.peer} is not the active peer of ${this.name}`);
        const regions: unknown = msg.regions;
        const n = this.res!.map.regionCount;
        if (!Array.isArray(regions) || !regions.every((r) => Number.isInteger(r) && (r as number) >= 0 && (r as number) < n)) {
          throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed clean-regions');
        }
        for (const r of regions as number[]) this.res!.map.cleanRegion(r);
        return reply({ ok: true });
      }
      case 'facts':
        if (!this.facts) throw new GeormError('GMD_ERR_BAD_MESSAGE', 'verify not supported');
        return reply(await this.facts());
      case 'resync-done':
        await this.res?.map.flush();
        return reply({ ok: true });
      case 'zero-runs': {
        // A pulling peer asks how a range that read as zeros is stored here (Resync.pullZeros).
        const { offset, length } = msg;
        if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.devSize) {
          throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed zero-runs');
        }
        return reply({ runs: await sourceRuns(this.configuredRes().local, offset, length) });
      }
      default:
        throw new GeormError('GMD_ERR_BAD_MESSAGE', 'unknown control operation');
    }
  }

  // ---------------------------------------------------------------- reporting

  event(level: GmdEvent['level'], message: string): void {
    this.events.push({ time: new Date().toISOString(), level, message });
    if (this.events.length > 50) this.events.shift();
    this.log[level]({ gmd: this.name }, message);
  }

  status(): GmdStatus {
    const res = this.res;
    const counts = res?.map.counts();
    return {
      name: this.name, minor: this.minor, machine: this.machine, state: this.stateValue,
      role: res?.attrs.role ?? null, mode: res?.attrs.mode ?? null, size: this.devSize,
      peers: this.peers.map((p) => ({ machine: p, link: this.net.peerState(p), active: this.activePeer === p, downGiven: this.downGiven.has(p) })),
      map: counts && res ? { ...counts, crashed: res.map.crashed } : null,
      resync: this.resyncEngine?.running ? this.resyncEngine.progress() : this.lastResync,
      stats: { ...this.stats, unflushedRegions: this.gate.waiting }, attrs: res ? { ...res.attrs } : null, events: this.events.slice(-10),
    };
  }
}

/** Attribute changes come from the control socket: each one checked (DESIGN §4 rule 9). The region
 * size is the state map's identity (a different one would make resync copy the wrong ranges), so it
 * is not changeable here. */
function checkAttributes(a: unknown): Partial<GmdAttributes> {
  const bad = (m: string) => new GeormError('GMD_ERR_BAD_REQUEST', `set: ${m}`);
  if (!a || typeof a !== 'object' || Array.isArray(a)) throw bad('expected an object of attributes');
  const o = a as Record<string, unknown>;
  const out: Partial<GmdAttributes> = {};
  for (const [k, v] of Object.entries(o)) {
    if (k === 'mode') {
      if (!isMode(v)) throw bad(`mode must be sync, mwc or async, not ${JSON.stringify(v)}`);
      out.mode = v;
    } else if (k === 'role') {
      if (!isRole(v)) throw bad(`role must be primary, secondary or none, not ${JSON.stringify(v)}`);
      out.role = v;
    } else if (k === 'syncRate' || k === 'hwm' || k === 'resyncRateLimit') {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < (k === 'syncRate' ? 512 : 0)) throw bad(`${k} must be a whole number of bytes${k === 'syncRate' ? ' (at least 512)' : ''}, not ${JSON.stringify(v)}`);
      out[k] = v;
    } else {
      throw bad(`attribute '${k}' cannot be changed here${k === 'regionSize' ? ' (it is the state map\'s identity: change the configuration and recreate the map)' : ''}`);
    }
  }
  return out;
}

function refuse(rule: string, message: string): GeormError {
  return new GeormError(`GMD_ERR_START_${rule}`, message, { exitCode: 1 });
}
