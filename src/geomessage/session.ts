/**
 * The state of one peer session, as data: what we send to the peer (SendState), what we receive from
 * it (ReceiveState), its congestion window and the links (one per shared network) it is reached on.
 * The mechanisms that act on this state live in their own files (sender, loss, receiver, reassembly,
 * rpc, path, liveness); this file only declares it and knows how to reset it on a peer restart.
 */
import type { PeerSpec, IncomingMessage, NetworkEndpoint, PayloadMemory } from './api.js';
import { CongestionWindow, PathMinRtt } from './congestion.js';
import { InflightQueue } from './inflight.js';
import { fragmentPayloadSize, machineId, newSalt } from './packet.js';
import { ReceivedRanges, ReplayWindow } from './replay.js';
import type { RttEstimator } from './rtt.js';
import { emptyDrops, type DropStats, type MachineStats } from './stats.js';
import type { PacketOut, Wire } from './wire.js';
import type { Logger } from '../util/log.js';

/** Internal service number of an ordered slot whose message was abandoned (keeps the order stream gap-free). */
export const SVC_TOMBSTONE = 0xffff;

export type MsgKind = 'send' | 'request' | 'reply';

/** A message we send, from submission until it is acknowledged (or answered, for a request). */
export interface OutMsg {
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

/** One transmitted data packet awaiting its ack: which fragment, when, on which link (index). */
export interface Inflight { msg: OutMsg; frag: number; sentAt: number; link: number }

export function isAcked(m: OutMsg, frag: number): boolean {
  return m.acked ? m.acked[frag] === 1 : m.ackedCount > 0;
}

/** A multi-fragment message being received. `mem`: where `buf` came from (null: fresh memory). */
export interface Reasm { buf: Buffer; mem: PayloadMemory | null; got: Uint8Array; count: number; missing: number; touched: number }

/** An ordered message waiting for its predecessors. `mem`: where the payload goes back after the handler (null: the handler's to keep). */
export interface HeldOrdered { msg: IncomingMessage; flags: number; msgId: number; mem: PayloadMemory | null }

/** Per local network counters; the keys are those of NetworkStats (stats.ts). */
export interface NetCounters {
  packetsOut: number; packetsIn: number; bytesOut: number; bytesIn: number;
  resends: number; timeouts: number; failures: number; sendWaits: number; duplicates: number; other: number;
  dropped: DropStats;
}

export function newNetCounters(): NetCounters {
  return { packetsOut: 0, packetsIn: 0, bytesOut: 0, bytesIn: 0, resends: 0, timeouts: 0, failures: 0, sendWaits: 0, duplicates: 0, other: 0, dropped: emptyDrops() };
}

/** One local network: its socket (wire) and counters. */
export interface Net {
  index: number;
  spec: NetworkEndpoint;
  mtu: number;
  wire: Wire;
  counters: NetCounters;
}

/** One peer as reached on one network. */
export interface Link {
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
  minRtt: PathMinRtt;
}

export function newLink(net: Net, address: string, port: number, out: PacketOut, rtt: RttEstimator): Link {
  return { net, address, port, out, rtt, up: false, lastHeard: -Infinity, lastProbe: -Infinity, consecutiveTimeouts: 0, minRtt: new PathMinRtt() };
}

/** Everything about the messages and packets we send to the peer. */
export class SendState {
  /** Packet numbers are per peer, so the peer sees gaps only where packets were lost. */
  nextPseq = 1;
  /** Nonce salt of this session's packet tags (packet.ts): random, redrawn when nextPseq's low half wraps. */
  saltHi: number;
  saltLo: number;
  nextMsgId = 1;
  nextOrderSeq = 1;
  /** Messages with fragments not yet sent once. */
  readonly queue: OutMsg[] = [];
  /** Lost packets to send again, before anything new. */
  readonly resendQueue: Inflight[] = [];
  readonly inflight = new InflightQueue<Inflight>();
  /** Messages not yet fully acknowledged, ascending id: the first key is the message floor. */
  readonly active = new Map<number, OutMsg>();
  readonly awaitingReply = new Map<number, OutMsg>();
  largestAcked = 0;
  rtoTimer: NodeJS.Timeout | null = null;
  rtoDue = 0;

