/**
 * Pure encoders and parsers for NBD wire structures. No I/O here: the handshake and transmission
 * modules build on these, and the unit tests exercise them directly.
 */
import {
  NBDMAGIC, IHAVEOPT, OPTION_REPLY_MAGIC, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
  REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, ReplyType, Info,
  SIMPLE_REPLY_SIZE, STRUCTURED_HEADER_SIZE, REQUEST_SIZE,
} from './constants.js';
import { getU16, getU32, putU32 } from './bytes.js';

/** The 18-byte greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(): Buffer {
  const b = Buffer.allocUnsafe(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

/** An option reply: magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.allocUnsafe(20 + len);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, 20);
  return b;
}

/** REP_SERVER payload for LIST: name length, name, optional description. */
export function encodeServerEntry(name: string, description?: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description ?? '', 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function encodeInfoExport(size: number, tflags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(tflags, 10);
  return b;
}

export function encodeInfoString(type: Info.NAME | Info.DESCRIPTION, text: string): Buffer {
  const s = Buffer.from(text, 'utf8');
  const b = Buffer.allocUnsafe(2 + s.length);
  b.writeUInt16BE(type, 0);
  s.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

export function encodeMetaContext(id: number, name: string): Buffer {
  const s = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + s.length);
  b.writeUInt32BE(id, 0);
  s.copy(b, 4);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, tflags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(tflags, 8);
  return b;
}

/** Parsed INFO/GO option data. */
export interface InfoRequest { name: string; requests: number[] }

/** Parses NBD_OPT_INFO / NBD_OPT_GO data; null when its lengths do not add up. */
export function parseInfoRequest(data: Buffer): InfoRequest | null {
  if (data.length < 6) return null;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return null;
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) return null;
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name, requests };
}

/** Parsed LIST_META_CONTEXT / SET_META_CONTEXT data. */
export interface MetaContextRequest { name: string; queries: string[] }

export function parseMetaContextRequest(data: Buffer): MetaContextRequest | null {
  if (data.length < 8) return null;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8) return null;
  const name = data.toString('utf8', 4, 4 + nameLen);
  let pos = 4 + nameLen;
  const count = data.readUInt32BE(pos);
  pos += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (pos + 4 > data.length) return null;
    const qlen = data.readUInt32BE(pos);
    pos += 4;
    if (qlen > data.length - pos) return null;
    queries.push(data.toString('utf8', pos, pos + qlen));
    pos += qlen;
  }
  return pos === data.length ? { name, queries } : null;
}

/** A parsed transmission request header (28 bytes). The cookie is kept as two u32 halves. */
export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offset: number;   // may exceed 2^53 only for invalid requests: see offsetHi
  offsetHi: number;
  length: number;
}

/**
 * Reads a request header at `pos` into `out` (reused by the caller: no allocation per request).
 * Offsets up to 2^53 are exact; `offsetHi` (the upper 32 bits) lets validation reject anything larger.
 */
export function readRequestHeader(b: Buffer, pos: number, out: RequestHeader): void {
  if (pos + REQUEST_SIZE > b.length) throw new RangeError('request header outside the buffer');
  out.magic = getU32(b, pos);
  out.flags = getU16(b, pos + 4);
  out.type = getU16(b, pos + 6);
  out.cookieHi = getU32(b, pos + 8);
  out.cookieLo = getU32(b, pos + 12);
  const hi = getU32(b, pos + 16);
  out.offsetHi = hi;
  out.offset = hi * 0x100000000 + getU32(b, pos + 20);
  out.length = getU32(b, pos + 24);
}

