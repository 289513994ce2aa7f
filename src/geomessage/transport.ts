import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { silentLogger, type Logger } from '../util/log.js';
import { GeoMessageError, type GeoMessageErrorCode } from './errors.js';
import {
  ackBlockBytes, checkTag, newPacketView, viewPacket, newSalt, widenPseq, PSEQ_LOW, fragmentPayloadSize, machineId, writeAckBlock, writeHeader, HEADER_BYTES, TAG_BYTES, IP_UDP_OVERHEAD,
  F_ACKS, F_ERROR, F_ORDERED, F_REPLY, F_REQUEST, T_ACK, T_DATA, T_PING, T_PONG,
  type DropReason, type PacketHeader, type PacketView,
} from './packet.js';
import { ReceivedRanges, ReplayWindow } from './replay.js';
import { InflightQueue } from './inflight.js';
import { RttEstimator } from './rtt.js';
import { emptyDrops, type DropStats, type GeoMessageStats, type MachineStats, type NetworkStats } from './stats.js';
import { openWire, type PacketOut, type ReceivedStatus, type Wire, type WireChoice } from './wire.js';

export interface NetworkEndpoint { network: string; address: string; port: number; mtu?: number }
export interface PeerSpec { machine: string; endpoints: NetworkEndpoint[]; promoteFailureTimeoutMs: number /* 0 = never */ }
export interface GeoMessageOptions {
  machine: string;
  key: Buffer;
  /** Local binds, one per network; order = preference on RTT ties. */
  endpoints: NetworkEndpoint[];
  peers: PeerSpec[];
  logger?: Logger;
  /** Keepalive (ping) period per network and peer; default 1000 ms. */
  keepaliveMs?: number;
  /** A network with no packet from a peer for this long is down for that peer; default 3 × keepaliveMs. */
  networkTimeoutMs?: number;
  /**
   * Maximum data packets in flight per peer; default 4096 (windowBytes bounds it first: 4 MiB is
   * about 2990 packets at MTU 1500, enough to keep a 1 Gbit/s link busy across a few ms of receiver
   * latency).
   */
  windowPackets?: number;
  /** Maximum bytes in flight per peer (keeps a burst within the peer's socket buffer); default 4 MiB. */
  windowBytes?: number;
  /**
   * Standing queueing delay tolerated before the window shrinks: max(queueTargetMs, minimum RTT);
   * default 20 ms (below that, scheduling noise of a busy host reads as congestion).
   */
  queueTargetMs?: number;
  /** RTO bounds (RFC 6298 style estimator); defaults 20 ms and 2000 ms. */
  rtoMinMs?: number;
  rtoMaxMs?: number;
  /** SO_SNDBUF/SO_RCVBUF requested per socket (the kernel may clamp to rmem_max); default 8 MiB. */
  socketBufferBytes?: number;
  /** Largest message accepted, sent or received (bounds reassembly memory); default 64 MiB. */
  maxMessageBytes?: number;
  /** Override the incarnation number (tests); default: deciseconds since 2025-01-01. */
  epoch?: number;
  /** First packet number to each peer (tests: start near a 2^32 boundary); default 1. */
  firstPacketNumber?: number;
  /**
   * Datagram layer (wire.ts): 'native' batches through the addon (sendmmsg/GSO, recvmmsg/GRO, tags in
   * C), 'dgram' is Node's one-send-per-packet path; default 'auto' (native when the addon has it;
   * GEORM_GEOMSG_IO=dgram|native overrides 'auto'). Both speak the same wire format.
   */
  io?: WireChoice;
}
export type Payload = Buffer | readonly Buffer[];
export interface IncomingMessage { peer: string; service: number; payload: Buffer; ordered: boolean }
export type Handler = (msg: IncomingMessage) => Payload | void | Promise<Payload | void>;
/**
 * Memory for a service's incoming payloads, from its owner's pool: `take(n)` gives the n bytes a
 * message is received into, `give(buf)` gets them back once the handler has returned or its promise
 * has settled. A handler registered with it must not keep the payload beyond that, nor reply with
 * it. For services that receive bulk data at high rates: fresh memory per message costs page faults
 * and garbage collection.
 */
export interface PayloadMemory { take(n: number): Buffer; give(b: Buffer): void }
export interface HandlerOptions { payloads?: PayloadMemory }
export interface SendOptions { ordered?: boolean; timeoutMs?: number }

export interface GeoMessageEvents {
  'peer-up': [{ peer: string; epoch: number }];
  'peer-down': [{ peer: string; reason: string }];
  'peer-restart': [{ peer: string; oldEpoch: number; newEpoch: number }];
  'network-down': [{ peer: string; network: string }];
  'network-up': [{ peer: string; network: string }];
}

export interface GeoMessage extends EventEmitter {
  request(peer: string, service: number, payload: Payload, opts?: SendOptions): Promise<Buffer>;
  send(peer: string, service: number, payload: Payload, opts?: SendOptions): Promise<void>;
  handle(service: number, handler: Handler, opts?: HandlerOptions): void;
  peerState(peer: string): 'up' | 'down' | 'unknown';
  declareDown(peer: string): void;
  stats(): GeoMessageStats;
  close(): Promise<void>;
  /** This process's incarnation number. */
  readonly epoch: number;
  /** Bound local ports, one per endpoint (useful with port 0). */
  localPorts(): number[];
}

/** Internal service number of an ordered slot whose message was abandoned (keeps the order stream gap-free). */
const SVC_TOMBSTONE = 0xffff;
/** Reordering tolerated before a packet counts as lost without waiting for its timer. */
const REORDER_THRESHOLD = 5;
const EPOCH_BASE_MS = Date.UTC(2025, 0, 1);
const REASM_IDLE_MS = 120_000;
/** Packets in flight before the first RTT measurements let the window grow. */
const INITIAL_WINDOW = 64;

type MsgKind = 'send' | 'request' | 'reply';

interface OutMsg {
  id: number;
  kind: MsgKind;
  service: number;
  flags: number;
  corrId: number;
  orderSeq: number;
  data: Buffer;
  fragSize: number;
  fragCount: number;
  nextFrag: number;
  ackedCount: number;
  /** Per-fragment ack flags; null for single-fragment messages (ackedCount says it all). */
  acked: Uint8Array | null;
  done: boolean;
  resolve: ((v: Buffer | undefined) => void) | null;
  reject: ((e: Error) => void) | null;
  timer: NodeJS.Timeout | null;
}

interface Inflight { msg: OutMsg; frag: number; sentAt: number; link: number }

/** `mem`: where `buf` came from (null: fresh memory). */
interface Reasm { buf: Buffer; mem: PayloadMemory | null; got: Uint8Array; count: number; missing: number; touched: number }

interface NetCounters {
  packetsOut: number; packetsIn: number; bytesOut: number; bytesIn: number;
  resends: number; timeouts: number; failures: number; sendWaits: number; duplicates: number; other: number;
  dropped: DropStats;
}

interface Net {
  index: number;
  spec: NetworkEndpoint;
  mtu: number;
  wire: Wire;
  c: NetCounters;
}

interface Link {
  net: Net;
  address: string;
  port: number;
  /** Where this link's packets are written (batched per destination on the native wire). */
  out: PacketOut;
  rtt: RttEstimator;
  up: boolean;
  lastHeard: number;
  lastProbe: number;
  consecutiveTimeouts: number;
  minRtt: number;
  minRttAt: number;
}