  constructor() {
    [this.saltHi, this.saltLo] = newSalt();
  }

  /**
   * A new incarnation of the peer: its messages were failed already; forget them and restart the
   * message and order numbering. Packet numbers and the tag salt continue (they never repeat).
   */
  reset(): void {
    this.queue.length = 0;
    this.resendQueue.length = 0;
    this.inflight.clear();
    this.active.clear();
    this.nextMsgId = 1;
    this.nextOrderSeq = 1;
    this.largestAcked = 0;
  }
}

/** Everything about the packets and messages we receive from the peer. */
export class ReceiveState {
  replay = new ReplayWindow();
  /** Packet numbers received, the source of our ack blocks. */
  ranges = new ReceivedRanges();
  ackPending = false;
  ackScheduled = false;
  /** Network (index) of the last data packet: the ack goes back on it. */
  ackLink = 0;
  readonly reasm = new Map<number, Reasm>();
  /** Every message id below this was delivered (or will never be sent again). */
  deliveredBelow = 1;
  /** Ids at or above deliveredBelow already delivered. */
  readonly delivered = new Set<number>();
  nextDeliverOrder = 1;
  readonly held = new Map<number, HeldOrdered>();

  /** A new incarnation of the peer: a fresh replay window and message numbering. */
  reset(): void {
    this.replay = new ReplayWindow();
    this.ranges = new ReceivedRanges();
    this.ackPending = false;
    this.reasm.clear();
    this.deliveredBelow = 1;
    this.delivered.clear();
    this.nextDeliverOrder = 1;
    this.held.clear();
  }
}

export type MachineCounters = Omit<MachineStats, 'machine' | 'state' | 'epoch' | 'network'>;

export interface SessionLimits { windowPackets: number; windowBytes: number; queueTargetMs: number }

/** One peer machine: identity, liveness, links, and its send/receive state. */
export class PeerSession {
  readonly id: number;
  readonly links: (Link | null)[];
  readonly fragSize: number;
  readonly send = new SendState();
  readonly recv = new ReceiveState();
  readonly window: CongestionWindow;
  state: 'up' | 'down' | 'unknown' = 'unknown';
  epoch = 0;
  lastHeard: number;
  /** Index of the link traffic goes on; -1 when none is chosen yet. */
  chosen = -1;
  /** Queued to be pumped at the end of the current receive batch. */
  pumpDeferred = false;
  /** Last unscheduled ping (probe) and last keepalive. */
  lastEpochPing = -Infinity;
  lastPing = -Infinity;
  readonly counters: MachineCounters = {
    rpcsOut: 0, rpcsIn: 0, bytesOut: 0, bytesIn: 0, replies: 0, failures: 0, fragmented: 0, fragments: 0, restarts: 0,
  };

  constructor(readonly spec: PeerSpec, links: (Link | null)[], now: number, limits: SessionLimits, log: Logger) {
    this.id = machineId(spec.machine);
    this.links = links;
    let mtu = Infinity;
    for (const l of links) if (l) mtu = Math.min(mtu, l.net.mtu);
    this.fragSize = fragmentPayloadSize(mtu);
    this.lastHeard = now;
    // In-flight bytes stay within windowBytes: with jumbo frames 4096 packets would be 36 MB, more
    // than a receive buffer usually holds.
    const maxPackets = Math.max(16, Math.min(limits.windowPackets, Math.floor(limits.windowBytes / this.fragSize)));
    this.window = new CongestionWindow({ maxPackets, initialPackets: limits.windowPackets, queueTargetMs: limits.queueTargetMs, log, peer: spec.machine });
  }

  get name(): string { return this.spec.machine; }
}
