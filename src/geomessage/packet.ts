import * as cryptoNs from 'node:crypto';
import { createHash, createHmac } from 'node:crypto';

/**
 * GeoMessage wire format (version 1). All integers big-endian.
 *
 *   off size field
 *    0   1   version (1)
 *    1   1   type (DATA, ACK, PING, PONG)
 *    2   1   flags (ORDERED, REQUEST, REPLY, ERROR, ACKS, ENCRYPTED (reserved))
 *    3   1   reserved (0)
 *    4   4   source machine id (FNV-1a of the machine name)
 *    8   4   destination machine id
 *   12   4   source epoch (sender's incarnation)
 *   16   4   destination epoch as the sender knows it (0 = not yet known: PING only)
 *   20   4   packet number (per sender incarnation, never reused: retransmits get a new one)
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
 *   52   …   payload (fragment bytes; PING/PONG: 8-byte timestamp echo)
 *    …   …   ACK block when flag ACKS: u16 count, then count × (u32 high, u32 low) packet-number ranges, newest first
 *    …  16   tag: HMAC-SHA-256(cluster key, every byte before it), truncated to 16 bytes
 *
 * The tag is checked before any field other than the length is looked at; a packet that fails is
 * dropped and counted, never parsed further. Flag ENCRYPTED is reserved so that payload encryption
 * (AEAD replacing the HMAC) can be added without a new header layout.
 */
export const VERSION = 1;
export const HEADER_BYTES = 52;
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
}

