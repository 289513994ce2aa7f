import t from 'tap';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createCipheriv, createHmac, randomBytes } from 'node:crypto';
import {
  openPacket, sealPacket, encodeAckBlock, computeTag, authFor, tagKey, widenPseq, writeHeader, machineId, HEADER_BYTES, TAG_BYTES, T_DATA, T_ACK, F_ACKS, F_ORDERED,
  PSEQ_LOW, VERSION,
  type PacketHeader,
} from '../../src/geomessage/packet.js';
import { loadClusterKey } from '../../src/geomessage/key.js';
import { ReceivedRanges, ReplayWindow } from '../../src/geomessage/replay.js';
import { RttEstimator } from '../../src/geomessage/rtt.js';
import { tempDir } from '../helpers/env.js';
import { KEY } from './fixtures.js';

const hdr = (o: Partial<PacketHeader> = {}): PacketHeader => ({
  type: T_DATA, flags: F_ORDERED, srcMachine: machineId('a'), dstMachine: machineId('b'), srcEpoch: 7, dstEpoch: 9, pseq: 42,
  msgId: 3, corrId: 0, orderSeq: 5, totalLen: 5, msgFloor: 2, service: 17, fragIndex: 0, fragCount: 1, fragLen: 5,
  saltHi: 0x01020304, saltLo: 0xa0b0c0d0, ...o,
});

t.test('seal then open round-trips every field, with and without acks', async (t) => {
  const parts = sealPacket(KEY, hdr(), Buffer.from('hello'), null);
  const p = openPacket(KEY, Buffer.concat(parts));
  if (typeof p === 'string') throw new Error(p);
  t.equal(p.payload.toString(), 'hello');
  t.match(p, { type: T_DATA, flags: F_ORDERED, srcEpoch: 7, dstEpoch: 9, pseq: 42, msgId: 3, orderSeq: 5, msgFloor: 2, service: 17, acks: null,
    saltHi: 0x01020304, saltLo: 0xa0b0c0d0 });
  // 48-bit packet numbers: the high 16 bits travel apart from the low 32.
  const big = openPacket(KEY, Buffer.concat(sealPacket(KEY, hdr({ pseq: 7 * PSEQ_LOW + 5 }), Buffer.from('hello'), null)));
  if (typeof big === 'string') throw new Error(big);
  t.equal(big.pseq, 7 * PSEQ_LOW + 5);
  const withAcks = sealPacket(KEY, hdr({ type: T_ACK, flags: F_ACKS, fragLen: 0, totalLen: 0 }), null, encodeAckBlock([10, 8, 5, 1]));
  const q = openPacket(KEY, Buffer.concat(withAcks));
  if (typeof q === 'string') throw new Error(q);
  t.same(q.acks, [10, 8, 5, 1]);
});

/** A packet laid out and signed in place as the dgram wire does (body, then the tag after it). */
function signedInPlace(key: Buffer, h: ReturnType<typeof hdr>, payload: Buffer | null, acks: Buffer | null): Buffer {
  const body = Buffer.concat([Buffer.alloc(HEADER_BYTES), payload ?? Buffer.alloc(0), acks ?? Buffer.alloc(0)]);
  const full = Buffer.alloc(body.length + TAG_BYTES);
  writeHeader(body, h);
  body.copy(full);
  authFor(key).signInPlace(full, body.length);
  return full;
}

t.test('a packet signed in place equals the concatenated sealPacket parts', async (t) => {
  const a = signedInPlace(KEY, hdr(), Buffer.from('hello'), encodeAckBlock([9, 3]));
  const b = Buffer.concat(sealPacket(KEY, hdr({ flags: F_ORDERED }), Buffer.from('hello'), encodeAckBlock([9, 3])));
  t.ok(a.equals(b));
  t.ok(signedInPlace(Buffer.alloc(100, 3), hdr(), null, null).equals(Buffer.concat(sealPacket(Buffer.alloc(100, 3), hdr(), null, null))));
});

