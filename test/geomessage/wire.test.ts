import t from 'tap';
import { createSocket } from 'node:dgram';
import { openGeoMessage, type GeoMessage, type IncomingMessage } from '../../src/geomessage/index.js';
import { computeTag, machineId, sealPacket, tagKey, TAG_BYTES, T_DATA } from '../../src/geomessage/packet.js';
import { batchSocketsAvailable, openBatchSocket, RECV_AUTH, RECV_OK, RECV_SHORT, SEND_MAX_PACKETS } from '../../src/native/udp.js';
import { KEY, freePorts, payloadFor, waitFor } from './fixtures.js';

const noNative = batchSocketsAvailable() ? false : 'native addon without UDP batch sockets';

interface Got { off: number; len: number; status: number; bytes: Buffer }

/** A receiving batch socket that keeps a copy of every packet it is handed. */
function receiver(key: Buffer | null) {
  const got: Got[] = [];
  const sock = openBatchSocket({
    address: '127.0.0.1', port: 0, bufferBytes: 4 << 20, key: key && tagKey(key),
    onBatch: (buf, meta, count) => {
      for (let i = 0; i < count; i++) {
        const off = meta[3 * i]!, len = meta[3 * i + 1]!;
        got.push({ off, len, status: meta[3 * i + 2]!, bytes: Buffer.from(buf.subarray(off, off + len)) });
      }
    },
  });
  return { sock, got };
}

t.test('batch sockets: every packet arrives intact, signed in C exactly as JS signs', { skip: noNative }, async (t) => {
  const rx = receiver(KEY);
  const tx = openBatchSocket({ address: '127.0.0.1', port: 0, bufferBytes: 4 << 20, key: tagKey(KEY), onBatch: () => {} });
  t.teardown(() => { rx.sock.close(); tx.close(); });
  // A run of equal packets (one GSO message), a short last one, then odd sizes and a gap in the
  // buffer (separate messages): the layouts udpSend groups differently.
  const sizes = [...Array(100).fill(1472), 900, 100, 80, 1472, 1472, 5000, 81];
  const buf = Buffer.alloc(400_000);
  const meta = new Uint32Array(2 * sizes.length);
  let pos = 0;
  const bodies: Buffer[] = [];
  sizes.forEach((len, i) => {
    if (i === 103) pos += 10; // a hole: not adjacent to the previous packet
    const body = payloadFor(i, len - TAG_BYTES);
    body.copy(buf, pos);
    bodies.push(body);
    meta[2 * i] = pos;
    meta[2 * i + 1] = len;
    pos += len;
  });
  const sent = tx.send(buf, meta, sizes.length, tx.target('127.0.0.1', rx.sock.port));
  t.equal(sent, sizes.length, 'the kernel took every packet');
  await waitFor(() => rx.got.length >= sizes.length, 5000, 'all packets');
  t.equal(rx.got.length, sizes.length, 'one received packet per sent packet (GSO runs cut back into datagrams)');
  const byContent = new Map(rx.got.map((g) => [g.bytes.subarray(0, g.len - TAG_BYTES).toString('hex'), g]));
  let intact = 0, signedAsJs = 0;
  for (const body of bodies) {
    const g = byContent.get(body.toString('hex'));
    if (!g) continue;
    if (g.status === RECV_OK) intact++;
    if (g.bytes.subarray(g.len - TAG_BYTES).equals(computeTag(KEY, [body]))) signedAsJs++;
  }
  t.equal(intact, sizes.length, 'every packet intact and its tag accepted');
  t.equal(signedAsJs, sizes.length, 'the C tag equals the JS (node:crypto) tag');
});

