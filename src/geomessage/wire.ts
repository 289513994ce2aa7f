import { createSocket, type Socket } from 'node:dgram';
import { isIP, isIPv6 } from 'node:net';
import { lookup as dnsLookup, type LookupOneOptions } from 'node:dns';
import {
  batchSocketsAvailable, openBatchSocket, RECV_AUTH, RECV_OK, RECV_SHORT, SEND_MAX_PACKETS,
  type BatchSocket, type BatchTarget,
} from '../native/udp.js';
import { authFor, PACKET_HEADROOM, TAG_BYTES, type DropReason } from './packet.js';

/**
 * The datagram layer under GeoMessage: one Wire per local network endpoint. The transport writes each
 * packet's body (header, payload, acks) into the buffer a PacketOut hands it; the wire adds the tag
 * and sends. Two implementations with the same wire format:
 *
 *   native  the addon's batch sockets: packets written in one JS turn leave in one sendmmsg() (GSO
 *           runs), arrive by recvmmsg() (GRO runs), and are signed and checked in C.
 *   dgram   Node's dgram, one send per packet, tags in JS: the fallback without the addon.
 */
export type WireKind = 'native' | 'dgram';
/** Which wire to use: 'auto' = native when the addon has batch sockets, else dgram. */
export type WireChoice = WireKind | 'auto';

/** A received packet's state: tag still to check, already checked (native), or why it is refused. */
export type ReceivedStatus = 'unchecked' | 'checked' | DropReason;

export interface PacketOut {
  /** The buffer the packet begun last is written into (valid until `end`). */
  readonly buf: Buffer;
  /** Begins a packet whose body (all but the tag) is bodyLen bytes; returns the body's offset in `buf`. */
  begin(bodyLen: number): number;
  /** Ends the packet begun last: it is signed and sent now (dgram) or at the end of this JS turn (native). */
  end(): void;
}

export interface Wire {
  readonly kind: WireKind;
  readonly port: number;
  /** False when received buffers are reused after the receive callback: copy what you keep. */
  readonly stableBuffers: boolean;
  /** How packets move, for statistics: 'dgram', 'native', 'native+gso+gro'. */
  describe(): string;
  out(address: string, port: number): PacketOut;
  close(): Promise<void>;
}

export interface WireOptions {
  address: string;
  port: number;
  bufferBytes: number;
  key: Buffer;
  onPacket(buf: Buffer, status: ReceivedStatus): void;
  /** Packets the kernel refused (full buffer, unreachable route): lost, retransmission recovers them. */
  onSendFailure(count: number, err?: Error): void;
}

/** Opens the chosen wire; 'auto' falls back to dgram without the addon (GEORM_GEOMSG_IO=dgram forces it). */
export async function openWire(choice: WireChoice, o: WireOptions): Promise<Wire> {
  const env = process.env.GEORM_GEOMSG_IO;
  const want = choice === 'auto' && (env === 'dgram' || env === 'native') ? env : choice;
  if (want === 'native' || (want === 'auto' && batchSocketsAvailable())) return new NativeWire(o);
  return openDgramWire(o);
}

// ------------------------------------------------------------------------------------------ native

/** Bytes buffered per destination before a batch is sent early (more than one GSO message's worth). */
const BATCH_BYTES = 512 * 1024;
/** RECV_* codes of the addon, as the transport names them (a truncated datagram is malformed). */
const STATUS: ReceivedStatus[] = [];
STATUS[RECV_OK] = 'checked';
STATUS[RECV_AUTH] = 'auth';
STATUS[RECV_SHORT] = 'short';

class NativeWire implements Wire {
  readonly kind = 'native';
  readonly stableBuffers = false;
  readonly port: number;
  private readonly sock: BatchSocket;

  constructor(private readonly o: WireOptions) {
    this.sock = openBatchSocket({
      address: o.address, port: o.port, bufferBytes: o.bufferBytes, key: o.key,
      onBatch: (buf, meta, count) => {
        for (let i = 0; i < count; i++) {
          const off = meta[3 * i]!;
          o.onPacket(buf.subarray(off, off + meta[3 * i + 1]!), STATUS[meta[3 * i + 2]!] ?? 'malformed');
        }
      },
    });
    this.port = this.sock.port;
  }

