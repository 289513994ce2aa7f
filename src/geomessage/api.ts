/**
 * The GeoMessage API: the options it opens with, the messages and handlers it carries, the events it
 * emits and the `GeoMessage` interface itself. Types only; transport.ts implements them.
 */
import type { EventEmitter } from 'node:events';
import type { Logger } from '../util/log.js';
import type { GeoMessageStats } from './stats.js';
import type { WireChoice } from './wire.js';

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