export function encodeRequest(type: number, flags: number, cookie: bigint, offset: bigint | number, length: number): Buffer {
  const b = Buffer.allocUnsafe(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

/** A simple reply header into a fresh 16-byte buffer (pool-allocated by Node: cheap). */
export function encodeSimpleReply(error: number, cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  writeSimpleReply(b, error, cookieHi, cookieLo);
  return b;
}

/** Writes a 16-byte simple reply header at the start of `b`. */
export function writeSimpleReply(b: Buffer, error: number, cookieHi: number, cookieLo: number): void {
  if (b.length < SIMPLE_REPLY_SIZE) throw new RangeError('simple reply buffer shorter than 16 bytes');
  putU32(b, 0, SIMPLE_REPLY_MAGIC);
  putU32(b, 4, error);
  putU32(b, 8, cookieHi);
  putU32(b, 12, cookieLo);
}

/** Writes a structured reply chunk header at `pos` of `b`. */
export function writeStructuredHeader(b: Buffer, pos: number, flags: number, type: number,
  cookieHi: number, cookieLo: number, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, pos);
  b.writeUInt16BE(flags, pos + 4);
  b.writeUInt16BE(type, pos + 6);
  b.writeUInt32BE(cookieHi, pos + 8);
  b.writeUInt32BE(cookieLo, pos + 12);
  b.writeUInt32BE(length, pos + 16);
}

/** Header of a final OFFSET_DATA chunk (20 + 8 bytes); the data follows separately. */
export function encodeReadChunkHeader(cookieHi: number, cookieLo: number, offset: number, dataLength: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + 8);
  writeStructuredHeader(b, 0, REPLY_FLAG_DONE, ReplyType.OFFSET_DATA, cookieHi, cookieLo, 8 + dataLength);
  writeU64(b, STRUCTURED_HEADER_SIZE, offset);
  return b;
}

/** A final OFFSET_HOLE chunk or a non-final one. */
export function encodeHoleChunk(cookieHi: number, cookieLo: number, offset: number, length: number, done: boolean): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + 12);
  writeStructuredHeader(b, 0, done ? REPLY_FLAG_DONE : 0, ReplyType.OFFSET_HOLE, cookieHi, cookieLo, 12);
  writeU64(b, STRUCTURED_HEADER_SIZE, offset);
  b.writeUInt32BE(length, STRUCTURED_HEADER_SIZE + 8);
  return b;
}

/** A final structured ERROR chunk with an optional message. */
export function encodeErrorChunk(cookieHi: number, cookieLo: number, error: number, message = ''): Buffer {
  const m = Buffer.from(message, 'utf8');
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + 6 + m.length);
  writeStructuredHeader(b, 0, REPLY_FLAG_DONE, ReplyType.ERROR, cookieHi, cookieLo, 6 + m.length);
  b.writeUInt32BE(error, STRUCTURED_HEADER_SIZE);
  b.writeUInt16BE(m.length, STRUCTURED_HEADER_SIZE + 4);
  m.copy(b, STRUCTURED_HEADER_SIZE + 6);
  return b;
}

/** A final BLOCK_STATUS chunk for one metadata context: pairs of (length, flags). */
export function encodeBlockStatusChunk(cookieHi: number, cookieLo: number, contextId: number,
  extents: ReadonlyArray<{ length: number; flags: number }>): Buffer {
  const len = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + len);
  writeStructuredHeader(b, 0, REPLY_FLAG_DONE, ReplyType.BLOCK_STATUS, cookieHi, cookieLo, len);
  b.writeUInt32BE(contextId, STRUCTURED_HEADER_SIZE);
  let p = STRUCTURED_HEADER_SIZE + 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length, p);
    b.writeUInt32BE(e.flags, p + 4);
    p += 8;
  }
  return b;
}

/** A final NONE chunk (success with no payload). */
export function encodeNoneChunk(cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE);
  writeStructuredHeader(b, 0, REPLY_FLAG_DONE, ReplyType.NONE, cookieHi, cookieLo, 0);
  return b;
}

/** Writes a non-negative integer below 2^53 as u64 without BigInt. */
export function writeU64(b: Buffer, pos: number, v: number): void {
  b.writeUInt32BE(Math.floor(v / 0x100000000), pos);
  b.writeUInt32BE(v >>> 0, pos + 4);
}
