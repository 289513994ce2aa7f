/**
 * The datagram layer under GeoMessage: one Wire per local network endpoint. The transport writes each
 * packet's body (header, payload, acks) into the buffer a PacketOut hands it; the wire adds the tag
 * and sends. Two implementations with the same wire format:
 *
 *   native  the addon's batch sockets: packets written in one JS turn leave in one sendmmsg() (GSO
 *           runs), arrive by recvmmsg() (GRO runs), and are signed and checked in C.
 *   dgram   Node's dgram, one send per packet, tags in JS: the fallback without the addon.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIP, isIPv6 } from 'node:net';
import { lookup as dnsLookup, type LookupOneOptions } from 'node:dns';
import {
  batchSocketsAvailable, openBatchSocket, RECV_AUTH, RECV_OK, RECV_SHORT, SEND_MAX_PACKETS,
  type BatchSocket, type BatchTarget, type GsoPolicy,
} from '../native/udp.js';
import { authFor, tagKey, TAG_BYTES, type DropReason } from './packet.js';

export type WireKind = 'native' | 'dgram';
/** Which wire to use: 'auto' = native when the addon has batch sockets, else dgram. */
export type WireChoice = WireKind | 'auto';

/** A received packet's state: tag still to check, already checked (native), or why it is refused. */
export type ReceivedStatus = 'unchecked' | 'checked' | DropReason;

export interface PacketOut {
  /** The buffer the packet begun last is written into (valid until `end`). */
  readonly buf: Buffer;
  /** False while the socket buffer is full and packets wait here: stop producing data packets. */
  readonly writable: boolean;
  /** Set by the transport: called when a destination that was not writable can take packets again. */
  onDrain: (() => void) | null;
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
  /** How packets move, for statistics: 'dgram', 'native', 'native+gso+gro+direct-tags'. */
  describe(): string;
  /** GSO messages the kernel refused, and times GSO came back after that (always 0 for dgram). */
  gsoStats(): { gsoRefusals: number; gsoReenabled: number };
  out(address: string, port: number): PacketOut;
  close(): Promise<void>;
}

export interface WireOptions {
  address: string;
  port: number;
  bufferBytes: number;
  /** The cluster key (packet.ts derives the tag key from it). */
  key: Buffer;
  /**
   * A received packet: buf[off, off + len). With stableBuffers false the bytes are valid only during
   * the call. `now` is performance.now() when it was read: one clock read per receive batch.
   */
  onPacket(buf: Buffer, off: number, len: number, status: ReceivedStatus, now: number): void;
  /**
   * The packets of one receive batch have all been passed to onPacket (native wire only; dgram
   * delivers packets one by one and never calls it): for work due once per batch, not per packet.
   */
  onBatchEnd?(): void;
  /** Packets the kernel refused (full buffer, unreachable route): lost, retransmission recovers them. */
  onSendFailure(count: number, err?: Error): void;
  /** The socket buffer was full: packets wait for it to drain (not lost). */
  onSendWait(): void;
}

/**
 * Opens the chosen wire; 'auto' falls back to dgram without the addon (GEORM_GEOMSG_IO=dgram forces it).
 * GEORM_GEOMSG_GSO=off (benchmarks) or =never (tests: GSO stays off after a refusal) sets the native
 * wire's GsoPolicy; the default 'retry' tries GSO again after a refusal.
 */
export async function openWire(choice: WireChoice, o: WireOptions): Promise<Wire> {
  const env = process.env.GEORM_GEOMSG_IO;
  const want = choice === 'auto' && (env === 'dgram' || env === 'native') ? env : choice;
  const gso = process.env.GEORM_GEOMSG_GSO;
  if (want === 'native' || (want === 'auto' && batchSocketsAvailable())) return new NativeWire(o, gso === 'off' || gso === 'never' ? gso : 'retry');
  return openDgramWire(o);
}

// ------------------------------------------------------------------------------------------ native

/** Bytes buffered per destination before a batch is sent early (more than one GSO message's worth). */
const BATCH_BYTES = 512 * 1024;
/**
 * While the socket is blocked the batch grows instead of dropping what waits (the transport pauses
 * its window then, so little more arrives); past this size packets are dropped and counted.
 */
const BLOCKED_MAX_BYTES = 16 << 20;
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

  private readonly blocked = new Set<NativeOut>();

  constructor(private readonly o: WireOptions, gso: GsoPolicy) {
    this.sock = openBatchSocket({
      address: o.address, port: o.port, bufferBytes: o.bufferBytes, key: tagKey(o.key), gso,
      onWritable: () => {
        const outs = [...this.blocked];
        this.blocked.clear();
        for (const out of outs) out.drained();
      },
      onBatch: (buf, meta, count) => {
        const now = performance.now();
        for (let i = 0; i < count; i++) {
          o.onPacket(buf, meta[3 * i]!, meta[3 * i + 1]!, STATUS[meta[3 * i + 2]!] ?? 'malformed', now);
        }
        o.onBatchEnd?.();
      },
    });
    this.port = this.sock.port;
  }

  describe(): string {
    const s = this.sock;
    return `native${s.gso ? '+gso' : ''}${s.gro ? '+gro' : ''}${s.directTags ? '+direct-tags' : ''}`;
  }

  gsoStats(): { gsoRefusals: number; gsoReenabled: number } {
    return { gsoRefusals: this.sock.gsoRefusals, gsoReenabled: this.sock.gsoReenabled };
  }

  out(address: string, port: number): PacketOut {
    return new NativeOut(this.sock, this.sock.target(address, port), this.o, (out) => {
      this.blocked.add(out);
      this.sock.waitWritable();
    });
  }

  close(): Promise<void> {
    this.sock.close();
    return Promise.resolve();
  }
}

