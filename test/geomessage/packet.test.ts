import t from 'tap';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  openPacket, sealPacket, encodeAckBlock, computeTag, authFor, writeHeader, PACKET_HEADROOM, machineId, HEADER_BYTES, TAG_BYTES, T_DATA, T_ACK, F_ACKS, F_ORDERED,
  type PacketHeader,
} from '../../src/geomessage/packet.js';
import { loadClusterKey } from '../../src/geomessage/key.js';
import { ReceivedRanges, ReplayWindow } from '../../src/geomessage/replay.js';
import { RttEstimator } from '../../src/geomessage/rtt.js';
import { tempDir } from '../helpers/env.js';
import { KEY } from './fixtures.js';

const hdr = (o: Partial<PacketHeader> = {}): PacketHeader => ({
  type: T_DATA, flags: F_ORDERED, srcMachine: machineId('a'), dstMachine: machineId('b'), srcEpoch: 7, dstEpoch: 9, pseq: 42,
  msgId: 3, corrId: 0, orderSeq: 5, totalLen: 5, msgFloor: 2, service: 17, fragIndex: 0, fragCount: 1, fragLen: 5, ...o,
});

t.test('seal then open round-trips every field, with and without acks', async (t) => {
  const parts = sealPacket(KEY, hdr(), Buffer.from('hello'), null);
  const p = openPacket(KEY, Buffer.concat(parts));
  if (typeof p === 'string') throw new Error(p);
  t.equal(p.payload.toString(), 'hello');
  t.match(p, { type: T_DATA, flags: F_ORDERED, srcEpoch: 7, dstEpoch: 9, pseq: 42, msgId: 3, orderSeq: 5, msgFloor: 2, service: 17, acks: null });
  const withAcks = sealPacket(KEY, hdr({ type: T_ACK, flags: F_ACKS, fragLen: 0, totalLen: 0 }), null, encodeAckBlock([10, 8, 5, 1]));
  const q = openPacket(KEY, Buffer.concat(withAcks));
  if (typeof q === 'string') throw new Error(q);
  t.same(q.acks, [10, 8, 5, 1]);
});

/** A packet laid out and signed in place as the dgram wire does (header room, body, tag). */
function signedInPlace(key: Buffer, h: ReturnType<typeof hdr>, payload: Buffer | null, acks: Buffer | null): Buffer {
  const body = Buffer.concat([Buffer.alloc(HEADER_BYTES), payload ?? Buffer.alloc(0), acks ?? Buffer.alloc(0)]);
  const full = Buffer.alloc(PACKET_HEADROOM + body.length + TAG_BYTES);
  writeHeader(body, h);
  body.copy(full, PACKET_HEADROOM);
  authFor(key).signInPlace(full, PACKET_HEADROOM + body.length);
  return full.subarray(PACKET_HEADROOM);
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
  const v2 = Buffer.concat(sealPacket(KEY, hdr(), Buffer.from('hello'), null)); v2[0] = 2;
  t.equal(openPacket(KEY, v2), 'auth', 'header change breaks the tag');
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
    body[0] = 1;
    const tag = sealPacket(KEY, hdr(), null, null).at(-1)!; // shape only
    t.equal(tag.length, TAG_BYTES);
    const { createHmac } = await import('node:crypto');
    const full = Buffer.concat([body, createHmac('sha256', KEY).update(body).digest().subarray(0, TAG_BYTES)]);
    const r = openPacket(KEY, full);
    if (typeof r !== 'string') {
      t.ok(r.payload.length === r.fragLen && r.fragLen <= full.length, 'decoded within bounds');
    }
  }
});

t.test('the one-shot HMAC equals crypto HMAC-SHA-256 for short, block-sized and long keys', async (t) => {
  const { createHmac } = await import('node:crypto');
  for (const len of [16, 32, 64, 65, 200]) {
    const key = randomBytes(len);
    const parts = [randomBytes(52), randomBytes(1404), randomBytes(18)];
    const want = createHmac('sha256', key).update(Buffer.concat(parts)).digest().subarray(0, TAG_BYTES);
    t.ok(computeTag(key, parts).equals(want), `key of ${len} bytes`);
  }
  t.equal(openPacket(KEY, Buffer.alloc(70000)), 'malformed', 'larger than any datagram');
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
