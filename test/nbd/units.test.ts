/** Pure parts of nbd/: byte queue, wire parsers, errno mapping, listen targets, export registry. */
import t from 'tap';
import { ByteQueue } from '../../nbd/protocol/byte-queue.js';
import { parseInfoRequest, parseMetaContextRequest, readRequestHeader, encodeRequest, encodeHoleChunk, encodeNoneChunk,
  encodeErrorChunk, type RequestHeader } from '../../nbd/protocol/wire.js';
import { toNbdErrno, nbdError, parseListenTarget, nbdUri, ExportRegistry, FileBackend, NbdServer } from '../../nbd/index.js';
import { infoData, metaData } from './raw-protocol.js';
import { tempDir } from '../helpers/env.js';
import { sparseFile } from './harness.js';
import { join } from 'node:path';
import { writeFileSync, readFileSync, writeSync } from 'node:fs';

t.test('ByteQueue joins, splits and skips across chunks', async (t) => {
  const q = new ByteQueue();
  q.push(Buffer.from('ab'));
  q.push(Buffer.alloc(0));
  q.push(Buffer.from('cdef'));
  q.push(Buffer.from('gh'));
  t.equal(q.length, 8);
  t.equal(q.take(1).toString(), 'a');
  t.equal(q.take(4).toString(), 'bcde', 'straddling range copied');
  const c = q.contiguous(3);
  t.equal(c.toString('utf8', q.pos, q.pos + 3), 'fgh');
  q.skip(2);
  t.equal(q.take(1).toString(), 'h');
  t.equal(q.length, 0);
  t.equal(q.take(0).length, 0);
  q.push(Buffer.from('xyz'));
  t.equal(q.discard(10), 3);
  t.equal(q.length, 0);
  t.notOk(q.isContiguous(1));
  q.push(Buffer.from('0123'));
  q.push(Buffer.from('4567'));
  q.push(Buffer.from('89'));
  q.skip(1);
  t.ok(q.isContiguous(3));
  t.notOk(q.isContiguous(4));
  const dst = Buffer.alloc(10, 0x2e);
  q.copyOut(dst, 1, 8);
  t.equal(dst.toString(), '.12345678.', 'copyOut across chunks');
  q.retain();
  t.equal(q.take(1).toString(), '9');
  t.equal(q.length, 0);
  q.retain();
  q.push(Buffer.from('ab'));
  q.push(Buffer.from('cd'));
  q.skip(1);
  q.retain();
  t.equal(q.take(3).toString(), 'bcd', 'retain keeps a private copy of the unread bytes');
});

t.test('wire parsers', async (t) => {
  t.same(parseInfoRequest(infoData('disk', [1, 3])), { name: 'disk', requests: [1, 3] });
  t.equal(parseInfoRequest(Buffer.alloc(3)), null);
  t.equal(parseInfoRequest(Buffer.concat([infoData('x', [1]), Buffer.alloc(1)])), null, 'trailing byte');
  t.same(parseMetaContextRequest(metaData('d', ['base:allocation', 'x:'])), { name: 'd', queries: ['base:allocation', 'x:'] });
  t.equal(parseMetaContextRequest(Buffer.alloc(5)), null);
  const bad = metaData('d', ['abc']);
  t.equal(parseMetaContextRequest(bad.subarray(0, bad.length - 1)), null, 'short query');
  t.equal(parseMetaContextRequest(Buffer.concat([metaData('d', []), Buffer.alloc(2)])), null, 'trailing bytes');
  const countOnly = metaData('d', []);
  countOnly.writeUInt32BE(2, 5);
  t.equal(parseMetaContextRequest(countOnly), null, 'count larger than data');
  const h: RequestHeader = { magic: 0, flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, offsetHi: 0, length: 0 };
  readRequestHeader(encodeRequest(7, 8, 0x1122334455667788n, 2 ** 40 + 5, 4096), 0, h);
  t.same(h, { magic: 0x25609513, flags: 8, type: 7, cookieHi: 0x11223344, cookieLo: 0x55667788, offset: 2 ** 40 + 5, offsetHi: 256, length: 4096 });
  const hole = encodeHoleChunk(0, 9, 4096, 512, true);
  t.equal(hole.readUInt16BE(6), 2);
  t.equal(hole.readUInt32BE(28), 512);
  t.equal(encodeNoneChunk(0, 1).readUInt32BE(16), 0);
  t.equal(encodeErrorChunk(0, 1, 5, 'boom').readUInt16BE(24), 4);
});

