/**
 * GeoMessage wire format (version 2). All integers big-endian.
 *
 *   off size field
 *    0   1   version (2)
 *    1   1   type (DATA, ACK, PING, PONG)
 *    2   1   flags (ORDERED, REQUEST, REPLY, ERROR, ACKS, ENCRYPTED (reserved))
 *    3   1   reserved (0)
 *    4   4   source machine id (FNV-1a of the machine name)
 *    8   4   destination machine id
 *   12   4   source epoch (sender's incarnation)
 *   16   4   destination epoch as the sender knows it (0 = not yet known: PING only)
 *   20   4   packet number, low 32 bits (48-bit numbers, per sender incarnation and peer, never
 *              reused: retransmits get a new one)
 *   24   4   message id (per session and direction; 0 for control packets)
 *   28   4   correlation id (REPLY: the request's message id)
 *   32   4   order sequence (ORDERED messages: 1, 2, 3 … per session; else 0)
 *   36   4   message total length (bytes)
 *   40   4   message floor: every message id below it is complete or abandoned by the sender, so the
 *              receiver may forget them (bounded duplicate-suppression state)
 *   44   2   service
 *   46   2   fragment index
 *   48   2   fragment count
 *   50   2   fragment payload length
 *   52   8   nonce salt: random per peer session, drawn again each time the packet number's low
 *              32 bits wrap
 *   60   2   packet number, high 16 bits
 *   62   2   reserved (0)
 *   64   …   payload (fragment bytes; PING/PONG: 8-byte timestamp echo)
 *    …   …   ACK block when flag ACKS: u16 count, then count × (u32 high, u32 low) packet-number
 *              ranges, newest first, low 32 bits only (the sender widens them against its own next
 *              number: it never has 2^31 packets unacknowledged)
 *    …  16   tag: ChaCha20-Poly1305 (RFC 8439) used as a MAC: key = HKDF-SHA-256(cluster key,
 *              info "georm GeoMessage v2 packet tag"), nonce = salt ‖ packet number low 32 bits,
 *              associated data = every byte before the tag, nothing encrypted
 *
 * The construction needs one thing: a nonce never repeats under the key. Within a peer session the
 * packet number does not repeat (and the salt changes when its low half wraps); across sessions,
 * processes and machines sharing the cluster key the 64-bit random salts differ (two of 10^6
 * sessions collide with probability below 10^-7). Poly1305 costs about a third of HMAC-SHA-256 per
 * 1.4 KB packet, which is a large part of the CPU per mirrored write.
 *
 * The tag is checked before any field other than the length is looked at; a packet that fails is
 * dropped and counted, never parsed further. Flag ENCRYPTED is reserved so that payload encryption
 * (the same AEAD with the payload as plaintext) can be added without a new header layout.
 */