/**
 * Packets for one destination, laid out back to back and sent together at the end of the turn.
 * When the socket buffer is full the unsent ones stay here until the socket is writable again;
 * meanwhile `writable` is false so the transport stops producing data packets (control packets
 * still queue) and the batch grows. Only past BLOCKED_MAX_BYTES are packets dropped (counted).
 */
class NativeOut implements PacketOut {
  buf = Buffer.allocUnsafe(BATCH_BYTES);
  onDrain: (() => void) | null = null;
  private meta = new Uint32Array(2 * SEND_MAX_PACKETS);
  private pos = 0;
  private count = 0;
  private pendingLen = 0;
  private scheduled = false;
  private blocked = false;
  private readonly flushFn = (): void => { this.scheduled = false; this.flush(); };

  constructor(private readonly sock: BatchSocket, private readonly to: BatchTarget, private readonly o: WireOptions,
    private readonly waitWritable: (out: NativeOut) => void) {}

  get writable(): boolean { return !this.blocked; }

  begin(bodyLen: number): number {
    const len = bodyLen + TAG_BYTES;
    if (this.pos + len > this.buf.length || 2 * this.count === this.meta.length) {
      this.flush();
      if (this.pos + len > this.buf.length || 2 * this.count === this.meta.length) this.grow(len);
    }
    this.pendingLen = len;
    return this.pos;
  }

  /** Blocked and full: make room for what waits (bounded), or drop it (counted). */
  private grow(len: number): void {
    if (this.buf.length * 2 > BLOCKED_MAX_BYTES) { this.discard(); return; }
    if (this.pos + len > this.buf.length) {
      const b = Buffer.allocUnsafe(this.buf.length * 2);
      this.buf.copy(b, 0, 0, this.pos);
      this.buf = b;
    }
    if (2 * this.count === this.meta.length) {
      const m = new Uint32Array(this.meta.length * 2);
      m.set(this.meta);
      this.meta = m;
    }
  }

  /** The socket can take packets again: send what waited, then let the transport go on. */
  drained(): void {
    this.blocked = false;
    this.flush();
    if (!this.blocked) this.onDrain?.();
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
    if (n === 0 || this.blocked) return;
    // At most SEND_MAX_PACKETS per call (a grown batch holds more).
    let done = 0;
    let r = 0;
    while (done < n) {
      const k = Math.min(SEND_MAX_PACKETS, n - done);
      r = this.sock.send(this.buf, done ? this.meta.subarray(2 * done) : this.meta, k, this.to);
      if (r < 0) break;
      if (r < k) this.o.onSendFailure(k - r);
      done += k;
    }
    if (r >= 0) {
      this.count = 0;
      this.pos = 0;
      return;
    }
    // Socket buffer full: keep the unsent packets, moved to the front, for the writable event.
    const sent = done + (-r - 1);
    const m = this.meta;
    const start = m[2 * sent]!;
    this.buf.copy(this.buf, 0, start, this.pos);
    for (let i = sent; i < n; i++) {
      m[2 * (i - sent)] = m[2 * i]! - start;
      m[2 * (i - sent) + 1] = m[2 * i + 1]!;
    }
    this.count = n - sent;
    this.pos -= start;
    this.blocked = true;
    this.o.onSendWait();
    this.waitWritable(this);
  }

  /** Drops the packets waiting here (blocked and full): lost as on a congested link, and counted. */
  private discard(): void {
    this.o.onSendFailure(this.count);
    this.count = 0;
    this.pos = 0;
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
  socket.on('message', (buf) => o.onPacket(buf, 0, buf.length, 'unchecked', performance.now()));
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

  gsoStats(): { gsoRefusals: number; gsoReenabled: number } { return { gsoRefusals: 0, gsoReenabled: 0 }; }

  out(address: string, port: number): PacketOut {
    return new DgramOut(this.socket, address, port, this.key);
  }

  close(): Promise<void> {
    return new Promise((r) => this.socket.close(() => r()));
  }
}

/** One buffer per packet, signed in place. */
class DgramOut implements PacketOut {
  buf: Buffer = Buffer.alloc(0);
  /** libuv queues what the kernel cannot take yet: always writable. */
  readonly writable = true;
  onDrain: (() => void) | null = null;
  private bodyEnd = 0;
  private readonly auth;

  constructor(private readonly socket: Socket, private readonly address: string, private readonly port: number, key: Buffer) {
    this.auth = authFor(key);
  }

  begin(bodyLen: number): number {
    this.bodyEnd = bodyLen;
    this.buf = Buffer.allocUnsafe(bodyLen + TAG_BYTES);
    return 0;
  }

  end(): void {
    this.auth.signInPlace(this.buf, this.bodyEnd);
    this.socket.send(this.buf, this.port, this.address);
  }
}
