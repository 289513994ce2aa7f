/**
 * What the transport's mechanisms share: this machine's identity and key, the settings with their
 * defaults applied, the local networks, the peer sessions, the registered handlers, and the reused
 * packet header and view (one of each, so no object is made per packet). The transport owns one.
 */
import type { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { silentLogger, type Logger } from '../util/log.js';
import type { GeoMessageOptions, Handler, PayloadMemory } from './api.js';
import { machineId, newPacketView, type PacketHeader, type PacketView } from './packet.js';
import type { Net, PeerSession } from './session.js';

const EPOCH_BASE_MS = Date.UTC(2025, 0, 1);

/** The transport's clock: monotonic milliseconds. */
export function nowMs(): number { return performance.now(); }

function defaultEpoch(): number {
  return (Math.floor((Date.now() - EPOCH_BASE_MS) / 100) >>> 0) || 1;
}

export class TransportContext {
  readonly machine: string;
  readonly myId: number;
  readonly epoch: number;
  readonly key: Buffer;
  readonly log: Logger;
  readonly keepaliveMs: number;
  readonly networkTimeoutMs: number;
  readonly windowPackets: number;
  readonly windowBytes: number;
  readonly rtoMin: number;
  readonly rtoMax: number;
  readonly maxMessage: number;
  readonly queueTarget: number;
  readonly nets: Net[] = [];
  readonly peers = new Map<string, PeerSession>();
  readonly peersById = new Map<number, PeerSession>();
  readonly handlers = new Map<number, Handler>();
  readonly payloadMem = new Map<number, PayloadMemory>();
  /** Peers to pump once the current receive batch has been handled (PeerSession.pumpDeferred). */
  deferred: PeerSession[] = [];
  closed = false;
  /** One header object reused for every packet (transmit serialises it at once): no garbage per packet. */
  readonly header: PacketHeader = {
    type: 0, flags: 0, srcMachine: 0, dstMachine: 0, srcEpoch: 0, dstEpoch: 0, pseq: 0, msgId: 0, corrId: 0, orderSeq: 0,
    totalLen: 0, msgFloor: 0, service: 0, fragIndex: 0, fragCount: 0, fragLen: 0, saltHi: 0, saltLo: 0,
  };
  /** Every received packet is decoded into this one view (valid until the next packet). */
  readonly rx: PacketView = newPacketView();

  /**
   * `events`: where peer and network events are emitted (the transport itself). `rtoExpired`: what
   * a peer's retransmission timer runs (loss.ts; passed in so the sender that arms the timer need
   * not import the loss detector that imports the sender).
   */
  constructor(opts: GeoMessageOptions, readonly events: EventEmitter, readonly rtoExpired: (peer: PeerSession) => void) {
    this.machine = opts.machine;
    this.key = opts.key;
    this.log = opts.logger ?? silentLogger;
    this.myId = machineId(opts.machine);
    this.epoch = opts.epoch ?? defaultEpoch();
    this.keepaliveMs = opts.keepaliveMs ?? 1000;
    this.networkTimeoutMs = opts.networkTimeoutMs ?? 3 * this.keepaliveMs;
    this.windowPackets = opts.windowPackets ?? 4096;
    this.windowBytes = opts.windowBytes ?? 4 << 20;
    this.rtoMin = opts.rtoMinMs ?? 20;
    this.rtoMax = opts.rtoMaxMs ?? 2000;
    this.maxMessage = opts.maxMessageBytes ?? 64 << 20;
    this.queueTarget = opts.queueTargetMs ?? 20;
  }
}