t.test('forged, truncated, wrong-key, wrong-version and random packets are refused', async (t) => {
  const good = Buffer.concat(sealPacket(KEY, hdr(), Buffer.from('hello'), null));
  t.equal(openPacket(KEY, good.subarray(0, 10)), 'short');
  t.equal(openPacket(KEY, good.subarray(0, good.length - 1)), 'auth');
  const flipped = Buffer.from(good); flipped[HEADER_BYTES] ^= 1;
  t.equal(openPacket(KEY, flipped), 'auth');
  t.equal(openPacket(Buffer.alloc(32, 1), good), 'auth');
  const v3 = Buffer.concat(sealPacket(KEY, hdr(), Buffer.from('hello'), null)); v3[0] = VERSION + 1;
  t.equal(openPacket(KEY, v3), 'auth', 'header change breaks the tag');
  const salted = Buffer.from(good); salted[55] ^= 1;
  t.equal(openPacket(KEY, salted), 'auth', 'the nonce salt is authenticated');
  const renumbered = Buffer.from(good); renumbered[61] ^= 1;
  t.equal(openPacket(KEY, renumbered), 'auth', 'the high bits of the packet number are authenticated');
  // an authenticated but inconsistent packet (fragLen beyond the body) is malformed, not parsed
  const bad = sealPacket(KEY, hdr({ fragLen: 500 }), Buffer.from('hello'), null);
  t.equal(openPacket(KEY, Buffer.concat(bad)), 'malformed');
  const badFrag = sealPacket(KEY, hdr({ fragIndex: 3, fragCount: 2 }), Buffer.from('hello'), null);
  t.equal(openPacket(KEY, Buffer.concat(badFrag)), 'malformed');
});

t.test('fuzz: random and mutated packets never throw and never pass authentication', async (t) => {
  const good = Buffer.concat(sealPacket(KEY, hdr(), randomBytes(100), encodeAckBlock([9, 3])));
  let accepted = 0;
  for (let i = 0; i < 20000; i++) {
    let b: Buffer;
    if (i % 2) b = randomBytes(Math.floor(Math.random() * 300));
    else {
      b = Buffer.from(good);
      const flips = 1 + Math.floor(Math.random() * 4);
      for (let k = 0; k < flips; k++) b[Math.floor(Math.random() * b.length)] ^= 1 + Math.floor(Math.random() * 255);
      if (i % 6 === 0) b = b.subarray(0, Math.floor(Math.random() * b.length));
    }
    const r = openPacket(KEY, b);
    if (typeof r !== 'string') accepted++;
  }
  t.equal(accepted, 0);
  // authenticated garbage (right key, random body) must be rejected by the structural checks or decoded safely
  for (let i = 0; i < 5000; i++) {
    const body = randomBytes(HEADER_BYTES + Math.floor(Math.random() * 200));
    body[0] = VERSION;
    const full = Buffer.concat([body, computeTag(KEY, [body])]);
    const r = openPacket(KEY, full);
    if (typeof r !== 'string') {
      t.ok(r.payload.length === r.fragLen && r.fragLen <= full.length, 'decoded within bounds');
    }
  }
});

/** Poly1305 (RFC 8439 §2.5) in BigInt: slow, short and independent of OpenSSL's. */
function poly1305(key: Buffer, msg: Buffer): Buffer {
  const le = (b: Buffer): bigint => BigInt('0x' + (Buffer.from(b).reverse().toString('hex') || '0'));
  const r = le(key.subarray(0, 16)) & 0x0ffffffc0ffffffc0ffffffc0fffffffn;
  const s = le(key.subarray(16, 32));
  const p = (1n << 130n) - 5n;
  let acc = 0n;
  for (let i = 0; i < msg.length; i += 16) {
    const block = msg.subarray(i, i + 16);
    acc = ((acc + le(block) + (1n << BigInt(8 * block.length))) * r) % p;
  }
  const tag = (acc + s) & ((1n << 128n) - 1n);
  return Buffer.from(tag.toString(16).padStart(32, '0'), 'hex').reverse();
}

t.test('the tag is ChaCha20-Poly1305 over the packet (RFC 8439), keyed by HKDF of the cluster key', async (t) => {
  for (const len of [16, 32, 64, 65, 200]) {
    const key = randomBytes(len);
    // HKDF-SHA-256 (RFC 5869) with an empty salt, written out.
    const prk = createHmac('sha256', Buffer.alloc(32)).update(key).digest();
    const k = createHmac('sha256', prk).update(Buffer.concat([Buffer.from('georm GeoMessage v2 packet tag'), Buffer.from([1])])).digest();
    t.ok(tagKey(key).equals(k), `HKDF tag key for a ${len}-byte cluster key`);
    const body = Buffer.concat(sealPacket(key, hdr({ pseq: 3 * PSEQ_LOW + 77 }), randomBytes(1404), encodeAckBlock([9, 3]))).subarray(0, -TAG_BYTES);
    // One-time key: ChaCha20 block 0 under nonce = salt ‖ packet number low 32 bits.
    const nonce = Buffer.concat([body.subarray(52, 60), body.subarray(20, 24)]);
    t.same([...nonce.subarray(8)], [0, 0, 0, 77], 'nonce ends with the low 32 bits of the packet number');
    const otk = createCipheriv('chacha20', k, Buffer.concat([Buffer.alloc(4), nonce])).update(Buffer.alloc(32));
    const pad = Buffer.alloc((16 - (body.length % 16)) % 16);
    const lens = Buffer.alloc(16); lens.writeBigUInt64LE(BigInt(body.length), 0);
    const want = poly1305(otk, Buffer.concat([body, pad, lens]));
    t.ok(computeTag(key, [body]).equals(want), `tag over a ${body.length}-byte packet`);
  }
  t.equal(openPacket(KEY, Buffer.alloc(70000)), 'malformed', 'larger than any datagram');
  t.throws(() => computeTag(KEY, [Buffer.alloc(HEADER_BYTES - 1)]), RangeError, 'no tag without a whole header (the nonce is in it)');
});