/** A decoded, authenticated packet. payload and ack ranges are views into the received buffer. */
export interface DecodedPacket extends PacketHeader {
  payload: Buffer;
  /** Flat [high0, low0, high1, low1, …] packet-number ranges, or null without an ACK block. */
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

/** Writes a header into `buf` at `o` (buf must hold HEADER_BYTES there). */
export function writeHeader(buf: Buffer, h: PacketHeader, o = 0): void {
  buf[o] = VERSION;
  buf[o + 1] = h.type;
  buf[o + 2] = h.flags;
  buf[o + 3] = 0;
  buf.writeUInt32BE(h.srcMachine, o + 4);
  buf.writeUInt32BE(h.dstMachine, o + 8);
  buf.writeUInt32BE(h.srcEpoch, o + 12);
  buf.writeUInt32BE(h.dstEpoch, o + 16);
  buf.writeUInt32BE(h.pseq, o + 20);
  buf.writeUInt32BE(h.msgId, o + 24);
  buf.writeUInt32BE(h.corrId, o + 28);
  buf.writeUInt32BE(h.orderSeq, o + 32);
  buf.writeUInt32BE(h.totalLen, o + 36);
  buf.writeUInt32BE(h.msgFloor, o + 40);
  buf.writeUInt16BE(h.service, o + 44);
  buf.writeUInt16BE(h.fragIndex, o + 46);
  buf.writeUInt16BE(h.fragCount, o + 48);
  buf.writeUInt16BE(h.fragLen, o + 50);
}

/** Bytes of an ack block carrying `pairs` ranges. */
export function ackBlockBytes(pairs: number): number {
  return 2 + Math.min(pairs, MAX_ACK_RANGES) * 8;
}

/** Writes the first `pairs` ranges (flat high/low pairs, newest first) as an ack block at `o`; returns its length. */
export function writeAckBlock(b: Buffer, o: number, ranges: readonly number[], pairs: number): number {
  const n = Math.min(pairs, ranges.length >> 1, MAX_ACK_RANGES);
  b.writeUInt16BE(n, o);
  for (let i = 0; i < n; i++) {
    b.writeUInt32BE(ranges[2 * i]!, o + 2 + i * 8);
    b.writeUInt32BE(ranges[2 * i + 1]!, o + 6 + i * 8);
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

type OneShotHash = (algorithm: string, data: Buffer, outputEncoding: 'latin1') => string;
const oneShot = (cryptoNs as unknown as { hash?: OneShotHash }).hash;
const BLOCK = 64;
const MAX_PACKET = 65536;

/**
 * HMAC-SHA-256 (RFC 2104) for one key, computed with two one-shot hashes over a reused scratch buffer:
 * H((K ⊕ opad) ‖ H((K ⊕ ipad) ‖ m)). crypto.createHmac builds a native object per call, which costs
 * more than hashing a 1400-byte packet; crypto.hash (Node ≥ 20.12) does not, and with latin1 output
 * it allocates no ArrayBuffer per packet (GC pressure was a fifth of request/response CPU). Falls
 * back to createHmac where crypto.hash is missing.
 */
export class Authenticator {
  private readonly inner = Buffer.alloc(BLOCK + MAX_PACKET);
  private readonly outer = Buffer.alloc(BLOCK + 32);

  constructor(private readonly key: Buffer) {
    const k = key.length > BLOCK ? createHash('sha256').update(key).digest() : key;
    for (let i = 0; i < BLOCK; i++) {
      const b = i < k.length ? k[i]! : 0;
      this.inner[i] = b ^ 0x36;
      this.outer[i] = b ^ 0x5c;
    }
  }

  /** The 32-byte HMAC of the concatenated parts, as a latin1 string (one char per byte). */
  private macString(parts: readonly Buffer[]): string {
    if (!oneShot) {
      const h = createHmac('sha256', this.key);
      for (const p of parts) h.update(p);
      return h.digest('binary');
    }
    let n = BLOCK;
    for (const p of parts) { p.copy(this.inner, n); n += p.length; }
    this.outer.write(oneShot('sha256', this.inner.subarray(0, n), 'latin1'), BLOCK, 32, 'latin1');
    return oneShot('sha256', this.outer, 'latin1');
  }

  /**
   * Signs a packet built in place: `full` holds BLOCK spare bytes, then the packet body up to
   * `bodyEnd`, then room for the tag. The spare bytes receive K ⊕ ipad so the inner hash needs no
   * copy of the body.
   */
  signInPlace(full: Buffer, bodyEnd: number): void {
    if (!oneShot) {
      const h = createHmac('sha256', this.key).update(full.subarray(BLOCK, bodyEnd));
      full.write(h.digest('binary'), bodyEnd, TAG_BYTES, 'latin1');
      return;
    }
    this.inner.copy(full, 0, 0, BLOCK);
    this.outer.write(oneShot('sha256', full.subarray(0, bodyEnd), 'latin1'), BLOCK, 32, 'latin1');
    full.write(oneShot('sha256', this.outer, 'latin1'), bodyEnd, TAG_BYTES, 'latin1');
  }

  /** Writes the truncated tag of the parts into `out` at `off`. */
  sign(parts: readonly Buffer[], out: Buffer, off: number): void {
    out.write(this.macString(parts), off, TAG_BYTES, 'latin1');
  }

  /** Checks the last TAG_BYTES of `buf` against the tag of everything before them (no early exit). */
  verify(buf: Buffer): boolean {
    const n = buf.length - TAG_BYTES;
    const mac = this.macString([buf.subarray(0, n)]);
    let diff = 0;
    for (let i = 0; i < TAG_BYTES; i++) diff |= mac.charCodeAt(i) ^ buf[n + i]!;
    return diff === 0;
  }
}

const authenticators = new WeakMap<Buffer, Authenticator>();
/** The Authenticator of a key (one per key buffer, so its pads are computed once). */
export function authFor(key: Buffer): Authenticator {
  let a = authenticators.get(key);
  if (!a) { a = new Authenticator(key); authenticators.set(key, a); }
  return a;
}

/** HMAC-SHA-256 over the parts, truncated to TAG_BYTES. */
export function computeTag(key: Buffer, parts: readonly Buffer[]): Buffer {
  const tag = Buffer.allocUnsafe(TAG_BYTES);
  authFor(key).sign(parts, tag, 0);
  return tag;
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

/** Spare bytes in front of a packet signed with Authenticator.signInPlace (the HMAC inner pad goes there). */
export const PACKET_HEADROOM = BLOCK;

/** Why a packet was refused (the receiver counts each reason). */
export type DropReason = 'short' | 'auth' | 'version' | 'malformed';

/**
 * Authenticates then decodes. Returns a reason string for a packet that must be dropped. Nothing
 * beyond the length is read before the tag has been verified.
 */
export function openPacket(key: Buffer, buf: Buffer): DecodedPacket | DropReason {
  const n = buf.length;
  if (n < HEADER_BYTES + TAG_BYTES) return 'short';
  if (n > MAX_PACKET) return 'malformed';
  if (!authFor(key).verify(buf)) return 'auth';
  return decodePacket(buf);
}

/**
 * Decodes a packet whose tag has been verified (by openPacket, or by the native wire in C). Checks
 * every length against the buffer; the tag bytes at the end are skipped.
 */
export function decodePacket(buf: Buffer): DecodedPacket | DropReason {
  const n = buf.length;
  if (n < HEADER_BYTES + TAG_BYTES) return 'short';
  if (buf[0] !== VERSION) return 'version';
  const type = buf[1]!;
  const flags = buf[2]!;
  if (type < T_DATA || type > T_PONG || (flags & F_ENCRYPTED) !== 0) return 'malformed';
  const fragLen = buf.readUInt16BE(50);
  const bodyLen = n - TAG_BYTES;
  let pos = HEADER_BYTES + fragLen;
  if (pos > bodyLen) return 'malformed';
  const fragIndex = buf.readUInt16BE(46);
  const fragCount = buf.readUInt16BE(48);
  const totalLen = buf.readUInt32BE(36);
  if (type === T_DATA && (fragCount === 0 || fragIndex >= fragCount || fragLen > totalLen)) return 'malformed';
  let acks: number[] | null = null;
  if (flags & F_ACKS) {
    if (pos + 2 > bodyLen) return 'malformed';
    const cnt = buf.readUInt16BE(pos);
    pos += 2;
    if (cnt > MAX_ACK_RANGES || pos + cnt * 8 !== bodyLen) return 'malformed';
    acks = new Array<number>(cnt * 2);
    for (let i = 0; i < cnt; i++) {
      const hi = buf.readUInt32BE(pos);
      const lo = buf.readUInt32BE(pos + 4);
      if (lo > hi) return 'malformed';
      acks[2 * i] = hi;
      acks[2 * i + 1] = lo;
      pos += 8;
    }
  } else if (pos !== bodyLen) return 'malformed';
  return {
    type,
    flags,
    srcMachine: buf.readUInt32BE(4),
    dstMachine: buf.readUInt32BE(8),
    srcEpoch: buf.readUInt32BE(12),
    dstEpoch: buf.readUInt32BE(16),
    pseq: buf.readUInt32BE(20),
    msgId: buf.readUInt32BE(24),
    corrId: buf.readUInt32BE(28),
    orderSeq: buf.readUInt32BE(32),
    totalLen,
    msgFloor: buf.readUInt32BE(40),
    service: buf.readUInt16BE(44),
    fragIndex,
    fragCount,
    fragLen,
    payload: buf.subarray(HEADER_BYTES, HEADER_BYTES + fragLen),
    acks,
  };
}

/** Fragment payload bytes that fit one packet on a network with this MTU. */
export function fragmentPayloadSize(mtu: number): number {
  return mtu - IP_UDP_OVERHEAD - HEADER_BYTES - TAG_BYTES;
}
