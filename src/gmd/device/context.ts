/**
 * The state every part of a GMD shares: who it is, its resources, its state, the peer it mirrors
 * with, the range lock, statistics and events, and the count of I/O that stop() waits for. The
 * parts (lifecycle, write path, receiver, ...) each hold this one object; it knows none of them.
 */

import { GeormError } from '../../util/errors.js';
import type { Logger } from '../../util/log.js';
import type { PeerTransport } from '../ports.js';
import { SVC_CONTROL, type ControlMessage, type GmdState, type PeerInfo } from '../protocol.js';
import { RangeLock } from '../rangelock.js';
import { ioError } from './errors.js';
import { EVENTS_KEPT } from './timeouts.js';
import { newStats, type GmdEvent, type GmdOptions, type GmdResources, type GmdStats } from './types.js';

export class DeviceContext {
  readonly name: string;
  readonly minor: number;
  readonly machine: string;
  readonly peers: string[];
  readonly net: PeerTransport;
  readonly log: Logger;
  readonly configDigest: string;
  readonly facts: (() => Promise<unknown>) | undefined;

  /** Volume, map and attributes while configured (STOPPED or AVAILABLE); null when DEFINED. */
  private resources: GmdResources | null = null;
  devSize = 0;
  state: GmdState = 'DEFINED';
  /** stop() has begun: new I/O (the application's and the peer's) is refused. */
  stopping = false;
  /** The peer writes are mirrored to; null = none (stale marking). */
  private mirrorPeer: string | null = null;
  /** What the active peer said of itself when it joined (who drives a resync). */
  private mirrorPeerInfo: PeerInfo | null = null;
  /** The peer our start is joining: its resync may reach us before the join reply does. */
  joiningPeer: string | null = null;
  /** gmddown given (or Promote Failure Timeout expired) for these peers. */
  readonly downGiven = new Set<string>();
  /** Keeps overlapping operations (application, peer, resync) in arrival order. */
  readonly lock = new RangeLock();
  readonly stats: GmdStats = newStats();
  private readonly events: GmdEvent[] = [];
  /**
   * I/O on the volume that stop() waits for before the GMD is STOPPED (and the volume may be closed):
   * application requests (admit/done) and the peer's requests applied here, from admission until
   * their last local operation has settled.
   */
  private ioInflight = 0;
  private ioDrained: (() => void) | null = null;
  /** Told when the resources or the active peer change (the write path then re-chooses how writes go). */
  onMirrorChange: () => void = () => undefined;

  constructor(opts: GmdOptions) {
    this.name = opts.name;
    this.minor = opts.minor;
    this.machine = opts.machine;
    this.peers = opts.peers;
    this.net = opts.net;
    this.log = opts.logger;
    this.configDigest = opts.configDigest ?? '';
    this.facts = opts.facts;
  }

  get res(): GmdResources | null { return this.resources; }
  get activePeer(): string | null { return this.mirrorPeer; }
  get activePeerInfo(): PeerInfo | null { return this.mirrorPeerInfo; }

  setResources(res: GmdResources | null): void {
    this.resources = res;
    this.onMirrorChange();
  }

  setActivePeer(peer: string | null, info: PeerInfo | null): void {
    this.mirrorPeer = peer;
    this.mirrorPeerInfo = info;
    this.onMirrorChange();
  }

  /**
   * Whether writes from `peer` may change our volume: the active peer, or the peer our start is joining.
   * A peer that accepted our join mirrors to us at once; its writes (and its resync) can arrive before
   * its join reply does, and refusing them would make it drop us and mark everything stale.
   */
  mirrorsWith(peer: string): boolean {
    return this.mirrorPeer === peer || this.joiningPeer === peer;
  }

  /** Rejects application I/O a GMD must not take: secondary role, or not AVAILABLE. Returns the resources. */
  admit(): GmdResources {
    const res = this.resources;
    if (res && res.attrs.role === 'secondary') {
      this.stats.rejectedIo++;
      throw ioError('EPERM', `${this.name} is secondary on ${this.machine}: application I/O is refused (it originates on the primary)`);
    }
    if (!res || this.state !== 'AVAILABLE' || this.stopping) {
      this.stats.rejectedIo++;
      throw ioError('EIO', `${this.name} is ${this.state}, not AVAILABLE`);
    }
    this.ioInflight++;
    return res;
  }

  /** Counts one of the peer's requests as I/O stop() waits for (ended with done()). */
  beginPeerIo(): void { this.ioInflight++; }

  /** Ends one unit of I/O (application or a peer's request). */
  done(): void {
    if (--this.ioInflight === 0 && this.ioDrained) { const d = this.ioDrained; this.ioDrained = null; d(); }
  }

  /** Resolves once no counted I/O is running. */
  ioIdle(): Promise<void> {
    if (this.ioInflight === 0) return Promise.resolve();
    return new Promise<void>((r) => { this.ioDrained = r; });
  }

  /** This side's resources while its volume is open (STOPPED or AVAILABLE); refused to the peer when DEFINED. */
  configuredRes(): GmdResources {
    if (!this.resources) throw new GeormError('GMD_ERR_NOT_AVAILABLE', `${this.name} on ${this.machine} is DEFINED`);
    return this.resources;
  }

  /** The resources for an admin command on the map; refused when DEFINED. */
  needMap(): GmdResources {
    if (!this.resources) throw new GeormError('GMD_ERR_STATE', `${this.name} is DEFINED: configure it first (cfggmd)`);
    return this.resources;
  }

  /** As needMap, for commands that change the map: only while STOPPED. */
  needStoppedMap(what: string): GmdResources {
    const res = this.needMap();
    if (this.state !== 'STOPPED') throw new GeormError('GMD_ERR_STATE', `${what}: ${this.name} must be STOPPED (now ${this.state})`);
    return res;
  }

  /** What this GMD tells a peer about itself (hello and join). */
  info(): PeerInfo {
    const res = this.resources;
    return {
      machine: this.machine, gmd: this.name, minor: this.minor, size: this.devSize,
      mode: res?.attrs.mode ?? 'mwc', role: res?.attrs.role ?? 'none', state: this.state,
      mapDirty: res ? !res.map.isClean() : false, activePeers: this.mirrorPeer ? [this.mirrorPeer] : [],
      regionSize: res?.attrs.regionSize ?? 0, configDigest: this.configDigest,
    };
  }

  /** One control request to a peer (JSON both ways). */
  async control(peer: string, msg: ControlMessage, timeoutMs: number): Promise<unknown> {
    const reply = await this.net.request(peer, SVC_CONTROL, Buffer.from(JSON.stringify(msg)), { timeoutMs });
    return JSON.parse(reply.toString('utf8')) as unknown;
  }

  /** Records an event for status and logs it. */
  event(level: GmdEvent['level'], message: string): void {
    this.events.push({ time: new Date().toISOString(), level, message });
    if (this.events.length > EVENTS_KEPT) this.events.shift();
    this.log[level]({ gmd: this.name }, message);
  }

  /** The newest `n` events. */
  recentEvents(n: number): GmdEvent[] { return this.events.slice(-n); }
}
