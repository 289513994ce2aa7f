/**
 * FileBackend.close() under I/O: the fd is closed only once every operation that uses it has
 * settled, and operations begun after close() are refused rather than run on a stale fd number
 * (which the next open() in the process may already have been given: a GMD opens its state map,
 * logs and volumes in one process).
 */
import t from 'tap';
import fs from 'node:fs';
import { join } from 'node:path';
import { FileBackend, type FileBackendOptions } from '../../nbd/index.js';
import { tempDir } from '../helpers/env.js';

const BLOCK = 4096;
const WRITES = 64;
/** Zeros written without fallocate go out in 1 MiB chunks, one after the other: most start after close(). */
const ZERO_BYTES = 8 * 1024 * 1024;
const ZEROS_AT = WRITES * BLOCK * 2;
const ZERO_CHAINS = 2;
const SIZE = ZEROS_AT + ZERO_CHAINS * ZERO_BYTES;
const CLOSED = { code: 'NBD_ERR_BACKEND_CLOSED', errno: 108 };

/** Runs `cb`-style I/O as a promise. */
function viaCb(start: (cb: (e: Error | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => start((e) => (e ? reject(e) : resolve())));
}

for (const io of ['async', 'auto'] as Array<NonNullable<FileBackendOptions['io']>>) {
  t.test(`close() under load (io ${io}): waits for every operation, refuses later ones, never touches a reused fd`, async (t) => {
    const { dir, cleanup } = tempDir();
    t.teardown(cleanup);
    const path = join(dir, 'volume');
    fs.writeFileSync(path, Buffer.alloc(SIZE, 0x11));
    // No extensions: WRITE_ZEROES is written as zeros, a chain of threadpool writes.
    const b = await FileBackend.open(path, { readOnly: false, extensions: {}, io });

    const ops: Array<{ what: string; p: Promise<unknown>; ok?: () => boolean }> = [];
    let settled = 0;
    const track = (what: string, p: Promise<unknown>, ok?: () => boolean): void => {
      ops.push({ what, p, ok });
      p.then(() => { settled++; }, () => { settled++; });
    };
    const pattern = (i: number) => Buffer.alloc(BLOCK, (i % 250) + 1);
    for (let i = 0; i < WRITES; i++) {
      const off = i * BLOCK;
      if (i % 2 === 0) track(`writeCb ${i}`, viaCb((cb) => b.writeCb(off, pattern(i), i % 4 === 0, cb)));
      else track(`write ${i}`, b.write(off, pattern(i), { fua: i % 3 === 0 }));
      const rb = Buffer.alloc(BLOCK);
      track(`readInto ${i}`, viaCb((cb) => b.readInto(WRITES * BLOCK + off, BLOCK, rb, 0, cb)), () => rb.every((x) => x === 0x11));
      if (i % 8 === 0) track(`flush ${i}`, b.flush());
      if (i % 16 === 0) track(`read ${i}`, b.read(WRITES * BLOCK + off, BLOCK));
    }
    for (let z = 0; z < ZERO_CHAINS; z++) track(`zero ${z}`, b.zero(ZEROS_AT + z * ZERO_BYTES, ZERO_BYTES, { fua: z === 0, noHole: true, fastZero: false }));
    track('trim', b.trim(0, BLOCK, { fua: false }));

    // The hazard: the next open() gets the freed number. It is made the moment close() resolves,
    // as another part of a GMD process could; nothing of the earlier I/O may land there.
    const otherPath = join(dir, 'other');
    fs.writeFileSync(otherPath, Buffer.alloc(SIZE, 0xee));
    let other = -1;
    let settledAtClose = -1;
    const closing = b.close().then(() => { other = fs.openSync(otherPath, 'r+'); settledAtClose = settled; });
    const closingAgain = b.close();

    // Begun after close(): refused with the backend's closed error, on every entry point.
    const late: Array<[string, Promise<unknown>]> = [
      ['writeCb', viaCb((cb) => b.writeCb(0, pattern(0), false, cb))],
      ['readInto', viaCb((cb) => b.readInto(0, BLOCK, Buffer.alloc(BLOCK), 0, cb))],
      ['write', b.write(0, pattern(0), { fua: false })],
      ['read', b.read(0, BLOCK)],
      ['flush', b.flush()],
      ['zero', b.zero(0, BLOCK, { fua: false, noHole: false, fastZero: false })],
      ['trim', b.trim(0, BLOCK, { fua: false })],
    ];
    for (const [what, p] of late) await t.rejects(p, CLOSED, `${what} after close(): refused`);

    await closing;
    await closingAgain;
    t.equal(settledAtClose, ops.length, 'close() resolved only after every earlier operation settled');

    t.comment(`volume fd ${b.fd}, next open() got fd ${other}`);
    const results = await Promise.allSettled(ops.map((o) => o.p));
    await new Promise((r) => setTimeout(r, 50));
    fs.closeSync(other);
    t.ok(fs.readFileSync(otherPath).every((x) => x === 0xee), 'the file opened after close() was not written by earlier I/O');

    const failed = results.map((r, i) => [ops[i]!.what, r] as const).filter(([, r]) => r.status === 'rejected');
    t.same(failed.map(([w, r]) => `${w}: ${String((r as PromiseRejectedResult).reason)}`), [], 'every operation begun before close() succeeded');
    const data = fs.readFileSync(path);
    for (let i = 0; i < WRITES; i++) {
      if (results[ops.findIndex((o) => o.what.endsWith(` ${i}`) && o.what.startsWith('write'))]?.status !== 'fulfilled') continue;
      if (!data.subarray(i * BLOCK, (i + 1) * BLOCK).equals(pattern(i))) t.fail(`write ${i} is not on disk`);
    }
    t.ok(data.subarray(ZEROS_AT).every((x) => x === 0), 'the zeroed range reads zeros');
    t.ok(ops.every((o) => !o.ok || o.ok()), 'reads returned the file\'s data');
  });
}

t.test('the fd number close() frees is reused by the next open(): no earlier write lands in that file', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const chains = 8;
  const chunkBytes = 2 * 1024 * 1024;
  const size = chains * chunkBytes;
  const path = join(dir, 'volume');
  const otherPath = join(dir, 'other');
  // Several rounds: whether a write is still running when close() would have freed the number
  // depends on the threadpool's timing, so one round proves little on its own.
  const written: number[] = [];
  const failed: string[] = [];
  for (let round = 0; round < 20; round++) {
    fs.writeFileSync(path, Buffer.alloc(size, 0x11));
    fs.writeFileSync(otherPath, Buffer.alloc(size, 0xee));
    const b = await FileBackend.open(path, { readOnly: false, extensions: {}, io: 'async' });
    // Zeros without fallocate: each a chain of 1 MiB threadpool writes, the next issued when one is done.
    const ops = Array.from({ length: chains }, (_, i) => b.zero(i * chunkBytes, chunkBytes, { fua: false, noHole: true, fastZero: false }));
    let other = -1;
    await b.close().then(() => { other = fs.openSync(otherPath, 'r+'); });
    const results = await Promise.allSettled(ops);
    await new Promise((r) => setTimeout(r, 20));
    fs.closeSync(other);
    if (!fs.readFileSync(otherPath).every((x) => x === 0xee)) written.push(round);
    for (const r of results) if (r.status === 'rejected') failed.push(`round ${round}: ${String(r.reason)}`);
  }
  t.same(written, [], 'rounds in which the file opened after close() (given the freed fd number) was written');
  t.same(failed, [], 'zeros begun before close() that failed');
});
    // Zeros without fallocate: each a chain of 1 MiB threadpool writes, the next issued when one is done.