t.test('errno mapping', async (t) => {
  t.equal(toNbdErrno(Object.assign(new Error('x'), { code: 'ENOSPC', errno: -28 })), 28, 'Node code wins over negative errno');
  t.equal(toNbdErrno(Object.assign(new Error('x'), { code: 'EROFS' })), 1);
  t.equal(toNbdErrno(nbdError(1, 'secondary')), 1);
  t.equal(toNbdErrno(nbdError(1234, 'odd')), 5, 'unknown errno becomes EIO');
  t.equal(toNbdErrno('string'), 5);
  t.equal(toNbdErrno(null), 5);
});

t.test('listen targets and URIs', async (t) => {
  t.same(parseListenTarget('tcp://127.0.0.1:10809'), { kind: 'tcp', host: '127.0.0.1', port: 10809 });
  t.same(parseListenTarget('tcp://[::1]:0'), { kind: 'tcp', host: '::1', port: 0 });
  t.same(parseListenTarget('0.0.0.0'), { kind: 'tcp', host: '0.0.0.0', port: 10809 });
  t.same(parseListenTarget('tcp://:7000'), { kind: 'tcp', host: '127.0.0.1', port: 7000 });
  t.same(parseListenTarget('unix:/run/x.sock'), { kind: 'unix', path: '/run/x.sock' });
  t.same(parseListenTarget('unix:///run/x.sock'), { kind: 'unix', path: '/run/x.sock' });
  t.throws(() => parseListenTarget('unix:'));
  t.throws(() => parseListenTarget('tcp://host:99999'));
  t.throws(() => parseListenTarget('tcp://a:b:c'));
  t.equal(nbdUri({ kind: 'tcp', host: '::1', port: 5 }, 'd'), 'nbd://[::1]:5/d');
  t.equal(nbdUri({ kind: 'unix', path: '/s' }), 'nbd+unix:///?socket=/s');
});

t.test('export registry', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  sparseFile(join(dir, 'a'), 4096);
  const b = await FileBackend.open(join(dir, 'a'), { readOnly: true });
  t.teardown(() => b.close());
  t.throws(() => new ExportRegistry([{ name: 'x', backend: b }, { name: 'x', backend: b }]));
  const r = new ExportRegistry([], undefined);
  t.equal(r.find(''), undefined);
  r.add({ name: 'x', backend: b });
  t.equal(r.find('')?.name, 'x', 'first added export becomes the default');
  t.throws(() => r.add({ name: 'x', backend: b }));
  t.equal(r.remove('x')?.name, 'x');
  t.equal(r.find(''), undefined);
  const s = new NbdServer({ exports: [] });
  s.addExport({ name: 'y', backend: b });
  t.throws(() => s.serveSocket(undefined as never, 'nope'));
  s.removeExport('y');
  await s.close();
});

t.test('FileBackend with platform extensions', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const path = join(dir, 'f');
  writeFileSync(path, Buffer.alloc(64 * 1024, 7));
  const calls: string[] = [];
  // Extensions as the addon would provide them; here backed by plain writes so the results are checkable.
  const fs = await import('node:fs');
  const ext = {
    seekData: (_fd: number, off: number) => (off < 32768 ? Math.max(off, 16384) : null),
    seekHole: (_fd: number, off: number) => (off < 16384 ? 16384 : 32768),
    punchHole: async (fd: number, off: number, len: number) => { calls.push(`punch ${off} ${len}`); fs.writeSync(fd, Buffer.alloc(len), 0, len, off); },
    zeroRange: async (fd: number, off: number, len: number) => { calls.push(`zero ${off} ${len}`); fs.writeSync(fd, Buffer.alloc(len), 0, len, off); },
  };
  const b = await FileBackend.open(path, { readOnly: false, extensions: ext });
  t.teardown(() => b.close());
  t.equal(b.flags().canExtents, true);
  t.equal(b.flags().canFastZero, true);
  t.same(await b.blockStatus(0, 65536), [
    { length: 16384, flags: 3 }, { length: 16384, flags: 0 }, { length: 32768, flags: 3 },
  ], 'holes and data from SEEK_DATA/SEEK_HOLE');
  await b.trim(0, 4096, { fua: true });
  await b.zero(4096, 4096, { fua: false, noHole: true, fastZero: true });
  t.same(calls, ['punch 0 4096', 'zero 4096 4096']);
  t.ok(readFileSync(path).subarray(0, 8192).equals(Buffer.alloc(8192)));
  await b.cache();
  await b.close();
  await b.close();

  const plain = await FileBackend.open(path, { readOnly: false, extensions: {} });
  await plain.zero(100, 3 * 1024 * 1024 > 65536 ? 1000 : 0, { fua: true, noHole: false, fastZero: false });
  await plain.trim(0, 10, { fua: false });
  t.same(await plain.blockStatus(0, 100), [{ length: 100, flags: 0 }]);
  const short = await plain.read(65536 - 10, 10);
  t.equal(short.length, 10);
  await plain.close();
  await t.rejects(FileBackend.open(dir, { readOnly: true }), 'a directory is refused');
  await t.rejects(FileBackend.open(join(dir, 'missing'), { readOnly: true }), { code: 'ENOENT' });
});

