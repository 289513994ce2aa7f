/** Helpers to speak NBD byte by byte from tests (option haggling and requests). */
import { RawClient } from './harness.js';

export const IHAVEOPT = 0x49484156454f5054n;
export const REPLY_MAGIC = 0x3e889045565a9n;

export interface OptReply { option: number; type: number; data: Buffer }

export async function greet(path: string, clientFlags = 3): Promise<RawClient> {
  const c = await RawClient.connect(path);
  const g = await c.read(18);
  if (g.readBigUInt64BE(0) !== 0x4e42444d41474943n || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
  const f = Buffer.alloc(4);
  f.writeUInt32BE(clientFlags);
  c.write(f);
  return c;
}

export function option(c: RawClient, opt: number, data: Buffer = Buffer.alloc(0)): void {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  c.write(Buffer.concat([h, data]));
}

export async function reply(c: RawClient): Promise<OptReply> {
  const h = await c.read(20);
  if (h.readBigUInt64BE(0) !== REPLY_MAGIC) throw new Error('bad option reply magic');
  const len = h.readUInt32BE(16);
  return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: Buffer.from(await c.read(len)) };
}

/** Reads replies up to and including the first ACK or error. */
export async function replies(c: RawClient): Promise<OptReply[]> {
  const out: OptReply[] = [];
  for (;;) {
    const r = await reply(c);
    out.push(r);
    if (r.type === 1 || r.type >= 0x80000000) return out;
  }
}

export function infoData(name: string, requests: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * requests.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(requests.length, 4 + n.length);
  requests.forEach((r, i) => b.writeUInt16BE(r, 6 + n.length + 2 * i));
  return b;
}

export function metaData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(n.length);
  parts.push(h, n);
  const cnt = Buffer.alloc(4);
  cnt.writeUInt32BE(queries.length);
  parts.push(cnt);
  for (const q of queries) {
    const qb = Buffer.from(q);
    const l = Buffer.alloc(4);
    l.writeUInt32BE(qb.length);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}

export function request(type: number, flags: number, cookie: bigint, offset: bigint | number, length: number, payload?: Buffer): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return payload ? Buffer.concat([b, payload]) : b;
}

export interface SimpleReply { error: number; cookie: bigint }
export async function simpleReply(c: RawClient): Promise<SimpleReply> {
  const h = await c.read(16);
  if (h.readUInt32BE(0) !== 0x67446698) throw new Error(`not a simple reply: ${h.toString('hex')}`);
  return { error: h.readUInt32BE(4), cookie: h.readBigUInt64BE(8) };
}

export interface Chunk { flags: number; type: number; cookie: bigint; data: Buffer }
export async function chunk(c: RawClient): Promise<Chunk> {
  const h = await c.read(20);
  if (h.readUInt32BE(0) !== 0x668e33ef) throw new Error(`not a structured reply: ${h.toString('hex')}`);
  return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), data: Buffer.from(await c.read(h.readUInt32BE(16))) };
}

/** Full fixed-newstyle handshake to transmission via GO; returns the client and the export size. */
export async function goTo(path: string, name = '', opts: { structured?: boolean; meta?: boolean } = {}): Promise<{ c: RawClient; size: bigint; tflags: number }> {
  const c = await greet(path);
  if (opts.structured) { option(c, 8); await replies(c); }
  if (opts.meta) { option(c, 10, metaData(name, ['base:allocation'])); await replies(c); }
  option(c, 7, infoData(name));
  const rs = await replies(c);
  const last = rs[rs.length - 1]!;
  if (last.type !== 1) throw new Error(`GO failed: 0x${last.type.toString(16)}`);
  const info = rs.find((r) => r.type === 3 && r.data.readUInt16BE(0) === 0)!;
  return { c, size: info.data.readBigUInt64BE(2), tflags: info.data.readUInt16BE(10) };
}
