import { isIPv6 } from 'node:net';
import { GeormError } from '../util/errors.js';
import { loadedAddon, nativeUnavailableReason } from './index.js';

/**
 * UDP sockets that move datagrams in batches (native-bindings/udp.c): one sendmmsg() per batch with
 * runs of equal-sized packets sent as UDP GSO messages, recvmmsg() with UDP_GRO on receipt, and the
 * GeoMessage packet tag (ChaCha20-Poly1305 as a MAC) computed and checked in C. Built for
 * GeoMessage's packet format (src/geomessage/packet.ts): the nonce is read from the header and the
 * last TAG_BYTES of every packet are its tag.
 */

/** What the receiver found for each packet of a batch. */
export const RECV_OK = 0;
export const RECV_AUTH = 1;
export const RECV_SHORT = 2;
export const RECV_TRUNCATED = 3;

/** Largest packet count one `send` takes. */
export const SEND_MAX_PACKETS = 1024;
/** Receive buffer: 32 slots of 64 KiB (one datagram or one GRO run each); 4 such batches per wakeup at most, so one busy socket cannot hold the event loop for long. */
const RECV_BUFFER_BYTES = 32 * 65536;
/** Packets per received batch at most: a GRO run holds up to 64 segments. */
const RECV_MAX_PACKETS = 32 * 64;

export interface BatchSocketOptions {
  address: string;
  /** 0 = any free port. */
  port: number;
  /** SO_RCVBUF / SO_SNDBUF (forced past the sysctl limit when privileged). */
  bufferBytes: number;
  /** 32-byte tag key (packet.ts tagKey): packets are signed on send and checked on receipt; null = no tags. */
  key: Buffer | null;
  /**
   * Called once per received batch. Packet i is buf[meta[3i] … meta[3i] + meta[3i+1]) with status
   * meta[3i+2] (RECV_*). The bytes are only valid during the call: copy what must outlive it.
   */
  onBatch(buf: Buffer, meta: Uint32Array, count: number): void;
  /** Called once after `waitWritable()`, when the socket can take packets again. */
  onWritable?(): void;
  /**
   * GSO after the kernel refused a GSO message (a path MTU below the segment size, an IPsec route):
   * 'retry' (default) sends without GSO for a while and then tries one GSO message again, waiting
   * 1 s after a first refusal and twice as long after each further one in a row, up to 60 s;
   * 'never' leaves GSO off for good after a refusal; 'off' never uses GSO (benchmarks).
   */
  gso?: GsoPolicy;
  /** With gso 'retry': the wait after a first refusal and its cap, in ms (tests; default 1000, 60000). */
  gsoWaitMs?: { first: number; max: number };
}

export type GsoPolicy = 'retry' | 'never' | 'off';

/** A destination prepared once (its sockaddr bytes). */
export interface BatchTarget { readonly sockaddr: Buffer }

export interface BatchSocket {
  readonly port: number;
  /**
   * Whether runs are sent as GSO messages now: false while a refusal has GSO off and until a GSO
   * message has passed again after it.
   */
  readonly gso: boolean;
  /** GSO messages the kernel refused (each batch was sent again without GSO: nothing lost). */
  readonly gsoRefusals: number;
  /** Times GSO came back after refusals (a later GSO message passed). */
  readonly gsoReenabled: number;
  /** Whether the kernel may hand over coalesced runs. */
  readonly gro: boolean;
  /**
   * Whether tags go through OpenSSL's low-level ChaCha20/Poly1305 functions (found in Node's own
   * OpenSSL and checked against EVP at open) rather than EVP; GEORM_GEOMSG_TAG_EVP=1 forces EVP.
   */
  readonly directTags: boolean;
  target(address: string, port: number): BatchTarget;
  /**
   * Signs and sends `count` packets found at (meta[2i], meta[2i+1]) in buf (each packet's last 16
   * bytes are overwritten with its tag). Returns how many the kernel took; the rest are lost, as
   * datagrams dropped by a failed route would be. When the socket buffer is full it returns
   * -(taken + 1) instead: the rest were not sent and may be sent again after `waitWritable()`.
   */
  send(buf: Buffer, meta: Uint32Array, count: number, to: BatchTarget): number;
  /** Asks for one `onWritable` call when the socket can take packets again. */
  waitWritable(): void;
  close(): void;
}

/** True when batch sockets can be opened (the addon loaded and has them). */
export function batchSocketsAvailable(): boolean {
  return typeof loadedAddon()?.udpOpen === 'function';
}

/** Opens and binds a batch socket and starts receiving. Errors carry errno `code`s (EADDRINUSE…). */
export function openBatchSocket(o: BatchSocketOptions): BatchSocket {
  const a = loadedAddon();
  if (!a || typeof a.udpOpen !== 'function') {
    throw new GeormError('NATIVE_UNAVAILABLE', `native addon unavailable: ${nativeUnavailableReason ?? 'built without UDP batches'}`);
  }
  const ipv6 = isIPv6(o.address);
  const key = o.key ? a.macKey(o.key) : null;
  const [sock, port] = a.udpOpen(ipv6, o.address, o.port, o.bufferBytes);
  const rbuf = Buffer.allocUnsafe(RECV_BUFFER_BYTES);
  const meta = new Uint32Array(3 * RECV_MAX_PACKETS);
  let closed = false;
  a.udpRecvStart(sock, rbuf, meta, key, (count) => o.onBatch(rbuf, meta, count), () => o.onWritable?.());
  // 'retry' with the default waits is the addon's default (udp.c GSO_FIRST_MS, GSO_MAX_MS).
  try {
    if (o.gso === 'never' || o.gso === 'off') a.udpGso(sock, o.gso === 'off' ? -1 : 0, 0);
    else if (o.gsoWaitMs) a.udpGso(sock, o.gsoWaitMs.first, o.gsoWaitMs.max);
  } catch (err) {
    a.udpClose(sock);
    throw err;
  }
  return {
    port,
    get gso() { return !closed && a.udpInfo(sock)[0]; },
    get gro() { return !closed && a.udpInfo(sock)[1]; },
    get gsoRefusals() { return closed ? 0 : a.udpInfo(sock)[2]; },
    get gsoReenabled() { return closed ? 0 : a.udpInfo(sock)[3]; },
    get directTags() { return !closed && a.udpInfo(sock)[4]; },
    target(address: string, p: number): BatchTarget {
      if (isIPv6(address) !== ipv6) throw new GeormError('GEOMSG_ERR_CONFIG', `address ${address} is not of the socket's family (${ipv6 ? 'IPv6' : 'IPv4'})`);
      return { sockaddr: a.udpAddress(ipv6, address, p) };
    },
    send(buf, m, count, to) {
      if (closed) return 0;
      return a.udpSend(sock, buf, m, count, to.sockaddr, key);
    },
    waitWritable() {
      if (!closed) a.udpWaitWritable(sock);
    },
    close() {
      if (closed) return;
      closed = true;
      a.udpClose(sock);
    },
  };
}