t.test('FileBackend fallocate extensions: refused modes fall through, other errors surface, close waits', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const path = join(dir, 'f');
  const errno = (code: string) => Object.assign(new Error(`fallocate: ${code}`), { code, syscall: 'fallocate' });
  let calls: string[] = [];
  // Each mode answers as told: 'ok' zeroes the range (with plain writes, so the result is checkable).
  const ext = (punch: string, zero: string) => {
    const way = (name: string, answer: string) => async (fd: number, off: number, len: number) => {
      calls.push(name);
      await new Promise((r) => setImmediate(r)); // settles later, as the threadpool calls do
      if (answer !== 'ok') throw errno(answer);
      writeSync(fd, Buffer.alloc(len), 0, len, off);
    };
    return { punchHole: way('punch', punch), zeroRange: way('zero', zero) };
  };
  const zeroed = (off: number, len: number) => readFileSync(path).subarray(off, off + len).every((x) => x === 0);
  const open = async (punch: string, zero: string) => {
    writeFileSync(path, Buffer.alloc(65536, 7));
    calls = [];
    const b = await FileBackend.open(path, { readOnly: false, extensions: ext(punch, zero) });
    t.teardown(() => b.close());
    return b;
  };
  const z = { fua: false, noHole: false, fastZero: false };

  let b = await open('ok', 'EOPNOTSUPP');
  await b.zero(0, 4096, z);
  t.same(calls, ['zero', 'punch'], 'ZERO_RANGE refused: a hole punched instead');
  t.ok(zeroed(0, 4096));
  calls = [];
  await b.zero(4096, 4096, { ...z, deallocate: true });
  t.same(calls, ['punch'], 'deallocate: the hole first');

  for (const code of ['ENOTSUP', 'ENOSYS', 'EINVAL']) {
    b = await open(code, code);
    await b.zero(100, 5000, { ...z, fua: true });
    t.same(calls, ['zero', 'punch'], `${code}: both modes tried`);
    t.ok(zeroed(100, 5000), `${code}: zeros written instead`);
  }

  b = await open('EOPNOTSUPP', 'EOPNOTSUPP');
  await t.rejects(b.zero(0, 4096, { ...z, fastZero: true }), { message: /no fast zeroing/, errno: 95 }, 'FAST_ZERO with neither mode: NBD ENOTSUP');
  t.ok(readFileSync(path).subarray(0, 4096).every((x) => x === 7), 'FAST_ZERO refused: data untouched');
  calls = [];
  await b.zero(0, 4096, { ...z, noHole: true });
  t.same(calls, ['zero'], 'NO_HOLE never punches');
  calls = [];
  await b.trim(8192, 4096, { fua: true });
  t.same(calls, ['punch'], 'a refused TRIM is done as nothing (advisory)');
  t.ok(readFileSync(path).subarray(8192, 12288).every((x) => x === 7));

  b = await open('EIO', 'EIO');
  await t.rejects(b.zero(0, 4096, z), { code: 'EIO' }, 'an I/O error is not a refusal: it surfaces');
  t.same(calls, ['zero']);
  await t.rejects(b.trim(0, 4096, { fua: false }), { code: 'EIO' });

  // close() while a punch is still running: the fd is closed only once it settled.
  let finish!: () => void;
  let punched = false;
  const slow = {
    punchHole: (fd: number, off: number, len: number) => new Promise<void>((res) => {
      finish = () => { writeSync(fd, Buffer.alloc(len), 0, len, off); punched = true; res(); };
    }),
  };
  writeFileSync(path, Buffer.alloc(65536, 7));
  const c = await FileBackend.open(path, { readOnly: false, extensions: slow });
  const trim = c.trim(0, 4096, { fua: false });
  let closed = false;
  const closing = c.close().then(() => { closed = true; });
  await new Promise((r) => setTimeout(r, 20));
  t.equal(closed, false, 'close waits for the pending fallocate');
  finish();
  await trim;
  await closing;
  t.ok(punched && zeroed(0, 4096), 'the punch ran on the still-open fd');
});