/** `mem`: where the payload goes back after the handler (null: it is the handler's to keep). */
interface HeldOrdered { msg: IncomingMessage; flags: number; msgId: number; mem: PayloadMemory | null }

class Peer {
  readonly id: number;
  readonly links: (Link | null)[];
  readonly fragSize: number;
  state: 'up' | 'down' | 'unknown' = 'unknown';
  epoch = 0;
  lastHeard: number;
  chosen = -1;
  // sending
  /** Queued to be pumped at the end of the current receive batch. */
  pumpDeferred = false;
  /** Packet numbers are per peer, so the peer sees gaps only where packets were lost. */
  nextPseq = 1;
  /** Nonce salt of this session's packet tags (packet.ts): random, redrawn when nextPseq's low half wraps. */
  saltHi: number;
  saltLo: number;
  nextMsgId = 1;
  nextOrderSeq = 1;
  readonly sendQ: OutMsg[] = [];
  readonly retxQ: Inflight[] = [];
  readonly inflight = new InflightQueue<Inflight>();
  /** messages not yet fully acknowledged, ascending id: the first key is the message floor */
  readonly active = new Map<number, OutMsg>();
  readonly awaitingReply = new Map<number, OutMsg>();
  largestAcked = 0;
  cwnd: number;
  maxCwnd: number;
  rtoTimer: NodeJS.Timeout | null = null;
  rtoDue = 0;
  nextWindowAdjust = 0;
  intervalSent = 0;
  intervalMinRtt = Infinity;
  intervalLost = 0;
  // receiving
  replay = new ReplayWindow();
  ranges = new ReceivedRanges();
  ackPending = false;
  ackScheduled = false;
  ackLink = 0;
  reasm = new Map<number, Reasm>();
  deliveredBelow = 1;
  delivered = new Set<number>();
  nextDeliverOrder = 1;
  held = new Map<number, HeldOrdered>();
  /** last unscheduled ping (probe) */
  lastEpochPing = -Infinity;
  lastPing = -Infinity;
  readonly s: Omit<MachineStats, 'machine' | 'state' | 'epoch' | 'network'> = {
    rpcsOut: 0, rpcsIn: 0, bytesOut: 0, bytesIn: 0, replies: 0, failures: 0, fragmented: 0, fragments: 0, restarts: 0,
  };

  constructor(readonly spec: PeerSpec, links: (Link | null)[], now: number, window: number) {
    this.id = machineId(spec.machine);
    this.links = links;
    let mtu = Infinity;
    for (const l of links) if (l) mtu = Math.min(mtu, l.net.mtu);
    this.fragSize = fragmentPayloadSize(mtu);
    this.lastHeard = now;
    this.cwnd = Math.min(window, INITIAL_WINDOW);
    this.maxCwnd = window;
    [this.saltHi, this.saltLo] = newSalt();
  }

  get name(): string { return this.spec.machine; }
}

function nowMs(): number { return performance.now(); }

function isAcked(m: OutMsg, frag: number): boolean {
  return m.acked ? m.acked[frag] === 1 : m.ackedCount > 0;
}

function toBuffer(p: Payload): Buffer {
  if (Buffer.isBuffer(p)) return p;
  const arr = p as readonly Buffer[];
  return arr.length === 1 ? arr[0]! : Buffer.concat(arr as Buffer[]);
}

function defaultEpoch(): number {
  return (Math.floor((Date.now() - EPOCH_BASE_MS) / 100) >>> 0) || 1;
}

/**
 * The GeoMessage transport: one UDP socket per network, one session per peer machine. See
 * packet.ts for the wire format and README (GeoMessage) for the reliability rules.
 */
export class GeoMessageTransport extends EventEmitter implements GeoMessage {
  readonly epoch: number;
  private readonly myId: number;
  private readonly key: Buffer;
  private readonly log: Logger;
  private readonly nets: Net[] = [];
  private readonly peers = new Map<string, Peer>();
  private readonly peersById = new Map<number, Peer>();
  private readonly handlers = new Map<number, Handler>();
  private readonly payloadMem = new Map<number, PayloadMemory>();
  /** Peers to pump once the current receive batch has been handled (pumpDeferred). */
  private deferred: Peer[] = [];
  private tick: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly started = nowMs();
  private readonly keepaliveMs: number;
  private readonly networkTimeoutMs: number;
  private readonly window: number;
  private readonly rtoMin: number;
  private readonly rtoMax: number;
  private readonly maxMessage: number;
  private readonly queueTarget: number;

  constructor(private readonly opts: GeoMessageOptions) {
    super();
    if (!opts.endpoints.length) throw new GeoMessageError('GEOMSG_ERR_CONFIG', 'GeoMessage needs at least one local endpoint');
    if (opts.key.length < 16) throw new GeoMessageError('GEOMSG_ERR_KEY', 'cluster key shorter than 16 bytes');
    this.key = opts.key;
    this.log = opts.logger ?? silentLogger;
    this.myId = machineId(opts.machine);
    this.epoch = opts.epoch ?? defaultEpoch();
    this.keepaliveMs = opts.keepaliveMs ?? 1000;
    this.networkTimeoutMs = opts.networkTimeoutMs ?? 3 * this.keepaliveMs;
    this.window = opts.windowPackets ?? 4096;
    this.rtoMin = opts.rtoMinMs ?? 20;
    this.rtoMax = opts.rtoMaxMs ?? 2000;
    this.maxMessage = opts.maxMessageBytes ?? 64 << 20;
    this.queueTarget = opts.queueTargetMs ?? 20;
  }

  /** Binds the sockets, greets every peer, starts keepalives. On failure nothing stays bound. */
  async open(): Promise<void> {
    try {
      await this.openInner();
    } catch (err) {
      for (const n of this.nets) void n.wire.close();
      this.nets.length = 0;
      throw err;
    }
  }

