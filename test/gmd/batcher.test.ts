import t from 'tap';
import { WriteBatcher } from '../../src/gmd/batcher.js';
import { SVC_WRITEV, HEADER_BYTES, decodeHeader, KIND_APP, FLAG_FUA } from '../../src/gmd/protocol.js';
import { loopbackPair, payloadFor } from '../geomessage/fixtures.js';

/** The entries of one SVC_WRITEV message as the secondary sees them. */
function entries(p: Buffer): Array<{ kind: number; flags: number; offset: number; data: Buffer }> {
  const n = p.readUInt32BE(0);
  const out = [];
  let at = 4;
  for (let i = 0; i < n; i++) {
    const h = decodeHeader(p.subarray(at), 2 ** 40)!;
    out.push({ kind: h.kind, flags: h.flags, offset: h.offset, data: Buffer.from(p.subarray(at + HEADER_BYTES, at + HEADER_BYTES + h.length)) });
    at += HEADER_BYTES + h.length;
  }
  if (at !== p.length) throw new Error('bytes after the last entry');
  return out;
}

t.test('writes added in one turn travel as one batch, copied at add time, in order', async (t) => {
  const { a, b } = await loopbackPair();
  t.teardown(async () => { await a.close(); await b.close(); });
  const batches: ReturnType<typeof entries>[] = [];
  b.handle(SVC_WRITEV, (m) => { batches.push(entries(m.payload)); return Buffer.alloc(0); });
  // maxBytes 64 KiB: 40 writes of 4 KiB need three batches (each flushed before it would overflow).
  const wb = new WriteBatcher(a, 'b', true, 64 * 1024);
  const src = Buffer.alloc(4096);
  const done: Array<Promise<unknown>> = [];
  for (let i = 0; i < 40; i++) {
    payloadFor(i, 4096).copy(src);
    done.push(new Promise((r) => wb.add(KIND_APP, i % 7 === 0 ? FLAG_FUA : 0, i * 8192, src, r)));
    src.fill(0xee); // the caller reuses its buffer at once, as the NBD server does
  }
  const big = payloadFor(99, 100 * 1024); // larger than a batch: a batch of its own
  done.push(new Promise((r) => wb.add(KIND_APP, 0, 1 << 30, big, r)));
  t.same(await Promise.all(done), new Array(41).fill(null), 'every write answered without error');
  const all = batches.flat();
  t.equal(all.length, 41);
  t.same(batches.map((x) => x.length), [15, 15, 10, 1], 'batches flushed before they would exceed 64 KiB');
  for (let i = 0; i < 40; i++) {
    const e = all[i]!;
    if (e.offset !== i * 8192 || !e.data.equals(payloadFor(i, 4096)) || e.flags !== (i % 7 === 0 ? FLAG_FUA : 0)) {
      t.fail(`entry ${i} differs: offset ${e.offset}, flags ${e.flags}`);
    }
  }
  t.ok(all[40]!.data.equals(big) && all[40]!.offset === 1 << 30, 'the large write intact');
  t.pass('the peer got each write as it was when added, in add order');
});

t.test('a failed batch fails every write in it', async (t) => {
  const { a, b } = await loopbackPair();
  t.teardown(async () => { await a.close(); await b.close(); });
  b.handle(SVC_WRITEV, () => { throw new Error('disk on fire'); });
  const wb = new WriteBatcher(a, 'b', false);
  const results = await Promise.all([0, 1, 2].map((i) => wb.write(KIND_APP, 0, i * 4096, Buffer.alloc(4096, i))));
  t.equal(results.length, 3);
  for (const r of results) t.match(r, { message: /disk on fire/ });
});