t.test('FileBackend I/O modes: inline, async, and auto backing off after slow inline transfers', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const path = join(dir, 'f');
  writeFileSync(path, Buffer.alloc(65536, 1));
  const call = (fn: (cb: (e: Error | null) => void) => void) => new Promise<void>((res, rej) => fn((e) => (e ? rej(e) : res())));
  for (const io of ['inline', 'async'] as const) {
    const b = await FileBackend.open(path, { readOnly: false, io, extensions: {} });
    const buf = Buffer.alloc(4096 + 16);
    await call((cb) => b.writeCb(4096, Buffer.alloc(4096, 9), false, cb));
    await call((cb) => b.writeCb(8192, Buffer.alloc(512, 8), true, cb));
    await call((cb) => b.readInto(4096, 4096, buf, 16, cb));
    t.ok(buf.subarray(16).equals(Buffer.alloc(4096, 9)), `${io}: read back`);
    await call((cb) => b.readInto(65536 - 100, 100, buf, 0, cb));
    t.equal(io === 'inline' ? b.stats.inline > 0 : b.stats.async > 0, true, `${io}: used`);
    await b.close();
  }
  // A NOWAIT read that is slow and reports "would block": served by the threadpool, then inline stays off.
  let nowaitCalls = 0;
  const slow = {
    preadNoWait: () => { nowaitCalls++; const end = performance.now() + 3; while (performance.now() < end); return -1; },
    // A short NOWAIT write: the rest must be completed by the threadpool.
    pwriteNoWait: (fd: number, buf: Buffer, off: number, len: number, pos: number) => writeSync(fd, buf, off, Math.min(len, 100), pos),
  };
  const b = await FileBackend.open(path, { readOnly: false, io: 'auto', extensions: slow });
  t.teardown(() => b.close());
  const buf = Buffer.alloc(4096);
  for (let i = 0; i < 5; i++) await call((cb) => b.readInto(0, 4096, buf, 0, cb));
  t.equal(nowaitCalls, 3, 'after three slow inline attempts in a row reads go straight to the threadpool');
  t.equal(b.stats.slowInline, 3);
  t.ok(buf.equals(Buffer.alloc(4096, 1)));
  const b2 = await FileBackend.open(path, { readOnly: false, io: 'auto', extensions: slow });
  await call((cb) => b2.writeCb(0, Buffer.alloc(4096, 5), false, cb));
  t.ok(readFileSync(path).subarray(0, 4096).equals(Buffer.alloc(4096, 5)), 'partial NOWAIT write completed by the threadpool');
  await b2.close();
  const ro = await FileBackend.open(path, { readOnly: true, io: 'inline' });
  await t.rejects(call((cb) => ro.writeCb(0, Buffer.alloc(1), false, cb)), 'inline write error reported');
  await t.rejects(call((cb) => ro.readInto(0, 10, Buffer.alloc(5), 0, cb)), 'inline read error reported');
  await ro.close();
});

t.test('buffer pool: reusable small buffers come back once released, others never', async (t) => {
  const { getBuffer, getReusableBuffer, releaseBuffer } = await import('../../nbd/protocol/buffer-pool.js');
  const a = getReusableBuffer(4096);
  t.equal(a.length, 4096);
  releaseBuffer(a);
  releaseBuffer(a); // a double release keeps one entry
  const b = getReusableBuffer(4096);
  t.equal(b, a, 'the released buffer is reused');
  t.not(getReusableBuffer(4096), a, 'handed out only once');
  t.not(getReusableBuffer(512), a, 'free lists are per exact length');
  const plain = getBuffer(4096);
  releaseBuffer(plain); // a slab piece nobody asked to reuse is left to the GC
  t.not(getReusableBuffer(4096), plain);
  const big = getReusableBuffer(256 * 1024);
  t.equal(big.length, 256 * 1024);
  releaseBuffer(big);
  t.equal(getBuffer(256 * 1024).buffer, big.buffer, 'large ones use the size-class pool');
});

t.test('buffer pool: getPooledBuffer pools any size, and a view of a pooled buffer gives its base back', async (t) => {
  const { getPooledBuffer, releaseBuffer } = await import('../../nbd/protocol/buffer-pool.js');
  const small = getPooledBuffer(3000);
  t.equal(small.length, 3000, 'exact length');
  t.equal(small.buffer.byteLength, 4096, 'backed by a 4 KiB class (powers of two up to 64 KiB), not a slab');
  releaseBuffer(small.subarray(10, 20)); // any view: the whole base goes back
  const again = getPooledBuffer(4000);
  t.equal(again.buffer, small.buffer, 'the base is reused for another size in its class');
  t.not(getPooledBuffer(4000).buffer, small.buffer, 'handed out only once');
  releaseBuffer(again);
  releaseBuffer(again); // a double release keeps one entry
  t.equal(getPooledBuffer(1).buffer, small.buffer);
  t.not(getPooledBuffer(1).buffer, small.buffer, 'not twice after a double release');
  t.equal(getPooledBuffer(5000).buffer.byteLength, 8192);
  t.equal(getPooledBuffer(65536).buffer.byteLength, 65536);
  t.equal(getPooledBuffer(70 * 1024).buffer.byteLength, 128 * 1024, 'above 64 KiB: multiples of 64 KiB');
});