t.test('ack blocks carry low 32 bits; the sender widens them against its next packet number', async (t) => {
  t.equal(widenPseq(5, 10), 5);
  t.equal(widenPseq(9, 10), 9);
  t.equal(widenPseq(10, 10), 10 - PSEQ_LOW, 'its own next number was never sent: a whole cycle back');
  t.ok(widenPseq(20, 10) <= 0, 'above the next number: names no packet');
  const next = 5 * PSEQ_LOW + 3;
  t.equal(widenPseq(1, next), 5 * PSEQ_LOW + 1);
  t.equal(widenPseq(PSEQ_LOW - 2, next), 5 * PSEQ_LOW - 2, 'just below the wrap');
  const q = openPacket(KEY, Buffer.concat(sealPacket(KEY, hdr({ type: T_ACK, flags: F_ACKS, fragLen: 0, totalLen: 0 }), null,
    encodeAckBlock([5 * PSEQ_LOW + 2, 5 * PSEQ_LOW - 3]))));
  if (typeof q === 'string') throw new Error(q);
  t.same(q.acks, [2, PSEQ_LOW - 3], 'a range across the wrap: low bits as written');
  t.same(q.acks!.map((v) => widenPseq(v, next)), [5 * PSEQ_LOW + 2, 5 * PSEQ_LOW - 3], 'widened back');
});

t.test('replay window accepts each number once, inside the window', async (t) => {
  const w = new ReplayWindow(64);
  t.ok(w.check(1)); t.notOk(w.check(1)); t.ok(w.check(3)); t.ok(w.check(2)); t.notOk(w.check(2));
  t.ok(w.check(100)); t.notOk(w.check(30), 'too old'); t.ok(w.check(90)); t.notOk(w.check(90)); t.notOk(w.check(0));
  t.ok(w.check(1000)); t.notOk(w.check(100));
});

t.test('received ranges merge and stay newest first', async (t) => {
  const r = new ReceivedRanges(4);
  for (const n of [1, 2, 3, 5, 4, 10, 8, 9, 20, 7]) r.add(n);
  t.same(r.r, [20, 20, 10, 7, 5, 1]);
  r.add(5); t.same(r.r, [20, 20, 10, 7, 5, 1]);
  r.add(6); t.same(r.r, [20, 20, 10, 1]);
  for (const n of [30, 40, 50, 60]) r.add(n);
  t.equal(r.r.length, 8, 'capped');
  t.same(r.r.slice(0, 2), [60, 60]);
});

t.test('RTO follows RFC 6298 and backs off', async (t) => {
  const e = new RttEstimator(10, 1000, 500);
  t.equal(e.rto, 500);
  e.sample(100);
  t.equal(e.rto, 300);
  e.onTimeout(); t.equal(e.rto, 600);
  e.onTimeout(); t.equal(e.rto, 1000, 'clamped');
  e.sample(100); t.ok(e.rto < 300);
});

t.test('loadClusterKey refuses missing, open and short keys', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  await t.rejects(loadClusterKey(join(dir, 'nope')), { code: 'GEOMSG_ERR_KEY', message: /does not exist/ });
  const p = join(dir, 'key');
  writeFileSync(p, 'a'.repeat(64) + '\n');
  chmodSync(p, 0o644);
  await t.rejects(loadClusterKey(p), { code: 'GEOMSG_ERR_KEY', message: /chmod 600/ });
  chmodSync(p, 0o640);
  await t.rejects(loadClusterKey(p), { code: 'GEOMSG_ERR_KEY' });
  chmodSync(p, 0o600);
  t.equal((await loadClusterKey(p)).toString(), 'a'.repeat(64));
  writeFileSync(p, 'short\n');
  await t.rejects(loadClusterKey(p), { code: 'GEOMSG_ERR_KEY', message: /at least 16/ });
  await t.rejects(loadClusterKey(dir), { code: 'GEOMSG_ERR_KEY' });
});