t.test('batch sockets: tampered, short and unkeyed packets get their status; bad calls are clear errors', { skip: noNative }, async (t) => {
  const rx = receiver(KEY);
  const plain = createSocket('udp4');
  await new Promise<void>((r) => plain.bind(0, '127.0.0.1', () => r()));
  const tx = openBatchSocket({ address: '127.0.0.1', port: 0, bufferBytes: 1 << 20, key: null, onBatch: () => {} });
  t.teardown(() => { rx.sock.close(); plain.close(); tx.close(); });
  const good = Buffer.concat(sealPacket(KEY, {
    type: T_DATA, flags: 0, srcMachine: machineId('a'), dstMachine: machineId('b'), srcEpoch: 1, dstEpoch: 1, pseq: 1, msgId: 1,
    corrId: 0, orderSeq: 0, totalLen: 3, msgFloor: 1, service: 1, fragIndex: 0, fragCount: 1, fragLen: 3, saltHi: 7, saltLo: 8,
  }, Buffer.from('abc'), null));
  const tampered = Buffer.from(good);
  tampered[60] ^= 1;
  const send = (b: Buffer) => new Promise<void>((r) => plain.send(b, rx.sock.port, '127.0.0.1', () => r()));
  await send(good);
  await send(tampered);
  await send(good.subarray(0, 40));
  // A socket without a key sends the body untouched: the receiver refuses its (zero) tag.
  const m = new Uint32Array([0, good.length]);
  const unsigned = Buffer.from(good);
  unsigned.fill(0, good.length - TAG_BYTES);
  t.equal(tx.send(unsigned, m, 1, tx.target('127.0.0.1', rx.sock.port)), 1);
  await waitFor(() => rx.got.length >= 4, 3000, 'four packets');
  t.same(rx.got.map((g) => g.status), [RECV_OK, RECV_AUTH, RECV_SHORT, RECV_AUTH]);
  t.throws(() => tx.send(good, new Uint32Array([0, good.length + 1]), 1, tx.target('127.0.0.1', 1)), /outside the buffer/);
  t.throws(() => tx.send(good, new Uint32Array(4), SEND_MAX_PACKETS + 1, tx.target('127.0.0.1', 1)), /out of range/);
  t.throws(() => tx.target('::1', 1), { code: 'GEOMSG_ERR_CONFIG' });
  t.throws(() => openBatchSocket({ address: '127.0.0.1', port: rx.sock.port, bufferBytes: 0, key: null, onBatch: () => {} }), { code: 'EADDRINUSE' });
  // Closing releases the port at once; a closed socket sends nothing.
  const port = rx.sock.port;
  rx.sock.close();
  t.equal(tx.send(good, m, 1, tx.target('127.0.0.1', port)), 1, 'sending to a closed port is not an error (UDP)');
  const again = openBatchSocket({ address: '127.0.0.1', port, bufferBytes: 0, key: null, onBatch: () => {} });
  t.equal(again.port, port, 'the port can be bound again right after close');
  again.close();
  tx.close();
  t.equal(tx.send(good, m, 1, { sockaddr: Buffer.alloc(16) }), 0, 'closed socket sends nothing');
});

