/**
 * Fuzzing the live server with random and mutated byte streams, handshake and transmission alike.
 * Properties: the server never crashes or hangs (every connection is closed by the server after the
 * client stops sending), other clients keep being served, and no byte of the backing file changes
 * except inside valid writes (each valid write has a block of its own, holding old or new content).
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { startHarness } from './harness.js';
import { RawClient } from './harness.js';
import { greet, option, replies, infoData, metaData, request, simpleReply, goTo } from './raw-protocol.js';

const SEED = Number(process.env.GEORM_FUZZ_SEED ?? Date.now() % 1_000_000);
const ROUNDS = Number(process.env.GEORM_FUZZ_ROUNDS ?? 600);
const KiB = 1024;
const MiB = 1024 * KiB;

/** mulberry32: small, seedable, good enough to pick mutations. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(SEED);
const ri = (n: number) => Math.floor(rand() * n);
const randBytes = (n: number) => { const b = Buffer.allocUnsafe(n); for (let i = 0; i < n; i++) b[i] = ri(256); return b; };

function mutate(b: Buffer, protectFrom = 0): Buffer {
  let out = Buffer.from(b);
  const n = 1 + ri(4);
  for (let i = 0; i < n && out.length > protectFrom; i++) {
    const pos = protectFrom + ri(out.length - protectFrom);
    switch (ri(5)) {
      case 0: out[pos] = ri(256); break;
      case 1: out[pos] = out[pos]! ^ (1 << ri(8)); break;
      case 2: out = Buffer.concat([out.subarray(0, pos), randBytes(1 + ri(8)), out.subarray(pos)]); break;
      case 3: out = Buffer.concat([out.subarray(0, pos), out.subarray(Math.min(out.length, pos + 1 + ri(8)))]); break;
      default: out = out.subarray(0, pos); break;
    }
  }
  return out;
}

/** Sends `bytes` in random pieces, half-closes, and checks that the server closes within 5 s. */
async function feed(path: string, bytes: Buffer, greeted?: RawClient): Promise<boolean> {
  const c = greeted ?? await RawClient.connect(path);
  let pos = 0;
  while (pos < bytes.length && !c.socket.destroyed) {
    const n = 1 + ri(Math.min(4096, bytes.length - pos));
    c.write(bytes.subarray(pos, pos + n));
    pos += n;
    if (ri(4) === 0) await new Promise((r) => setImmediate(r));
  }
  if (!c.socket.destroyed) c.socket.end();
  const closed = await c.closedByServer(5000);
  c.destroy();
  return closed;
}

function validHandshake(name: string): Buffer {
  const parts: Buffer[] = [Buffer.from([0, 0, 0, 3])];
  const opt = (o: number, d: Buffer = Buffer.alloc(0)) => {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(0x49484156454f5054n, 0);
    h.writeUInt32BE(o, 8);
    h.writeUInt32BE(d.length, 12);
    parts.push(h, d);
  };
  opt(3); opt(8); opt(9, metaData(name, [])); opt(10, metaData(name, ['base:allocation']));
  opt(6, infoData(name, [1, 2, 3])); opt(5); opt(11); opt(77, Buffer.from('zz')); opt(7, infoData(name, [3]));
  return Buffer.concat(parts);
}

/** Requests that never write: READ, FLUSH, CACHE, BLOCK_STATUS, unknown types; mutated freely except the type. */
function nonWriteRequest(size: number): Buffer {
  const types = [0, 3, 5, 7, 9, 200];
  const type = types[ri(types.length)]!;
  let r = request(type, ri(3) === 0 ? ri(65536) : 0, BigInt(ri(1e9)), ri(3) === 0 ? ri(2 ** 31) * 8 : ri(size), ri(3) === 0 ? ri(2 ** 32) : 1 + ri(64 * KiB));
  if (ri(3) === 0) r = mutate(r);
  if (r.length >= 8) {
    const ty = r.readUInt16BE(6);
    if (ty === 1 || ty === 4 || ty === 6) r.writeUInt16BE(0, 6); // keep writes out of the mutated part
  }
  return r;
}

t.test(`fuzz (seed ${SEED}, ${ROUNDS} rounds)`, async (t) => {
  const size = 4 * MiB;
  const h = await startHarness({ exports: { disk: size, ro: MiB }, readOnly: ['ro'] });
  t.teardown(() => h.close());
  const roBefore = createHash('sha256').update(readFileSync(h.files.ro!)).digest('hex');
  /** block index → content of the valid write aimed at it (each block written at most once). */
  const written = new Map<number, Buffer>();
  let nextBlock = 0;
  let hangs = 0;

  for (let round = 0; round < ROUNDS; round++) {
    const kind = round % 5;
    let closed: boolean;
    if (kind === 0) {
      closed = await feed(h.socketPath, randBytes(ri(2048)));
    } else if (kind === 1) {
      const hs = validHandshake(ri(2) ? 'disk' : 'ro');
      closed = await feed(h.socketPath, Buffer.concat([mutate(hs), randBytes(ri(256))]));
    } else {
      // Transmission: a valid handshake, then valid writes to fresh blocks mixed with mutated non-writes.
      const name = kind === 4 ? 'ro' : 'disk';
      const { c } = await goTo(h.socketPath, name, { structured: ri(2) === 0, meta: false });
      const parts: Buffer[] = [];
      for (let i = 0; i < 20; i++) {
        if (name === 'disk' && ri(3) === 0 && nextBlock < size / (4 * KiB)) {
          const block = nextBlock++;
          const data = randBytes(4 * KiB);
          written.set(block, data);
          parts.push(request(1, ri(2), BigInt(block), block * 4 * KiB, 4 * KiB, data));
        } else if (kind === 3 && ri(10) === 0) {
          parts.push(randBytes(1 + ri(64)));
        } else {
          parts.push(nonWriteRequest(size));
        }
      }
      if (ri(4) === 0) parts.push(request(2, 0, 0n, 0, 0));
      closed = await feed(h.socketPath, Buffer.concat(parts), c);
    }
    if (!closed) hangs++;
  }
  t.equal(hangs, 0, 'the server closed every fuzzed connection once the client stopped');

  // Still serving: a fresh client reads and writes.
  const { c } = await goTo(h.socketPath, 'disk');
  c.write(request(0, 0, 1n, 0, 512));
  t.equal((await simpleReply(c)).error, 0, 'a fresh client is served after fuzzing');
  await c.read(512);
  c.destroy();
  const g = await greet(h.socketPath);
  option(g, 3);
  t.ok((await replies(g)).length >= 2, 'handshake still answered');
  g.destroy();

  // Bytes: every 4 KiB block is either untouched (zeros) or exactly its one valid write.
  const file = readFileSync(h.files.disk!);
  let bad = 0;
  for (let block = 0; block < size / (4 * KiB); block++) {
    const got = file.subarray(block * 4 * KiB, (block + 1) * 4 * KiB);
    const w = written.get(block);
    const zero = got.every((x) => x === 0);
    if (!(zero || (w !== undefined && got.equals(w)))) bad++;
  }
  t.equal(bad, 0, `no block changed outside valid writes (${written.size} valid writes issued)`);
  t.equal(createHash('sha256').update(readFileSync(h.files.ro!)).digest('hex'), roBefore, 'read-only export unchanged');
  t.ok(h.logs.some((l) => l.level === 'warn'), 'violations were logged');
});
