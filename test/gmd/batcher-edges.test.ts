/**
 * WriteBatcher edges that the main batcher test leaves open, each found by a mutant that survived it
 * (docs/safety.md, "Mutation testing"): the ordered flag reaches GeoMessage (async write order
 * rides on it), a batch is flushed in every later event-loop turn too (not only the first), a
 * batch that grows past its first buffer keeps every entry intact, and the promise form resolves true.
 */
import t from 'tap';
import { WriteBatcher } from '../../src/gmd/batcher.js';
import { SVC_WRITEV, HEADER_BYTES, decodeHeader, KIND_APP } from '../../src/gmd/protocol.js';
import { loopbackPair, payloadFor } from '../geomessage/fixtures.js';
import type { IncomingMessage } from '../../src/geomessage/transport.js';

function entries(p: Buffer): Array<{ offset: number; data: Buffer }> {
  const out = [];
  let at = 4;
  for (let i = 0, n = p.readUInt32BE(0); i < n; i++) {
    const h = decodeHeader(p.subarray(at), 2 ** 40)!;
    out.push({ offset: h.offset, data: Buffer.from(p.subarray(at + HEADER_BYTES, at + HEADER_BYTES + h.length)) });
    at += HEADER_BYTES + h.length;
  }
  return out;
}

/** Rejects when `p` has not settled within `ms` (a batch never sent would hang the test instead). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: not answered within ${ms} ms`)), ms); })])
    .finally(() => clearTimeout(timer));
}

t.test('the ordered flag reaches the peer: async batches on the ordered channel, others not', async (t) => {
  const { a, b } = await loopbackPair();
  t.teardown(async () => { await a.close(); await b.close(); });
  const seen: boolean[] = [];
  b.handle(SVC_WRITEV, (m: IncomingMessage) => { seen.push(m.ordered); return Buffer.alloc(0); });
  await new WriteBatcher(a, 'b', true).write(KIND_APP, 0, 0, Buffer.alloc(512, 1));
  await new WriteBatcher(a, 'b', false).write(KIND_APP, 0, 0, Buffer.alloc(512, 2));
  t.same(seen, [true, false], 'ordered batcher sends ordered messages, the other unordered ones');
});

t.test('every later turn is flushed too; write() resolves true once the peer has it', async (t) => {
  const { a, b } = await loopbackPair();
  t.teardown(async () => { await a.close(); await b.close(); });
  const got: number[] = [];
  b.handle(SVC_WRITEV, (m) => { for (const e of entries(m.payload)) got.push(e.offset); return Buffer.alloc(0); });
  const wb = new WriteBatcher(a, 'b', true, 64 * 1024);
  for (let turn = 0; turn < 3; turn++) {
    const r = await within(wb.write(KIND_APP, 0, turn * 4096, Buffer.alloc(4096, turn)), 10_000, `the write of turn ${turn}`);
    t.equal(r, true, `turn ${turn}: write() resolved true`);
  }
  t.same(got, [0, 4096, 8192], 'each turn\'s write reached the peer');
});

t.test('a batch that outgrows its first buffer keeps every entry intact', async (t) => {
  const { a, b } = await loopbackPair();
  t.teardown(async () => { await a.close(); await b.close(); });
  const got: Array<{ offset: number; data: Buffer }> = [];
  b.handle(SVC_WRITEV, (m) => { got.push(...entries(m.payload)); return Buffer.alloc(0); });
  const wb = new WriteBatcher(a, 'b', true, 256 * 1024);
  // One turn: small writes first (the buffer starts small), then writes several times its size.
  const sizes = [512, 512, 20 * 1024, 1024, 60 * 1024, 4096];
  const done = sizes.map((n, i) => wb.write(KIND_APP, 0, i << 20, payloadFor(i, n)));
  t.same(await within(Promise.all(done), 10_000, 'the batch'), sizes.map(() => true));
  t.equal(got.length, sizes.length);
  for (let i = 0; i < sizes.length; i++) {
    t.ok(got[i]!.offset === i << 20 && got[i]!.data.equals(payloadFor(i, sizes[i]!)), `entry ${i} (${sizes[i]} bytes) intact`);
  }
});