t.test('a native peer and a dgram peer interoperate (same wire format), both directions', async (t) => {
  const [pa, pb] = await freePorts(2);
  const ep = (port: number) => [{ network: 'n1', address: '127.0.0.1', port, mtu: 1500 }];
  const base = { key: KEY, keepaliveMs: 200 };
  const a: GeoMessage = await openGeoMessage({ ...base, io: 'native', machine: 'a', endpoints: ep(pa!), peers: [{ machine: 'b', endpoints: ep(pb!), promoteFailureTimeoutMs: 0 }] })
    .catch(() => openGeoMessage({ ...base, io: 'dgram', machine: 'a', endpoints: ep(pa!), peers: [{ machine: 'b', endpoints: ep(pb!), promoteFailureTimeoutMs: 0 }] }));
  const b = await openGeoMessage({ ...base, io: 'dgram', machine: 'b', endpoints: ep(pb!), peers: [{ machine: 'a', endpoints: ep(pa!), promoteFailureTimeoutMs: 0 }] });
  t.teardown(() => Promise.all([a.close(), b.close()]));
  t.match(a.stats().networks[0]!.io, noNative ? 'dgram' : /^native/);
  t.equal(b.stats().networks[0]!.io, 'dgram');
  const seenB: IncomingMessage[] = [];
  const seenA: IncomingMessage[] = [];
  b.handle(1, (m) => { seenB.push(m); return payloadFor(1000 + m.payload.readUInt32BE(0), 70_000); });
  a.handle(2, (m) => { seenA.push(m); });
  const n = 40;
  const replies = await Promise.all(Array.from({ length: n }, (_, i) => a.request('b', 1, payloadFor(i, (i * 7919) % 150_000 + 4), { ordered: true })));
  replies.forEach((r, i) => t.ok(r.equals(payloadFor(1000 + i, 70_000)), `reply ${i} intact`));
  t.same(seenB.map((m) => m.payload.readUInt32BE(0)), Array.from({ length: n }, (_, i) => i), 'ordered requests delivered once each, in order');
  t.ok(seenB.every((m, i) => m.payload.equals(payloadFor(i, (i * 7919) % 150_000 + 4))), 'request payloads intact');
  await Promise.all(Array.from({ length: n }, (_, i) => b.send('a', 2, payloadFor(5000 + i, i % 3 === 0 ? 10 : 9000))));
  t.equal(seenA.length, n);
  t.ok(seenA.every((m) => m.payload.equals(payloadFor(m.payload.readUInt32BE(0), m.payload.length))), 'one-way messages intact');
  // Single-fragment payloads handed to a handler stay valid after the receive batch (the native
  // wire reuses its buffer): keep them, send more, compare later.
  const kept: Buffer[] = [];
  b.handle(3, (m) => { kept.push(m.payload); });
  await Promise.all(Array.from({ length: 200 }, (_, i) => a.send('b', 3, payloadFor(i, 200))));
  t.ok(kept.every((p) => p.equals(payloadFor(p.readUInt32BE(0), 200))), 'kept payloads unchanged by later packets');
  const sa = a.stats().networks[0]!;
  t.equal(sa.dropped.auth + sa.dropped.malformed + sa.dropped.short, 0, 'nothing refused on either side');
});

t.test('GEORM_GEOMSG_GSO=off sends without GSO (io loses +gso), =never keeps it until a refusal; messages arrive either way', { skip: noNative }, async (t) => {
  const [pa, pb] = await freePorts(2);
  const ep = (port: number) => [{ network: 'n1', address: '127.0.0.1', port, mtu: 1500 }];
  const open = async (machine: string, own: number, peer: string, other: number, gso: string): Promise<GeoMessage> => {
    process.env.GEORM_GEOMSG_GSO = gso; // read when the socket opens
    try {
      return await openGeoMessage({ key: KEY, keepaliveMs: 200, io: 'native', machine, endpoints: ep(own), peers: [{ machine: peer, endpoints: ep(other), promoteFailureTimeoutMs: 0 }] });
    } finally { delete process.env.GEORM_GEOMSG_GSO; }
  };
  const a = await open('a', pa!, 'b', pb!, 'off');
  const b = await open('b', pb!, 'a', pa!, 'never');
  t.teardown(() => Promise.all([a.close(), b.close()]));
  const got: number[] = [];
  b.handle(1, (m) => { if (m.payload.equals(payloadFor(m.payload.readUInt32BE(0), m.payload.length))) got.push(m.payload.readUInt32BE(0)); });
  a.handle(1, () => {});
  await Promise.all(Array.from({ length: 20 }, (_, i) => a.send('b', 1, payloadFor(i, 64_000))));
  await Promise.all(Array.from({ length: 20 }, (_, i) => b.send('a', 1, payloadFor(i, 64_000))));
  t.equal(got.length, 20, 'every message intact over the socket without GSO');
  const na = a.stats().networks[0]!, nb = b.stats().networks[0]!;
  t.notMatch(na.io, /\+gso/, `off: ${na.io}`);
  t.match(nb.io, /^native\+gso/, `never: ${nb.io}`);
  t.same([na.gsoRefusals, na.gsoReenabled, nb.gsoRefusals, nb.gsoReenabled], [0, 0, 0, 0], 'no refusal counted on loopback');
});