  private async openInner(): Promise<void> {
    const o = this.opts;
    const names = new Set<string>();
    for (const ep of o.endpoints) {
      if (names.has(ep.network)) throw new GeoMessageError('GEOMSG_ERR_CONFIG', `network ${ep.network} listed twice`);
      names.add(ep.network);
    }
    const ids = new Map<number, string>([[this.myId, o.machine]]);
    for (const p of o.peers) {
      const id = machineId(p.machine);
      if (ids.has(id)) throw new GeoMessageError('GEOMSG_ERR_CONFIG', `machine names ${p.machine} and ${ids.get(id)} collide (same wire id); rename one`);
      ids.set(id, p.machine);
    }
    for (const [i, ep] of o.endpoints.entries()) {
      const mtu = ep.mtu ?? 1500;
      if (fragmentPayloadSize(mtu) < 64) throw new GeoMessageError('GEOMSG_ERR_CONFIG', `network ${ep.network}: MTU ${mtu} too small`);
      const c: NetCounters = { packetsOut: 0, packetsIn: 0, bytesOut: 0, bytesIn: 0, resends: 0, timeouts: 0, failures: 0, sendWaits: 0, duplicates: 0, other: 0, dropped: emptyDrops() };
      let wire: Wire;
      try {
        wire = await openWire(o.io ?? 'auto', {
          address: ep.address, port: ep.port, bufferBytes: o.socketBufferBytes ?? 8 << 20, key: this.key,
          onPacket: (buf, off, len, status, now) => {
            try {
              this.onPacket(net, buf, off, len, status, now);
            } catch (err) {
              // A bug must not take the process (and its GMD) down on one odd packet: count and log it.
              c.dropped.malformed++;
              this.log.error({ err, network: ep.network }, 'packet handling failed');
            }
          },
          onBatchEnd: () => {
            try {
              this.pumpDeferred();
            } catch (err) {
              this.log.error({ err, network: ep.network }, 'sending after a receive batch failed');
            }
          },
          onSendFailure: (count, err) => { c.failures += count; this.log.debug({ err, network: ep.network, count }, 'send failed'); },
          onSendWait: () => { c.sendWaits++; },
        });
      } catch (err) {
        throw new GeoMessageError('GEOMSG_ERR_CONFIG', `cannot bind ${ep.address}:${ep.port} for network ${ep.network}: ${(err as Error).message}`, { cause: err });
      }
      const net: Net = { index: i, spec: ep, mtu, wire, c };
      this.nets.push(net);
    }
    const now = nowMs();
    for (const ps of o.peers) {
      const links = this.nets.map((net) => {
        const ep = ps.endpoints.find((e) => e.network === net.spec.network);
        if (!ep) return null;
        const l: Link = { net, address: ep.address, port: ep.port, out: net.wire.out(ep.address, ep.port), rtt: new RttEstimator(this.rtoMin, this.rtoMax, 200),
          up: false, lastHeard: -Infinity, lastProbe: -Infinity, consecutiveTimeouts: 0, minRtt: Infinity, minRttAt: 0 };
        if (ep.mtu && ep.mtu < net.mtu) net.mtu = Math.min(net.mtu, ep.mtu);
        return l;
      });
      if (!links.some((l) => l)) throw new GeoMessageError('GEOMSG_ERR_CONFIG', `peer ${ps.machine} shares no network with ${o.machine}`);
      const peer = new Peer(ps, links, now, this.window);
      if (o.firstPacketNumber !== undefined) {
        if (!Number.isInteger(o.firstPacketNumber) || o.firstPacketNumber < 1 || o.firstPacketNumber >= 2 ** 47) {
          throw new GeoMessageError('GEOMSG_ERR_CONFIG', `firstPacketNumber must be an integer from 1 to 2^47, not ${o.firstPacketNumber}`);
        }
        peer.nextPseq = o.firstPacketNumber;
      }
      for (const l of links) if (l) l.out.onDrain = () => this.pump(peer);
      // In-flight bytes stay within windowBytes: with jumbo frames 4096 packets would be 36 MB, more
      // than a receive buffer usually holds.
      peer.maxCwnd = Math.max(16, Math.min(this.window, Math.floor((o.windowBytes ?? 4 << 20) / peer.fragSize)));
      peer.cwnd = Math.min(peer.cwnd, peer.maxCwnd);
      this.peers.set(ps.machine, peer);
      this.peersById.set(peer.id, peer);
      this.pingAll(peer);
    }
    this.tick = setInterval(() => this.onTick(), Math.max(10, Math.min(this.keepaliveMs, 250)));
    this.tick.unref();
  }

  localPorts(): number[] { return this.nets.map((n) => n.wire.port); }

  handle(service: number, handler: Handler, opts?: HandlerOptions): void {
    if (!Number.isInteger(service) || service < 0 || service >= SVC_TOMBSTONE) {
      throw new GeoMessageError('GEOMSG_ERR_CONFIG', `service must be an integer in 0..${SVC_TOMBSTONE - 1}`);
    }
    this.handlers.set(service, handler);
    if (opts?.payloads) this.payloadMem.set(service, opts.payloads);
    else this.payloadMem.delete(service);
  }

  peerState(peer: string): 'up' | 'down' | 'unknown' {
    return this.peers.get(peer)?.state ?? 'unknown';
  }

  request(peer: string, service: number, payload: Payload, opts?: SendOptions): Promise<Buffer> {
    return this.submit(peer, service, payload, 'request', opts) as Promise<Buffer>;
  }

  send(peer: string, service: number, payload: Payload, opts?: SendOptions): Promise<void> {
    return this.submit(peer, service, payload, 'send', opts).then(() => undefined);
  }