  describe(): string {
    const s = this.sock;
    return `native${s.gso ? '+gso' : ''}${s.gro ? '+gro' : ''}`;
  }

  out(address: string, port: number): PacketOut {
    return new NativeOut(this.sock, this.sock.target(address, port), this.o);
  }

  close(): Promise<void> {
    this.sock.close();
    return Promise.resolve();
  }
}

/** Packets for one destination, laid out back to back and sent together at the end of the turn. */
class NativeOut implements PacketOut {
  readonly buf = Buffer.allocUnsafe(BATCH_BYTES);
  private readonly meta = new Uint32Array(2 * SEND_MAX_PACKETS);
  private pos = 0;
  private count = 0;
  private pendingLen = 0;
  private scheduled = false;
  private readonly flushFn = (): void => { this.scheduled = false; this.flush(); };

  constructor(private readonly sock: BatchSocket, private readonly to: BatchTarget, private readonly o: WireOptions) {}

  begin(bodyLen: number): number {
    const len = bodyLen + TAG_BYTES;
    if (this.pos + len > this.buf.length || this.count === SEND_MAX_PACKETS) this.flush();
    this.pendingLen = len;
    return this.pos;
  }

  end(): void {
    const m = this.meta;
    m[2 * this.count] = this.pos;
    m[2 * this.count + 1] = this.pendingLen;
    this.count++;
    this.pos += this.pendingLen;
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.flushFn);
    }
  }

  private flush(): void {
    const n = this.count;
    if (n === 0) return;
    this.count = 0;
    this.pos = 0;
    const sent = this.sock.send(this.buf, this.meta, n, this.to);
    if (sent < n) this.o.onSendFailure(n - sent);
  }
}

// ------------------------------------------------------------------------------------------- dgram

type LookupCb = (err: NodeJS.ErrnoException | null, address: string, family: number) => void;
/** Peer addresses are IP literals almost always: answer them synchronously (dns.lookup costs a tick). */
function fastLookup(host: string, opts: unknown, cb: LookupCb): void {
  const fam = isIP(host);
  if (fam) { cb(null, host, fam); return; }
  dnsLookup(host, opts as LookupOneOptions, cb);
}

async function openDgramWire(o: WireOptions): Promise<Wire> {
  const socket = createSocket({ type: isIPv6(o.address) ? 'udp6' : 'udp4', lookup: fastLookup });
  socket.on('message', (buf) => o.onPacket(buf, 'unchecked'));
  // Sends are fire-and-forget: an error (ENETUNREACH on a cut link, ENOBUFS) is a lost packet that
  // retransmission recovers; it is counted, never thrown.
  socket.on('error', (err) => o.onSendFailure(1, err));
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(o.port, o.address, () => { socket.off('error', reject); resolve(); });
  }).catch((err: unknown) => { socket.close(); throw err; });
  try { socket.setRecvBufferSize(o.bufferBytes); socket.setSendBufferSize(o.bufferBytes); } catch { /* clamped or refused: keep defaults */ }
  return new DgramWire(socket, o.key);
}

class DgramWire implements Wire {
  readonly kind = 'dgram';
  readonly stableBuffers = true;
  readonly port: number;

  constructor(private readonly socket: Socket, private readonly key: Buffer) {
    this.port = socket.address().port;
  }

  describe(): string { return 'dgram'; }

  out(address: string, port: number): PacketOut {
    return new DgramOut(this.socket, address, port, this.key);
  }

  close(): Promise<void> {
    return new Promise((r) => this.socket.close(() => r()));
  }
}

/** One buffer per packet, with room in front for the HMAC's inner pad (signed in place). */
class DgramOut implements PacketOut {
  buf: Buffer = Buffer.alloc(0);
  private bodyEnd = 0;
  private readonly auth;

  constructor(private readonly socket: Socket, private readonly address: string, private readonly port: number, key: Buffer) {
    this.auth = authFor(key);
  }

  begin(bodyLen: number): number {
    this.bodyEnd = PACKET_HEADROOM + bodyLen;
    this.buf = Buffer.allocUnsafe(this.bodyEnd + TAG_BYTES);
    return PACKET_HEADROOM;
  }

  end(): void {
    this.auth.signInPlace(this.buf, this.bodyEnd);
    this.socket.send(this.buf.subarray(PACKET_HEADROOM), this.port, this.address);
  }
}