t.test('batch sockets work over IPv6 too', { skip: noNative }, async (t) => {
  const got: Buffer[] = [];
  const rx = openBatchSocket({ address: '::1', port: 0, bufferBytes: 1 << 20, key: tagKey(KEY), onBatch: (buf, meta, n) => {
    for (let i = 0; i < n; i++) if (meta[3 * i + 2] === RECV_OK) got.push(Buffer.from(buf.subarray(meta[3 * i]!, meta[3 * i]! + meta[3 * i + 1]!)));
  } });
  const tx = openBatchSocket({ address: '::1', port: 0, bufferBytes: 1 << 20, key: tagKey(KEY), onBatch: () => {} });
  t.teardown(() => { rx.close(); tx.close(); });
  const buf = Buffer.alloc(10 * 1000, 1);
  const meta = new Uint32Array(20);
  for (let i = 0; i < 10; i++) { meta[2 * i] = i * 1000; meta[2 * i + 1] = 1000; buf[i * 1000] = i; }
  t.equal(tx.send(buf, meta, 10, tx.target('::1', rx.port)), 10);
  await waitFor(() => got.length >= 10, 3000, 'ten packets');
  t.same(got.map((g) => g[0]).sort(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'all ten, tags accepted');
  t.throws(() => tx.target('127.0.0.1', 1), { code: 'GEOMSG_ERR_CONFIG' }, 'an IPv4 peer on an IPv6 socket is refused clearly');
});

t.test('the direct tag path (OpenSSL low-level ChaCha20/Poly1305) and the EVP path make the same tags', { skip: noNative }, async (t) => {
  // GEORM_GEOMSG_TAG_EVP is read in C when a key is made: this receiver checks every tag through EVP.
  process.env.GEORM_GEOMSG_TAG_EVP = '1';
  let evpRx: ReturnType<typeof receiver>;
  try { evpRx = receiver(KEY); } finally { delete process.env.GEORM_GEOMSG_TAG_EVP; }
  const rx = receiver(KEY);
  const tx = openBatchSocket({ address: '127.0.0.1', port: 0, bufferBytes: 4 << 20, key: tagKey(KEY), onBatch: () => {} });
  t.teardown(() => { evpRx.sock.close(); rx.sock.close(); tx.close(); });
  t.equal(evpRx.sock.directTags, false, 'GEORM_GEOMSG_TAG_EVP=1: EVP');
  t.comment(`this Node's OpenSSL ${rx.sock.directTags ? 'offers' : 'does not offer'} the low-level functions`);
  // Every length from a bare header to 300 bytes (all paddings mod 16), then larger ones.
  const sizes = [...Array.from({ length: 300 - 80 + 1 }, (_, i) => 80 + i), 1024, 1471, 1472, 9000, 65000];
  const buf = Buffer.alloc(sizes.reduce((a, b) => a + b, 0));
  const meta = new Uint32Array(2 * sizes.length);
  let pos = 0;
  sizes.forEach((len, i) => { payloadFor(i, len - TAG_BYTES).copy(buf, pos); meta[2 * i] = pos; meta[2 * i + 1] = len; pos += len; });
  for (const r of [rx, evpRx]) {
    // One send per packet: each a datagram of its own.
    sizes.forEach((_, i) => tx.send(buf, meta.subarray(2 * i, 2 * i + 2), 1, tx.target('127.0.0.1', r.sock.port)));
  }
  await waitFor(() => rx.got.length >= sizes.length && evpRx.got.length >= sizes.length, 5000, 'all packets at both receivers');
  for (const [name, r] of [['direct', rx], ['EVP', evpRx]] as const) {
    t.equal(r.got.filter((g) => g.status === RECV_OK).length, sizes.length, `${name} receiver: every tag made by the sender checks`);
    const mine = r.got.every((g) => computeTag(KEY, [g.bytes.subarray(0, g.len - TAG_BYTES)]).equals(g.bytes.subarray(g.len - TAG_BYTES)));
    t.ok(mine, `${name} receiver: every tag equals the one JS computes`);
  }
});