  declareDown(peer: string): void {
    const p = this.peers.get(peer);
    if (!p) throw new GeoMessageError('GEOMSG_ERR_UNKNOWN_PEER', `unknown peer ${peer}`);
    this.peerDown(p, 'declared');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.tick) clearInterval(this.tick);
    for (const p of this.peers.values()) {
      this.failAll(p, 'GEOMSG_ERR_CLOSED', 'GeoMessage closed');
      if (p.rtoTimer) clearTimeout(p.rtoTimer);
    }
    await Promise.all(this.nets.map((n) => n.wire.close()));
  }

  // ---------------------------------------------------------------- sending

  private submit(peerName: string, service: number, payload: Payload, kind: MsgKind, opts?: SendOptions): Promise<Buffer | undefined> {
    if (this.closed) return Promise.reject(new GeoMessageError('GEOMSG_ERR_CLOSED', 'GeoMessage closed'));
    const peer = this.peers.get(peerName);
    if (!peer) return Promise.reject(new GeoMessageError('GEOMSG_ERR_UNKNOWN_PEER', `unknown peer ${peerName}`));
    if (peer.state === 'down') {
      // Probe at once: if the peer is back, the pong brings it up without waiting for the keepalive.
      this.probe(peer);
      // A message with its own deadline waits for the peer to come back within it (a start-up
      // "hello" after a network repair); without one, a down peer refuses at once (seed: no retries
      // after the Promote Failure Timeout).
      if (!(opts?.timeoutMs && opts.timeoutMs > 0)) {
        return Promise.reject(new GeoMessageError('GEOMSG_ERR_PEER_DOWN', `peer ${peerName} is down`));
      }
    }
    if (!Number.isInteger(service) || service < 0 || service >= SVC_TOMBSTONE) {
      return Promise.reject(new GeoMessageError('GEOMSG_ERR_CONFIG', `bad service ${service}`));
    }
    const data = toBuffer(payload);
    const ordered = opts?.ordered === true;
    let flags = kind === 'request' ? F_REQUEST : 0;
    if (ordered) flags |= F_ORDERED;
    let msg: OutMsg;
    try {
      this.checkSize(peer, data.length); // before taking an order slot: a refused message must leave no gap
      msg = this.makeMsg(peer, kind, service, flags, 0, ordered ? peer.nextOrderSeq++ : 0, data);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return new Promise<Buffer | undefined>((resolve, reject) => {
      msg.resolve = resolve;
      msg.reject = reject;
      const t = opts?.timeoutMs;
      if (t !== undefined && t > 0) {
        msg.timer = setTimeout(() => this.failMsg(peer, msg, 'GEOMSG_ERR_TIMEOUT', `no ${kind === 'request' ? 'reply' : 'acknowledgement'} from ${peerName} within ${t} ms`), t);
      }
      this.enqueue(peer, msg);
    });
  }

  private checkSize(peer: Peer, len: number): void {
    if (len > this.maxMessage) throw new GeoMessageError('GEOMSG_ERR_TOO_LARGE', `message of ${len} bytes exceeds maxMessageBytes ${this.maxMessage}`);
    if (Math.ceil(len / peer.fragSize) > 0xffff) throw new GeoMessageError('GEOMSG_ERR_TOO_LARGE', `message of ${len} bytes exceeds ${0xffff} fragments`);
  }

  private makeMsg(peer: Peer, kind: MsgKind, service: number, flags: number, corrId: number, orderSeq: number, data: Buffer): OutMsg {
    const fragSize = peer.fragSize;
    this.checkSize(peer, data.length);
    const fragCount = Math.max(1, Math.ceil(data.length / fragSize));
    return {
      id: peer.nextMsgId++, kind, service, flags, corrId, orderSeq, data, fragSize, fragCount, nextFrag: 0,
      ackedCount: 0, acked: fragCount > 1 ? new Uint8Array(fragCount) : null, done: false, resolve: null, reject: null, timer: null,
    };
  }

  private enqueue(peer: Peer, msg: OutMsg): void {
    peer.s.rpcsOut++;
    peer.s.bytesOut += msg.data.length;
    if (msg.fragCount > 1) { peer.s.fragmented++; peer.s.fragments += msg.fragCount; }
    peer.active.set(msg.id, msg);
    if (msg.kind === 'request') peer.awaitingReply.set(msg.id, msg);
    peer.sendQ.push(msg);
    this.pump(peer);
  }

  /** Sends queued fragments while the window allows. Retransmissions go first. */
  private pump(peer: Peer): void {
    if (peer.state !== 'up' || this.closed) return;
    const link = this.chosenLink(peer);
    if (!link) return;
    // Read once per run: messages only complete (raising the floor) outside the pump, and a floor
    // that is too low is merely conservative.
    const floor = this.msgFloor(peer);
    // One clock read per run: the packets of a run leave within microseconds of each other.
    const now = nowMs();
    // A full socket buffer stops the pump as a full window does; its drain event restarts it.
    while (peer.inflight.size < peer.cwnd && link.out.writable) {
      const r = peer.retxQ.shift();
      if (r) {
        if (r.msg.done || isAcked(r.msg, r.frag)) continue;
        link.net.c.resends++;
        this.sendFragment(peer, link, r.msg, r.frag, floor, now);
        continue;
      }
      const msg = peer.sendQ[0];
      if (!msg) break;
      if (msg.done) { peer.sendQ.shift(); continue; }
      const frag = msg.nextFrag++;
      if (msg.nextFrag >= msg.fragCount) peer.sendQ.shift();
      this.sendFragment(peer, link, msg, frag, floor, now);
    }
    this.armRto(peer);
  }

  /** One header object reused for every packet (transmit serialises it at once): no garbage per packet. */
  private readonly scratch: PacketHeader = {
    type: 0, flags: 0, srcMachine: 0, dstMachine: 0, srcEpoch: 0, dstEpoch: 0, pseq: 0, msgId: 0, corrId: 0, orderSeq: 0,
    totalLen: 0, msgFloor: 0, service: 0, fragIndex: 0, fragCount: 0, fragLen: 0, saltHi: 0, saltLo: 0,
  };

  private header(peer: Peer, type: number, flags: number): PacketHeader {
    const h = this.scratch;
    h.type = type; h.flags = flags; h.srcMachine = this.myId; h.dstMachine = peer.id; h.srcEpoch = this.epoch; h.dstEpoch = peer.epoch;
    const pseq = peer.nextPseq++;
    // A tag nonce is salt ‖ low 32 bits of the number: a new salt each time those bits wrap.
    if (pseq % PSEQ_LOW === 0) [peer.saltHi, peer.saltLo] = newSalt();
    h.saltHi = peer.saltHi; h.saltLo = peer.saltLo;
    h.pseq = pseq; h.msgId = 0; h.corrId = 0; h.orderSeq = 0; h.totalLen = 0;
    h.msgFloor = 0; h.service = 0; h.fragIndex = 0; h.fragCount = 0; h.fragLen = 0;
    return h;
  }

  private msgFloor(peer: Peer): number {
    for (const id of peer.active.keys()) return id;
    return peer.nextMsgId;
  }

  private sendFragment(peer: Peer, link: Link, msg: OutMsg, frag: number, floor: number, now: number): void {
    const start = frag * msg.fragSize;
    const end = Math.min(msg.data.length, start + msg.fragSize);
    const h = this.header(peer, T_DATA, msg.flags);
    h.msgId = msg.id; h.corrId = msg.corrId; h.orderSeq = msg.orderSeq; h.totalLen = msg.data.length;
    h.msgFloor = floor; h.service = msg.service; h.fragIndex = frag; h.fragCount = msg.fragCount; h.fragLen = end - start;
    // Acks ride along when there is room (full-size fragments rarely leave any).
    let ackPairs = 0;
    if (peer.ackPending) {
      const room = link.net.mtu - IP_UDP_OVERHEAD - HEADER_BYTES - TAG_BYTES - (end - start);
      ackPairs = Math.min(peer.ranges.r.length >> 1, (room - 2) >> 3);
      if (ackPairs >= 1) {
        h.flags |= F_ACKS;
        peer.ackPending = false;
      } else ackPairs = 0;
    }
    peer.intervalSent++;
    peer.inflight.add(h.pseq, { msg, frag, sentAt: now, link: link.net.index });
    this.transmit(link, h, msg.data, start, end, ackPairs ? peer.ranges.r : null, ackPairs);
  }

  /**
   * Writes header, payload[start, end) and ack block into the link's output; the wire adds the tag
   * and sends. (A range rather than a subarray: no Buffer object per packet.)
   */
  private transmit(link: Link, h: PacketHeader, payload: Buffer | null, start: number, end: number,
    acks: readonly number[] | null, ackPairs: number): void {
    const plen = payload ? end - start : 0;
    const bodyLen = HEADER_BYTES + plen + (acks ? ackBlockBytes(ackPairs) : 0);
    const out = link.out;
    const off = out.begin(bodyLen);
    const b = out.buf;
    writeHeader(b, h, off);
    if (plen) payload!.copy(b, off + HEADER_BYTES, start, end);
    if (acks) writeAckBlock(b, off + HEADER_BYTES + plen, acks, ackPairs);
    out.end();
    const c = link.net.c;
    c.packetsOut++;
    c.bytesOut += bodyLen + TAG_BYTES;
  }

  private sendControl(peer: Peer, link: Link, type: number, payload: Buffer | null, withAcks: boolean): void {
    const h = this.header(peer, type, 0);
    const withBlock = withAcks && peer.ranges.r.length > 0;
    let ackPairs = 0;
    if (withBlock) {
      const room = link.net.mtu - IP_UDP_OVERHEAD - HEADER_BYTES - TAG_BYTES - (payload ? payload.length : 0);
      ackPairs = Math.min(peer.ranges.r.length >> 1, (room - 2) >> 3);
      h.flags |= F_ACKS;
      peer.ackPending = false;
    }
    if (type === T_PING && peer.epoch === 0) h.dstEpoch = 0;
    h.fragLen = payload ? payload.length : 0;
    link.net.c.other++;
    this.transmit(link, h, payload, 0, payload ? payload.length : 0, withBlock ? peer.ranges.r : null, ackPairs);
  }

  private pingAll(peer: Peer): void {
    for (const l of peer.links) if (l) this.ping(peer, l);
  }

  /** Pings every network of a peer now (at most every 50 ms). */
  private probe(peer: Peer): void {
    const now = nowMs();
    if (now - peer.lastEpochPing < 50) return;
    peer.lastEpochPing = now;
    this.pingAll(peer);
  }

  private ping(peer: Peer, link: Link): void {
    const ts = Buffer.allocUnsafe(8);
    ts.writeDoubleBE(nowMs(), 0);
    this.sendControl(peer, link, T_PING, ts, false);
  }

  /**
   * Keeps one timer per peer, due no later than the oldest in-flight packet's RTO. The timer is not
   * cancelled when everything is acknowledged (a request/response would otherwise create and clear a
   * timer per message); a firing with nothing expired just re-arms.
   */
  private armRto(peer: Peer): void {
    const first = peer.inflight.first();
    if (!first) return;
    const due = first.sentAt + peer.links[first.link]!.rtt.rto;
    if (peer.rtoTimer && peer.rtoDue <= due) return;
    if (peer.rtoTimer) clearTimeout(peer.rtoTimer);
    peer.rtoDue = due;
    peer.rtoTimer = setTimeout(() => { peer.rtoTimer = null; this.onRto(peer); }, Math.max(1, due - nowMs()));
  }

  /** Retransmission timer: every packet older than its link's RTO is lost. */
  private onRto(peer: Peer): void {
    if (this.closed) return;
    const now = nowMs();
    const hitLinks = new Set<Link>();
    const q = peer.inflight;
    for (let pseq = q.low; pseq < q.high; pseq++) {
      const f = q.get(pseq);
      if (!f) continue;
      const link = peer.links[f.link]!;
      if (f.sentAt + link.rtt.rto > now) break;
      if (f.msg.done || isAcked(f.msg, f.frag)) { peer.inflight.delete(pseq); continue; }
      // Nothing heard on the link for a whole RTO: a stall (the peer busy, a pause, a cut) rather than
      // many separate losses. Probe with the oldest packet only; the rest stay in flight and are
      // resent by the fast-retransmit rule once acks flow again, or moved if the network fails.
      const stalled = now - link.lastHeard > link.rtt.rto;
      if (stalled && hitLinks.has(link)) continue;
      peer.inflight.delete(pseq);
      link.net.c.timeouts++;
      peer.intervalLost++;
      hitLinks.add(link);
      peer.retxQ.push(f);
    }
    for (const link of hitLinks) {
      link.consecutiveTimeouts++;
      // A link that keeps timing out and has not been heard from for longer than its (un-backed-off)
      // RTO is failing: move traffic now instead of waiting for the keepalive verdict.
      const silentFor = now - link.lastHeard;
      const quiet = Math.min(this.networkTimeoutMs, Math.max(50, 3 * (link.rtt.srtt + 4 * link.rtt.rttvar)));
      if (link.up && link.consecutiveTimeouts >= 2 && silentFor > quiet && this.otherUpLink(peer, link)) {
        this.linkDown(peer, link, now);
      }
      link.rtt.onTimeout();
    }
    if (hitLinks.size) {
      // A single expiry is usually one random loss; repeated expiries without any ack mean the path
      // is congested or failing: then halve the window.
      if ([...hitLinks].some((l) => l.consecutiveTimeouts >= 2)) peer.cwnd = Math.max(32, peer.cwnd >> 1);
      this.log.debug({ peer: peer.name, links: [...hitLinks].map((l) => [l.net.spec.network, l.consecutiveTimeouts, Math.round(now - l.lastHeard), l.rtt.rto]), retx: peer.retxQ.length, inflight: peer.inflight.size }, 'rto');
    }
    // No network known up: probe the next one on every timeout.
    const cur = peer.chosen >= 0 ? peer.links[peer.chosen] : null;
    if (hitLinks.size && cur && !cur.up && !peer.links.some((l) => l && l.up)) {
      const n = peer.links.length;
      for (let k = 1; k <= n; k++) { const i = (peer.chosen + k) % n; if (peer.links[i]) { peer.chosen = i; break; } }
    }
    this.pump(peer);
    this.armRto(peer);
  }

  private otherUpLink(peer: Peer, not: Link): boolean {
    return peer.links.some((l) => l && l !== not && l.up);
  }

  // ---------------------------------------------------------------- network choice

  private chosenLink(peer: Peer): Link | null {
    if (peer.chosen < 0) this.rechoose(peer);
    return peer.chosen >= 0 ? peer.links[peer.chosen]! : null;
  }

  /**
   * The seed's rule: the up interface with the best smoothed RTT, the first one on ties. RTTs within
   * 25% + 0.5 ms of the best count as ties, so near-equal links do not flap and the first is preferred.
   */
  private rechoose(peer: Peer): void {
    let best = Infinity;
    for (const l of peer.links) if (l && l.up && l.rtt.samples) best = Math.min(best, l.rtt.srtt);
    let pick = -1;
    for (const [i, l] of peer.links.entries()) {
      if (!l || !l.up) continue;
      if (best === Infinity || !l.rtt.samples || l.rtt.srtt <= best * 1.25 + 0.5) { pick = i; break; }
    }
    if (pick < 0) {
      // No link known up: try the most recently heard one (or rotate), so traffic probes for a path.
      let newest = -Infinity;
      for (const [i, l] of peer.links.entries()) if (l && l.lastHeard > newest) { newest = l.lastHeard; pick = i; }
      if (newest === -Infinity) {
        const n = peer.links.length;
        for (let k = 1; k <= n; k++) { const i = (peer.chosen + k + n) % n; if (peer.links[i]) { pick = i; break; } }
      }
    }
    if (pick !== peer.chosen && pick >= 0) {
      const prev = peer.chosen;
      peer.chosen = pick;
      this.log.debug({ peer: peer.name, from: prev, to: pick, srtt: peer.links.map((l) => l?.rtt.srtt) }, 'network choice');
      if (prev >= 0) this.rerouteFrom(peer, prev);
    }
  }

  /** In-flight packets sent on a network we are leaving are resent on the new one at once. */
  private rerouteFrom(peer: Peer, linkIndex: number): void {
    const link = peer.links[linkIndex]!;
    if (link.up) return; // a preference change, not a failure: let acks arrive
    const q = peer.inflight;
    for (let pseq = q.low; pseq < q.high; pseq++) {
      const f = q.get(pseq);
      if (!f || f.link !== linkIndex) continue;
      peer.inflight.delete(pseq);
      if (f.msg.done || isAcked(f.msg, f.frag)) continue;
      link.net.c.failures++;
      peer.retxQ.push(f);
    }
  }

  private linkDown(peer: Peer, link: Link, _now: number): void {
    if (!link.up) return;
    link.up = false;
    this.log.info({ peer: peer.name, network: link.net.spec.network }, 'network down');
    this.emit('network-down', { peer: peer.name, network: link.net.spec.network });
    const idx = peer.links.indexOf(link);
    if (peer.chosen === idx) {
      peer.chosen = -1;
      this.rechoose(peer);
    }
    // Whatever is still in flight on the failed network is resent on the chosen one now.
    if (peer.chosen !== idx) this.rerouteFrom(peer, idx);
    this.pump(peer);
  }

  private linkUp(peer: Peer, link: Link): void {
    if (link.up) return;
    link.up = true;
    link.consecutiveTimeouts = 0;
    this.log.info({ peer: peer.name, network: link.net.spec.network }, 'network up');
    this.emit('network-up', { peer: peer.name, network: link.net.spec.network });
    this.rechoose(peer);
    this.pump(peer);
  }

  // ---------------------------------------------------------------- peer state

  private peerUp(peer: Peer): void {
    if (peer.state === 'up') return;
    peer.state = 'up';
    this.log.info({ peer: peer.name, epoch: peer.epoch }, 'peer up');
    this.emit('peer-up', { peer: peer.name, epoch: peer.epoch });
    this.pump(peer);
  }

  private peerDown(peer: Peer, reason: string): void {
    if (peer.state === 'down') return;
    peer.state = 'down';
    this.log.warn({ peer: peer.name, reason }, 'peer down');
    this.failAll(peer, 'GEOMSG_ERR_PEER_DOWN', `peer ${peer.name} is down (${reason})`);
    this.emit('peer-down', { peer: peer.name, reason });
  }

  /** Fails every message to the peer; ordered slots become tombstones so the order stream stays gap-free. */
  private failAll(peer: Peer, code: GeoMessageErrorCode, text: string): void {
    for (const m of [...peer.active.values(), ...peer.awaitingReply.values()]) this.failMsg(peer, m, code, text);
  }

  private failMsg(peer: Peer, msg: OutMsg, code: GeoMessageErrorCode, text: string): void {
    if (msg.timer) { clearTimeout(msg.timer); msg.timer = null; }
    const reject = msg.reject;
    msg.resolve = msg.reject = null;
    peer.awaitingReply.delete(msg.id);
    if (!msg.done) {
      msg.done = true;
      peer.active.delete(msg.id);
      if (msg.orderSeq && msg.service !== SVC_TOMBSTONE && code !== 'GEOMSG_ERR_PEER_RESTART' && code !== 'GEOMSG_ERR_CLOSED') {
        // The receiver waits for every order slot: fill the abandoned one with an empty tombstone.
        const t = this.makeMsg(peer, 'send', SVC_TOMBSTONE, F_ORDERED, 0, msg.orderSeq, Buffer.alloc(0));
        peer.active.set(t.id, t);
        peer.sendQ.push(t);
      }
    }
    if (reject) {
      peer.s.failures++;
      reject(new GeoMessageError(code, text));
    }
  }

  /** New incarnation of the peer: everything of the old session is failed and forgotten. */
  private resetSession(peer: Peer, newEpoch: number): void {
    const old = peer.epoch;
    this.failAll(peer, 'GEOMSG_ERR_PEER_RESTART', `peer ${peer.name} restarted (epoch ${old} → ${newEpoch})`);
    peer.sendQ.length = 0;
    peer.retxQ.length = 0;
    peer.inflight.clear();
    peer.active.clear();
    peer.nextMsgId = 1;
    peer.nextOrderSeq = 1;
    peer.largestAcked = 0;
    peer.cwnd = Math.min(peer.maxCwnd, INITIAL_WINDOW);
    peer.replay = new ReplayWindow();
    peer.ranges = new ReceivedRanges();
    peer.ackPending = false;
    peer.reasm.clear();
    peer.deliveredBelow = 1;
    peer.delivered.clear();
    peer.nextDeliverOrder = 1;
    peer.held.clear();
    peer.epoch = newEpoch;
    peer.s.restarts++;
    this.log.warn({ peer: peer.name, oldEpoch: old, newEpoch }, 'peer restarted');
    this.emit('peer-restart', { peer: peer.name, oldEpoch: old, newEpoch });
  }

  private onTick(): void {
    if (this.closed) return;
    const now = nowMs();
    for (const peer of this.peers.values()) {
      if (now - peer.lastPing >= this.keepaliveMs) {
        peer.lastPing = now;
        this.pingAll(peer);
      }
      for (const l of peer.links) {
        if (l && l.up && now - l.lastHeard > this.networkTimeoutMs) this.linkDown(peer, l, now);
      }
      const pft = peer.spec.promoteFailureTimeoutMs;
      if (pft > 0 && peer.state !== 'down' && now - peer.lastHeard > pft) this.peerDown(peer, 'promote-failure-timeout');
      if (peer.chosen >= 0) this.rechoose(peer);
      for (const [id, r] of peer.reasm) if (now - r.touched > REASM_IDLE_MS) peer.reasm.delete(id);
    }
  }

  // ---------------------------------------------------------------- receiving

  private drop(net: Net, why: DropReason | 'replay' | 'stale' | 'unknownPeer'): void {
    net.c.dropped[why]++;
  }

  /** Every received packet is decoded into this one view (valid until the next packet). */
  private readonly rx: PacketView = newPacketView();

  /** `now`: when the packet's receive batch was read (nowMs(); one clock read per batch). */
  private onPacket(net: Net, buf: Buffer, off: number, len: number, status: ReceivedStatus, now: number): void {
    if (this.closed) return;
    const c = net.c;
    c.packetsIn++;
    c.bytesIn += len;
    const p = this.rx;
    const why = status === 'checked' ? viewPacket(buf, off, len, p)
      : status === 'unchecked' ? checkTag(this.key, off === 0 && len === buf.length ? buf : buf.subarray(off, off + len)) ?? viewPacket(buf, off, len, p)
        : status;
    if (why) return this.drop(net, why);
    if (p.dstMachine !== this.myId) return this.drop(net, 'malformed');
    const peer = this.peersById.get(p.srcMachine);
    if (!peer) return this.drop(net, 'unknownPeer');
    const link = peer.links[net.index];
    if (!link) return this.drop(net, 'unknownPeer');
    // Epochs: a lower source epoch is a stale packet of a previous incarnation; a higher one is a restart.
    if (peer.epoch !== p.srcEpoch) {
      if (peer.epoch === 0) {
        peer.epoch = p.srcEpoch;
      } else if (p.srcEpoch < peer.epoch) {
        return this.drop(net, 'stale');
      } else {
        this.resetSession(peer, p.srcEpoch);
      }
    }
    if (p.type !== T_PING && p.dstEpoch !== this.epoch) {
      // Meant for our previous incarnation: tell the peer who we are now (rate-limited).
      this.probe(peer);
      return this.drop(net, 'stale');
    }
    if (!peer.replay.check(p.pseq)) { c.duplicates++; return this.drop(net, 'replay'); }
    peer.ranges.add(p.pseq);
    peer.lastHeard = now;
    link.lastHeard = now;
    if (peer.state !== 'up') this.peerUp(peer);
    if (p.hasAcks) this.onAcks(peer, p.acks, p.ackCount, now);
    switch (p.type) {
      case T_DATA:
        peer.ackPending = true;
        peer.ackLink = net.index;
        this.scheduleAck(peer);
        this.onData(peer, net, p, now);
        break;
      case T_PING: {
        c.other++;
        this.sendControl(peer, link, T_PONG, Buffer.from(p.buf.subarray(p.payloadOff, p.payloadOff + p.fragLen)), false);
        // Not yet proven both ways on this network: probe now rather than at the next keepalive.
        if (!link.up && now - link.lastProbe > 20) { link.lastProbe = now; this.ping(peer, link); }
        break;
      }
      case T_PONG: {
        c.other++;
        if (p.fragLen === 8) link.rtt.sample(now - p.buf.readDoubleBE(p.payloadOff));
        link.consecutiveTimeouts = 0;
        if (!link.up) this.linkUp(peer, link);
        else if (peer.chosen < 0) this.rechoose(peer);
        break;
      }
      default:
        c.other++;
    }
    // A batching wire calls onBatchEnd after the batch: one pump per peer there, not one per packet.
    if (net.wire.kind !== 'native') this.pump(peer);
    else if (!peer.pumpDeferred) { peer.pumpDeferred = true; this.deferred.push(peer); }
  }

  /** Pumps the peers whose packets arrived in the receive batch just handled. */
  private pumpDeferred(): void {
    const peers = this.deferred;
    if (peers.length === 0) return;
    this.deferred = [];
    for (const peer of peers) peer.pumpDeferred = false; // first: a throwing pump must not strand the others
    for (const peer of peers) this.pump(peer);
  }

  private scheduleAck(peer: Peer): void {
    if (peer.ackScheduled) return;
    peer.ackScheduled = true;
    // One ack per I/O batch: packets read in the same loop turn share it, and a reply produced in this
    // turn carries it piggyback instead.
    setImmediate(() => {
      peer.ackScheduled = false;
      if (!peer.ackPending || this.closed) return;
      const link = peer.links[peer.ackLink] ?? this.chosenLink(peer);
      if (link) this.sendControl(peer, link, T_ACK, null, true);
    });
  }

  /** acks[0, count): the flat ranges of a received ack block (widened here, in place). */
  private onAcks(peer: Peer, acks: number[], count: number, now: number): void {
    if (peer.inflight.size === 0 || count === 0) return;
    // The block carries low 32 bits: widen them against our next number, then check the order.
    const next = peer.nextPseq;
    for (let i = 0; i < count; i++) acks[i] = widenPseq(acks[i]!, next);
    for (let i = 0; i < count; i += 2) if (acks[i + 1]! > acks[i]!) return;
    let newest: Inflight | null = null;
    let newestPseq = 0;
    // Merge the in-flight packets (ascending) with the ranges (descending, walked from the lowest):
    // only packets actually in flight are looked at, never the already-acknowledged span of a range.
    const maxHi = acks[0]!;
    let ri = count - 2;
    const q = peer.inflight;
    for (let pseq = q.low; pseq < q.high && pseq <= maxHi; pseq++) {
      const f = q.get(pseq);
      if (!f) continue;
      while (ri >= 0 && acks[ri]! < pseq) ri -= 2;
      if (ri < 0) break;
      if (pseq < acks[ri + 1]!) continue; // in a hole below range ri
      peer.inflight.delete(pseq);
      if (pseq > newestPseq) { newestPseq = pseq; newest = f; }
      this.fragAcked(peer, f);
    }
    if (!newest) return;
    const link = peer.links[newest.link]!;
    link.rtt.sample(now - newest.sentAt);
    link.consecutiveTimeouts = 0;
    if (!link.up) this.linkUp(peer, link); // an acknowledged packet proves the round trip
    if (newestPseq > peer.largestAcked) peer.largestAcked = newestPseq;
    this.adjustWindow(peer, link, now - newest.sentAt, now);
    // Fast retransmit: packets far enough below the newest acknowledged one are lost.
    const limit = peer.largestAcked - REORDER_THRESHOLD;
    for (let pseq = q.low; pseq < q.high && pseq <= limit; pseq++) {
      const f = q.get(pseq);
      if (!f) continue;
      peer.inflight.delete(pseq);
      peer.intervalLost++;
      if (f.msg.done || isAcked(f.msg, f.frag)) continue;
      peer.retxQ.push(f);
    }
  }

  /**
   * Window control, once per RTT: shrink by 20% when our own queue is building (the interval's
   * smallest RTT sample above the path minimum by more than max(queueTargetMs, min RTT)) or when more than 20% of the interval's packets were
   * lost (a tail-drop bottleneck); grow by half while the queue is small (start-up), else by 1/8.
   * Moderate random loss (a WAN with 1–10% loss) does not shrink it; repeated timeouts halve it (onRto).
   */
  private adjustWindow(peer: Peer, link: Link, sample: number, now: number): void {
    if (sample < link.minRtt || now - link.minRttAt > 10_000) { link.minRtt = sample; link.minRttAt = now; }
    if (sample < peer.intervalMinRtt) peer.intervalMinRtt = sample;
    if (now < peer.nextWindowAdjust) return;
    peer.nextWindowAdjust = now + Math.max(1, link.rtt.srtt);
    // The smallest sample of the interval shows a standing queue; scheduling hiccups only add spikes.
    const queueing = peer.intervalMinRtt - link.minRtt;
    peer.intervalMinRtt = Infinity;
    const target = Math.max(this.queueTarget, link.minRtt);
    const lossy = peer.intervalSent >= 20 && peer.intervalLost > 0.2 * peer.intervalSent;
    if (this.log.isLevelEnabled('trace')) this.log.trace({ peer: peer.name, cwnd: peer.cwnd, srtt: link.rtt.srtt, minRtt: link.minRtt, sent: peer.intervalSent, lost: peer.intervalLost, inflight: peer.inflight.size }, 'window');
    peer.intervalSent = peer.intervalLost = 0;
    if (queueing > target || lossy) peer.cwnd = Math.max(16, Math.floor(peer.cwnd * 0.8));
    else if (queueing < target / 2) peer.cwnd = Math.min(peer.maxCwnd, Math.ceil(peer.cwnd * 1.5));
    else peer.cwnd = Math.min(peer.maxCwnd, peer.cwnd + Math.max(1, peer.cwnd >> 3));
  }

  private fragAcked(peer: Peer, f: Inflight): void {
    const m = f.msg;
    if (m.done || isAcked(m, f.frag)) return;
    if (m.acked) m.acked[f.frag] = 1;
    if (++m.ackedCount < m.fragCount) return;
    m.done = true;
    peer.active.delete(m.id);
    if (m.kind !== 'request') {
      if (m.timer) clearTimeout(m.timer);
      const resolve = m.resolve;
      m.resolve = m.reject = null;
      resolve?.(undefined);
    }
  }

  private onData(peer: Peer, net: Net, p: PacketView, now: number): void {
    // The sender's floor lets us forget ids it will never send again.
    if (p.msgFloor > peer.deliveredBelow) {
      for (let id = peer.deliveredBelow; id < p.msgFloor && peer.delivered.size; id++) peer.delivered.delete(id);
      for (const id of peer.reasm.keys()) if (id < p.msgFloor) peer.reasm.delete(id);
      peer.deliveredBelow = p.msgFloor;
      while (peer.delivered.delete(peer.deliveredBelow)) peer.deliveredBelow++;
    }
    if (p.msgId < peer.deliveredBelow || peer.delivered.has(p.msgId)) { net.c.duplicates++; return; }
    let data: Buffer;
    // Requests and one-way messages of a service with its own payload memory are received into it
    // (`lent`), except a one-packet message on a stable wire, whose packet buffer is the handler's.
    const mem = p.flags & F_REPLY ? null : this.payloadMem.get(p.service) ?? null;
    let lent: PayloadMemory | null = null;
    if (p.fragCount === 1) {
      if (p.fragLen !== p.totalLen) return this.drop(net, 'malformed');
      // The native wire reuses its receive buffer after the batch: the handler may keep the payload.
      const payload = p.buf.subarray(p.payloadOff, p.payloadOff + p.fragLen);
      if (net.wire.stableBuffers) data = payload;
      else if (mem) { data = mem.take(p.fragLen); payload.copy(data); lent = mem; }
      else data = Buffer.from(payload);
    } else {
      let r = peer.reasm.get(p.msgId);
      if (!r) {
        if (p.totalLen > p.fragCount * 0xffff || p.totalLen > this.maxMessage) return this.drop(net, 'malformed');
        // An abandoned reassembly's memory is not given back: the GC takes it.
        const buf = mem ? mem.take(p.totalLen) : Buffer.allocUnsafe(p.totalLen);
        r = { buf, mem, got: new Uint8Array(p.fragCount), count: p.fragCount, missing: p.fragCount, touched: 0 };
        peer.reasm.set(p.msgId, r);
      }
      if (r.count !== p.fragCount || r.buf.length !== p.totalLen) return this.drop(net, 'malformed');
      if (r.got[p.fragIndex]) { net.c.duplicates++; return; }
      // Fragments other than the last are full: their size fixes every offset.
      const off = p.fragIndex === p.fragCount - 1 ? p.totalLen - p.fragLen : p.fragIndex * p.fragLen;
      if (off < 0 || off + p.fragLen > p.totalLen) return this.drop(net, 'malformed');
      p.buf.copy(r.buf, off, p.payloadOff, p.payloadOff + p.fragLen);
      r.got[p.fragIndex] = 1;
      r.touched = now;
      if (--r.missing > 0) return;
      peer.reasm.delete(p.msgId);
      data = r.buf;
      lent = r.mem;
    }
    // Delivered: remember the id so retransmits and reroutes are not delivered again.
    if (p.msgId === peer.deliveredBelow) {
      peer.deliveredBelow++;
      while (peer.delivered.delete(peer.deliveredBelow)) peer.deliveredBelow++;
    } else peer.delivered.add(p.msgId);
    peer.s.rpcsIn++;
    peer.s.bytesIn += data.length;
    if (p.flags & F_REPLY) return this.onReply(peer, p, data);
    const msg: IncomingMessage = { peer: peer.name, service: p.service, payload: data, ordered: (p.flags & F_ORDERED) !== 0 };
    if (p.flags & F_ORDERED) {
      if (p.orderSeq < peer.nextDeliverOrder) return; // slot already filled (its tombstone or original)
      peer.held.set(p.orderSeq, { msg, flags: p.flags, msgId: p.msgId, mem: lent });
      let h: HeldOrdered | undefined;
      while ((h = peer.held.get(peer.nextDeliverOrder))) {
        peer.held.delete(peer.nextDeliverOrder++);
        this.dispatch(peer, h.msg, h.flags, h.msgId, h.mem);
      }
      return;
    }
    this.dispatch(peer, msg, p.flags, p.msgId, lent);
  }

  private onReply(peer: Peer, p: PacketView, data: Buffer): void {
    const req = peer.awaitingReply.get(p.corrId);
    if (!req) return; // timed out or failed already
    peer.awaitingReply.delete(p.corrId);
    peer.s.replies++;
    // The reply proves the request arrived whole.
    if (!req.done) { req.done = true; peer.active.delete(req.id); }
    if (req.timer) clearTimeout(req.timer);
    const { resolve, reject } = req;
    req.resolve = req.reject = null;
    if (p.flags & F_ERROR) {
      let code: GeoMessageErrorCode = 'GEOMSG_ERR_REMOTE';
      let text = data.toString('utf8');
      try {
        const e = JSON.parse(text) as { code?: string; message?: string };
        if (e.code === 'GEOMSG_ERR_NO_HANDLER') code = e.code;
        text = e.message ?? text;
      } catch { /* plain text */ }
      peer.s.failures++;
      reject?.(new GeoMessageError(code, `${peer.name}: ${text}`));
    } else resolve?.(data);
  }

  /** Runs the service's handler; `lent` gets the payload back once the handler is done with it. */
  private dispatch(peer: Peer, msg: IncomingMessage, flags: number, msgId: number, lent: PayloadMemory | null): void {
    if (msg.service === SVC_TOMBSTONE) return;
    const isRequest = (flags & F_REQUEST) !== 0;
    const h = this.handlers.get(msg.service);
    if (!h) {
      if (isRequest) this.reply(peer, msgId, null, { code: 'GEOMSG_ERR_NO_HANDLER', message: `no handler for service ${msg.service} on ${this.opts.machine}` });
      else this.log.warn({ peer: peer.name, service: msg.service }, 'message for a service without handler dropped');
      lent?.give(msg.payload);
      return;
    }
    let res: ReturnType<Handler>;
    try {
      res = h(msg);
    } catch (err) {
      lent?.give(msg.payload);
      if (isRequest) this.reply(peer, msgId, null, { code: 'GEOMSG_ERR_REMOTE', message: (err as Error)?.message ?? String(err) });
      else this.log.warn({ err, peer: peer.name, service: msg.service }, 'handler failed');
      return;
    }
    if (res && typeof (res as Promise<unknown>).then === 'function') {
      (res as Promise<Payload | void>).then(
        (v) => {
          lent?.give(msg.payload);
          if (isRequest) this.reply(peer, msgId, v ?? null, null);
        },
        (err: unknown) => {
          lent?.give(msg.payload);
          if (isRequest) this.reply(peer, msgId, null, { code: 'GEOMSG_ERR_REMOTE', message: (err as Error)?.message ?? String(err) });
          else this.log.warn({ err, peer: peer.name, service: msg.service }, 'handler failed');
        });
    } else {
      lent?.give(msg.payload);
      if (isRequest) this.reply(peer, msgId, (res as Payload | undefined) ?? null, null);
    }
  }

  private reply(peer: Peer, reqId: number, payload: Payload | null, err: { code: string; message: string } | null): void {
    if (this.closed || peer.state === 'down') return;
    let data = err ? Buffer.from(JSON.stringify(err)) : payload ? toBuffer(payload) : Buffer.alloc(0);
    let flags = F_REPLY | (err ? F_ERROR : 0);
    try {
      this.checkSize(peer, data.length);
    } catch (e) {
      data = Buffer.from(JSON.stringify({ code: 'GEOMSG_ERR_REMOTE', message: (e as Error).message }));
      flags = F_REPLY | F_ERROR;
    }
    this.enqueue(peer, this.makeMsg(peer, 'reply', 0, flags, reqId, 0, data));
  }

  // ---------------------------------------------------------------- statistics

  stats(): GeoMessageStats {
    const machines: MachineStats[] = [...this.peers.values()].map((p) => ({
      machine: p.name, state: p.state, epoch: p.epoch,
      network: p.chosen >= 0 ? p.links[p.chosen]!.net.spec.network : null,
      ...p.s,
    }));
    const networks: NetworkStats[] = this.nets.map((n) => ({
      network: n.spec.network,
      local: `${n.spec.address}:${n.wire.port}`,
      io: n.wire.describe(),
      mtu: n.mtu,
      ...n.c,
      ...n.wire.gsoStats(),
      dropped: { ...n.c.dropped },
      links: [...this.peers.values()].flatMap((p) => {
        const l = p.links[n.index];
        return l ? [{ peer: p.name, up: l.up, srttMs: l.rtt.samples ? l.rtt.srtt : null, rttvarMs: l.rtt.samples ? l.rtt.rttvar : null, rtoMs: l.rtt.rto }] : [];
      }),
    }));
    return { machine: this.opts.machine, epoch: this.epoch, time: Date.now(), uptimeMs: nowMs() - this.started, machines, networks };
  }
}

/** Opens GeoMessage: binds one socket per local endpoint and starts greeting the peers. */
export async function openGeoMessage(opts: GeoMessageOptions): Promise<GeoMessage> {
  const gm = new GeoMessageTransport(opts);
  await gm.open();
  return gm;
}