import { createCipheriv, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';

export const VERSION = 2;
export const HEADER_BYTES = 64;
export const TAG_BYTES = 16;
/** IPv4 (20) + UDP (8) header bytes subtracted from a network's MTU. */
export const IP_UDP_OVERHEAD = 28;
/** Ack ranges per packet: each lost packet leaves a hole (retransmits get new numbers), so allow many. */
export const MAX_ACK_RANGES = 160;

export const T_DATA = 1;
export const T_ACK = 2;
export const T_PING = 3;
export const T_PONG = 4;

export const F_ORDERED = 0x01;
export const F_REQUEST = 0x02;
export const F_REPLY = 0x04;
export const F_ERROR = 0x08;
export const F_ACKS = 0x10;
export const F_ENCRYPTED = 0x80;

export interface PacketHeader {
  type: number;
  flags: number;
  srcMachine: number;
  dstMachine: number;
  srcEpoch: number;
  dstEpoch: number;
  pseq: number;
  msgId: number;
  corrId: number;
  orderSeq: number;
  totalLen: number;
  msgFloor: number;
  service: number;
  fragIndex: number;
  fragCount: number;
  fragLen: number;
  /** Nonce salt (two 32-bit halves); see the layout above. */
  saltHi: number;
  saltLo: number;
}

/** A decoded, authenticated packet. payload and ack ranges are views into the received buffer. */
export interface DecodedPacket extends PacketHeader {
  payload: Buffer;
  /** Flat [high0, low0, high1, low1, …] packet-number ranges (low 32 bits), or null without an ACK block. */
  acks: number[] | null;
}

/** FNV-1a 32-bit hash: a machine's id on the wire (names are checked for collisions at open). */
export function machineId(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/**
 * A DataView over `buf`, kept for the next call with the same buffer. Headers and ack blocks are
 * written and read per packet, and DataView accesses compile to plain loads and stores where
 * Buffer's readUInt32BE/writeUInt32BE stayed calls with range checks (a few per cent of a side's
 * CPU at MTU 1500). The send and receive paths each reuse one buffer, so one entry per path hits.
 */
class ViewCache {
  private buf: Buffer | null = null;
  private view: DataView | null = null;
  of(buf: Buffer): DataView {
    if (buf !== this.buf) { this.buf = buf; this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength); }
    return this.view!;
  }
}
const writeViews = new ViewCache();
const readViews = new ViewCache();

/** Writes the 64-byte header into `buf` at `o`. Every field must fit its width (the transport's values do). */
export function writeHeader(buf: Buffer, h: PacketHeader, o = 0): void {
  const d = writeViews.of(buf);
  d.setUint8(o, VERSION);
  d.setUint8(o + 1, h.type);
  d.setUint8(o + 2, h.flags);
  d.setUint8(o + 3, 0);
  d.setUint32(o + 4, h.srcMachine);
  d.setUint32(o + 8, h.dstMachine);
  d.setUint32(o + 12, h.srcEpoch);
  d.setUint32(o + 16, h.dstEpoch);
  d.setUint32(o + 20, h.pseq >>> 0);
  d.setUint32(o + 24, h.msgId);
  d.setUint32(o + 28, h.corrId);
  d.setUint32(o + 32, h.orderSeq);
  d.setUint32(o + 36, h.totalLen);
  d.setUint32(o + 40, h.msgFloor);
  d.setUint16(o + 44, h.service);
  d.setUint16(o + 46, h.fragIndex);
  d.setUint16(o + 48, h.fragCount);
  d.setUint16(o + 50, h.fragLen);
  d.setUint32(o + 52, h.saltHi);
  d.setUint32(o + 56, h.saltLo);
  d.setUint16(o + 60, Math.floor(h.pseq / PSEQ_LOW));
  d.setUint16(o + 62, 0);
}

/**
 * 2^32: packet numbers are 48-bit (nine years at a million packets per second); the header and ack
 * blocks carry their low 32 bits apart.
 */
export const PSEQ_LOW = 0x1_0000_0000;

/**
 * The full packet number of a low-32-bit value from an ack block: the largest number below `next`
 * (the sender's next packet number) with those low bits. Acknowledged packets are recent, so this
 * is exact; a value that maps below 1 names no packet ever sent (returns ≤ 0).
 */
export function widenPseq(low: number, next: number): number {
  let d = (next - low) % PSEQ_LOW;
  if (d <= 0) d += PSEQ_LOW;
  return next - d;
}

/** A fresh random nonce salt, as two 32-bit halves. */
export function newSalt(): [number, number] {
  const b = randomBytes(8);
  return [b.readUInt32BE(0), b.readUInt32BE(4)];
}

/** Bytes of an ack block carrying `pairs` ranges. */
export function ackBlockBytes(pairs: number): number {
  return 2 + Math.min(pairs, MAX_ACK_RANGES) * 8;
}

/** Writes the first `pairs` ranges (flat high/low pairs, newest first) as an ack block at `o`; returns its length. */
export function writeAckBlock(b: Buffer, o: number, ranges: readonly number[], pairs: number): number {
  const n = Math.min(pairs, ranges.length >> 1, MAX_ACK_RANGES);
  const d = writeViews.of(b);
  d.setUint16(o, n);
  for (let i = 0; i < n; i++) {
    d.setUint32(o + 2 + i * 8, ranges[2 * i]! >>> 0);
    d.setUint32(o + 6 + i * 8, ranges[2 * i + 1]! >>> 0);
  }
  return 2 + n * 8;
}

/** Encodes ack ranges (flat high/low pairs, newest first) into a fresh buffer. */
export function encodeAckBlock(ranges: readonly number[]): Buffer {
  const n = Math.min(ranges.length >> 1, MAX_ACK_RANGES);
  const b = Buffer.allocUnsafe(ackBlockBytes(n));
  writeAckBlock(b, 0, ranges, n);
  return b;
}

const MAX_PACKET = 65536;
const TAG_INFO = 'georm GeoMessage v2 packet tag';

const tagKeys = new WeakMap<Buffer, Buffer>();
/** The 32-byte tag key derived from a cluster key (HKDF-SHA-256; cached per key buffer). */
export function tagKey(clusterKey: Buffer): Buffer {
  let k = tagKeys.get(clusterKey);
  if (!k) {
    k = Buffer.from(hkdfSync('sha256', clusterKey, Buffer.alloc(0), TAG_INFO, 32));
    tagKeys.set(clusterKey, k);
  }
  return k;
}

/**
 * Packet tags with node:crypto (the dgram wire, tests, tools). The native wire computes the same
 * tags in C (native-bindings/udp.c), byte for byte.
 */
export class Authenticator {
  private readonly nonce = Buffer.alloc(12);
  private readonly key: Buffer;

  constructor(clusterKey: Buffer) { this.key = tagKey(clusterKey); }

  /** The tag of a packet body (header, payload, ack block: at least HEADER_BYTES). */
  tag(body: Buffer): Buffer {
    if (body.length < HEADER_BYTES) throw new RangeError(`a packet body holds at least ${HEADER_BYTES} bytes, not ${body.length}`);
    body.copy(this.nonce, 0, 52, 60);
    body.copy(this.nonce, 8, 20, 24);
    const c = createCipheriv('chacha20-poly1305', this.key, this.nonce, { authTagLength: TAG_BYTES });
    c.setAAD(body, { plaintextLength: 0 });
    c.final();
    return c.getAuthTag();
  }

  /** Signs a packet built in place: its tag goes into `buf` at `bodyEnd`, after the body buf[0, bodyEnd). */
  signInPlace(buf: Buffer, bodyEnd: number): void {
    this.tag(buf.subarray(0, bodyEnd)).copy(buf, bodyEnd);
  }

  /** Checks the last TAG_BYTES of `buf` against the tag of everything before them (constant time). */
  verify(buf: Buffer): boolean {
    const n = buf.length - TAG_BYTES;
    return timingSafeEqual(this.tag(buf.subarray(0, n)), buf.subarray(n));
  }
}

const authenticators = new WeakMap<Buffer, Authenticator>();
/** The Authenticator of a cluster key (one per key buffer). */
export function authFor(key: Buffer): Authenticator {
  let a = authenticators.get(key);
  if (!a) { a = new Authenticator(key); authenticators.set(key, a); }
  return a;
}

/** The tag of the concatenated parts (a packet body of at least HEADER_BYTES). */
export function computeTag(key: Buffer, parts: readonly Buffer[]): Buffer {
  return authFor(key).tag(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
}

/**
 * The parts of a packet: [header, payload?, ackBlock?, tag], payload not copied. The transport
 * writes packets into its wire's buffers instead (wire.ts); this form serves tests and tools.
 */
export function sealPacket(key: Buffer, h: PacketHeader, payload: Buffer | null, ackBlock: Buffer | null): Buffer[] {
  const header = Buffer.allocUnsafe(HEADER_BYTES);
  writeHeader(header, h);
  const parts: Buffer[] = [header];
  if (payload && payload.length) parts.push(payload);
  if (ackBlock) parts.push(ackBlock);
  parts.push(computeTag(key, parts));
  return parts;
}

/** Why a packet was refused (the receiver counts each reason). */
export type DropReason = 'short' | 'auth' | 'version' | 'malformed';

/**
 * Authenticates then decodes. Returns a reason string for a packet that must be dropped. Nothing
 * beyond the length is read before the tag has been verified.
 */
export function openPacket(key: Buffer, buf: Buffer): DecodedPacket | DropReason {
  const why = checkTag(key, buf);
  return why ?? decodePacket(buf);
}

/** The tag check of openPacket: null when buf is a whole packet whose tag verifies. */
export function checkTag(key: Buffer, buf: Buffer): DropReason | null {
  const n = buf.length;
  if (n < HEADER_BYTES + TAG_BYTES) return 'short';
  if (n > MAX_PACKET) return 'malformed';
  return authFor(key).verify(buf) ? null : 'auth';
}

/**
 * A decoded packet in place: header fields, and where the payload lies in `buf`. The transport
 * decodes every received packet into one reused view (no object, Buffer view or array per packet);
 * it is valid until the next packet is decoded into it.
 */
export interface PacketView extends PacketHeader {
  buf: Buffer;
  /** payload = buf[payloadOff, payloadOff + fragLen) */
  payloadOff: number;
  /**
   * Ack ranges (low 32 bits), flat [high0, low0, …] in the first ackCount entries; meaningful only
   * when hasAcks. Reused at its full size: setting an array's length is a runtime call in V8, and a
   * shrunk array regrows on the next push (both showed in per-packet profiles).
   */
  acks: number[];
  ackCount: number;
  hasAcks: boolean;
}

export function newPacketView(): PacketView {
  return {
    type: 0, flags: 0, srcMachine: 0, dstMachine: 0, srcEpoch: 0, dstEpoch: 0, pseq: 0, msgId: 0, corrId: 0, orderSeq: 0,
    totalLen: 0, msgFloor: 0, service: 0, fragIndex: 0, fragCount: 0, fragLen: 0, saltHi: 0, saltLo: 0,
    buf: Buffer.alloc(0), payloadOff: 0, acks: new Array<number>(2 * MAX_ACK_RANGES).fill(0), ackCount: 0, hasAcks: false,
  };
}

/**
 * Decodes the packet buf[off, off + len), whose tag has been verified (by checkTag, or by the
 * native wire in C), into `v`. Checks every length against the packet; the tag bytes at the end are
 * skipped. Returns null, or why the packet must be dropped (v is then partly filled).
 */
export function viewPacket(buf: Buffer, off: number, len: number, v: PacketView): DropReason | null {
  if (len < HEADER_BYTES + TAG_BYTES) return 'short';
  if (buf[off] !== VERSION) return 'version';
  const type = buf[off + 1]!;
  const flags = buf[off + 2]!;
  if (type < T_DATA || type > T_PONG || (flags & F_ENCRYPTED) !== 0) return 'malformed';
  if (off + len > buf.length) return 'short';
  const d = readViews.of(buf);
  const fragLen = d.getUint16(off + 50);
  const bodyEnd = off + len - TAG_BYTES;
  let pos = off + HEADER_BYTES + fragLen;
  if (pos > bodyEnd) return 'malformed';
  const fragIndex = d.getUint16(off + 46);
  const fragCount = d.getUint16(off + 48);
  const totalLen = d.getUint32(off + 36);
  if (type === T_DATA && (fragCount === 0 || fragIndex >= fragCount || fragLen > totalLen)) return 'malformed';
  const acks = v.acks;
  v.hasAcks = (flags & F_ACKS) !== 0;
  if (v.hasAcks) {
    if (pos + 2 > bodyEnd) return 'malformed';
    const cnt = d.getUint16(pos);
    pos += 2;
    if (cnt > MAX_ACK_RANGES || pos + cnt * 8 !== bodyEnd) return 'malformed';
    v.ackCount = cnt * 2;
    // Low 32 bits only: the sender widens them (widenPseq) and checks the order then.
    for (let i = 0; i < 2 * cnt; i++, pos += 4) acks[i] = d.getUint32(pos);
  } else {
    if (pos !== bodyEnd) return 'malformed';
    v.ackCount = 0;
  }
  v.type = type;
  v.flags = flags;
  v.srcMachine = d.getUint32(off + 4);
  v.dstMachine = d.getUint32(off + 8);
  v.srcEpoch = d.getUint32(off + 12);
  v.dstEpoch = d.getUint32(off + 16);
  v.pseq = d.getUint16(off + 60) * PSEQ_LOW + d.getUint32(off + 20);
  v.msgId = d.getUint32(off + 24);
  v.corrId = d.getUint32(off + 28);
  v.orderSeq = d.getUint32(off + 32);
  v.totalLen = totalLen;
  v.msgFloor = d.getUint32(off + 40);
  v.service = d.getUint16(off + 44);
  v.fragIndex = fragIndex;
  v.fragCount = fragCount;
  v.fragLen = fragLen;
  v.saltHi = d.getUint32(off + 52);
  v.saltLo = d.getUint32(off + 56);
  v.buf = buf;
  v.payloadOff = off + HEADER_BYTES;
  return null;
}

/** Decodes a packet whose tag has been verified into a fresh object (tests and tools; see viewPacket). */
export function decodePacket(buf: Buffer): DecodedPacket | DropReason {
  const v = newPacketView();
  const why = viewPacket(buf, 0, buf.length, v);
  if (why) return why;
  const { payloadOff, hasAcks, ackCount, acks, buf: _b, ...h } = v;
  return { ...h, payload: buf.subarray(payloadOff, payloadOff + v.fragLen), acks: hasAcks ? acks.slice(0, ackCount) : null };
}

/** Fragment payload bytes that fit one packet on a network with this MTU. */
export function fragmentPayloadSize(mtu: number): number {
  return mtu - IP_UDP_OVERHEAD - HEADER_BYTES - TAG_BYTES;
}
