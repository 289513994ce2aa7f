import t, { type Test } from 'tap';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import { once } from 'node:events';
import * as native from '../../src/native/index.js';
import { nativeFileExtensions } from '../../src/native/extensions.js';
import { FileBackend } from '../../nbd/index.js';
import { missingTools, needsRoot, tempDir, ROOT } from '../helpers/env.js';
import { Procs, runCmd, watchOutput } from '../helpers/proc.js';

const noAddon = native.nativeAvailable ? false : `native addon unavailable: ${native.nativeUnavailableReason}`;
const MiB = 1024 * 1024;

/** A sparse file of `size` bytes in a fresh temporary directory, open read-write; both go at teardown. */
function tempFile(t: Test, size: number): { dir: string; path: string; fd: number } {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const path = join(dir, 'vol');
  const fd = openSync(path, 'w+');
  t.teardown(() => closeSync(fd));
  ftruncateSync(fd, size);
  return { dir, path, fd };
}

t.test('addon loads after npm install', async (t) => {
  t.equal(native.nativeAvailable, true, `reason: ${native.nativeUnavailableReason}`);
  t.equal(native.nativeUnavailableReason, null);
});

t.test('SEEK_DATA / SEEK_HOLE, punch hole, zero range on a sparse file', { skip: noAddon }, async (t) => {
  const { fd } = tempFile(t, 8 * MiB);
  writeSync(fd, Buffer.alloc(MiB, 0xab), 0, MiB, 2 * MiB);

  t.equal(native.seekData(fd, 0), 2 * MiB, 'first data at 2 MiB');
  t.equal(native.seekHole(fd, 2 * MiB), 3 * MiB, 'hole after the written MiB');
  t.equal(native.seekData(fd, 3 * MiB), null, 'no data after 3 MiB: ENXIO → null');
  t.equal(native.seekHole(fd, 9 * MiB), 8 * MiB, 'past the end: the file size');

  const pending = native.punchHoleAsync(fd, 2 * MiB, 512 * 1024);
  t.type(pending, Promise);
  t.equal(await pending, undefined);
  t.equal(native.seekData(fd, 0), 2 * MiB + 512 * 1024, 'punched range is a hole');
  t.equal(native.seekHole(fd, 2 * MiB + 512 * 1024), 3 * MiB, 'the data after it is still data');
  const buf = Buffer.alloc(4096, 1);
  readSync(fd, buf, 0, 4096, 2 * MiB);
  t.ok(buf.every((b) => b === 0), 'punched range reads zeros');

  await native.zeroRangeAsync(fd, 2 * MiB + 512 * 1024, 4096);
  readSync(fd, buf, 0, 4096, 2 * MiB + 512 * 1024);
  t.ok(buf.every((b) => b === 0), 'zeroed range reads zeros');
  readSync(fd, buf, 0, 4096, 2 * MiB + 512 * 1024 + 4096);
  t.ok(buf.every((b) => b === 0xab), 'data after the zeroed range kept');
  readSync(fd, buf, 0, 4096, 2 * MiB + 512 * 1024 - 4096);
  t.ok(buf.every((b) => b === 0), 'the punched hole before it still reads zeros');
  t.equal(native.seekHole(fd, 2 * MiB + 512 * 1024), 3 * MiB, 'file size kept; data ends where it did');
  await native.zeroRangeAsync(fd, 0, 0); // a zero length is a no-op, not EINVAL
  await native.punchHoleAsync(fd, 0, 0);
});

t.test('async fallocate: bad arguments and errno errors reject, never throw or crash', { skip: noAddon }, async (t) => {
  const { dir, fd } = tempFile(t, MiB);
  const bad: Array<[string, number, number, number, RegExp]> = [
    ['negative offset', fd, -4096, 4096, /offset must be a non-negative integer/],
    ['negative length', fd, 0, -1, /length must be a non-negative integer/],
    ['fractional offset', fd, 0.5, 4096, /offset must be a non-negative integer/],
    ['offset past 2^53', fd, 2 ** 53 + 2, 4096, /offset must be a non-negative integer/],
    ['NaN length', fd, 0, NaN, /length must be a non-negative integer/],
    ['fd not a number', 'x' as unknown as number, 0, 4096, /fd must be a number/],
  ];
  for (const [what, f, off, len, message] of bad) {
    for (const call of [native.punchHoleAsync, native.zeroRangeAsync]) {
      let p: Promise<void> | undefined;
      t.doesNotThrow(() => { p = call(f, off, len); }, `${what}: no synchronous throw`);
      await t.rejects(p!, { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message }, `${what}: rejected (${call.name})`);
    }
  }

  const closed = openSync(join(dir, 'other'), 'w+');
  closeSync(closed);
  await t.rejects(native.punchHoleAsync(closed, 0, 4096), { code: 'EBADF', errno: 9, syscall: 'fallocate' }, 'closed fd: EBADF');
  await t.rejects(native.zeroRangeAsync(closed, 0, 4096), { code: 'EBADF', errno: 9, syscall: 'fallocate' }, 'closed fd: EBADF');
  const ro = openSync(join(dir, 'vol'), 'r');
  t.teardown(() => closeSync(ro));
  await t.rejects(native.zeroRangeAsync(ro, 0, 4096), { code: 'EBADF', syscall: 'fallocate', message: /^fallocate: Bad file descriptor/ }, 'read-only fd: EBADF');

  // tmpfs has no ZERO_RANGE: the refusal FileBackend falls through on arrives as code EOPNOTSUPP.
  const TMPFS_MAGIC = 0x01021994;
  if (!existsSync('/dev/shm') || statfsSync('/dev/shm').type !== TMPFS_MAGIC) { t.comment('no tmpfs at /dev/shm: EOPNOTSUPP case not run'); return; }
  const shm = mkdtempSync('/dev/shm/georm-test-');
  t.teardown(() => rmSync(shm, { recursive: true, force: true }));
  const sfd = openSync(join(shm, 'vol'), 'w+');
  t.teardown(() => closeSync(sfd));
  ftruncateSync(sfd, MiB);
  await t.rejects(native.zeroRangeAsync(sfd, 0, 4096), { code: 'EOPNOTSUPP', errno: 95, syscall: 'fallocate' }, 'tmpfs: ZERO_RANGE refused');
  await native.punchHoleAsync(sfd, 0, 4096);
});

/**
 * Runs `calls` in `lanes` concurrent chains (each starts its next call when its last one settled)
 * and counts the turns the event loop makes (setImmediate callbacks) meanwhile. A call done on the
 * loop thread settles before the loop can turn, so the count is 0 then, however long the calls take;
 * a call done in the threadpool is reported back by the loop, so the loop turns between the links
 * of each chain, even on a machine so fast or busy that the concurrent calls overtake it.
 */
async function turnsWhilePending(calls: Array<() => Promise<void>>, lanes = 4): Promise<number> {
  let pending = true;
  let turns = 0;
  const turn = (): void => { if (pending) { turns++; setImmediate(turn); } };
  setImmediate(turn);
  let next = 0;
  const lane = async (): Promise<void> => { while (next < calls.length) await calls[next++]!(); };
  try { await Promise.all(Array.from({ length: lanes }, lane)); } finally { pending = false; }
  return turns;
}

t.test('async fallocate runs off the event loop: it keeps turning during many large zero ranges and punches', { skip: noAddon }, async (t) => {
  // 64 ranges of 32 MiB over a 2 GiB sparse file: ZERO_RANGE allocates unwritten extents and the
  // punch frees them again, some milliseconds of kernel work in all (no data blocks are written).
  const N = 64;
  const R = 32 * MiB;
  const { path, fd } = tempFile(t, N * R);
  writeSync(fd, Buffer.alloc(4096, 0xcd), 0, 4096, 5 * R + 8192);
  const ranges = Array.from({ length: N }, (_, i) => i * R);

  const zeroTurns = await turnsWhilePending(ranges.map((off) => () => native.zeroRangeAsync(fd, off, R)));
  t.ok(zeroTurns > 0, `the event loop turned ${zeroTurns} times while the zero ranges ran`);
  const buf = Buffer.alloc(4096, 1);
  readSync(fd, buf, 0, 4096, 5 * R + 8192);
  t.ok(buf.every((b) => b === 0), 'the written block reads zeros');
  const punchTurns = await turnsWhilePending(ranges.map((off) => () => native.punchHoleAsync(fd, off, R)));
  t.ok(punchTurns > 0, `the event loop turned ${punchTurns} times while the punches ran`);
  t.equal(native.seekData(fd, 0), null, 'all holes now');

  // The same through FileBackend, as the NBD server and the GMD call it.
  const b = await FileBackend.open(path, { readOnly: false, extensions: nativeFileExtensions() });
  t.teardown(() => b.close());
  const zeros = await turnsWhilePending(ranges.map((off) => () => b.zero(off, R, { fua: false, noHole: true, fastZero: true })));
  t.ok(zeros > 0, `FileBackend.zero: the event loop turned ${zeros} times`);
  const trims = await turnsWhilePending(ranges.map((off) => () => b.trim(off, R, { fua: false })));
  t.ok(trims > 0, `FileBackend.trim: the event loop turned ${trims} times`);
  t.equal(native.seekData(fd, 0), null, 'trimmed to holes');
});

t.test('pread / pwrite: one system call on a range of a buffer; errors as fs gives them', { skip: noAddon }, async (t) => {
  const { dir, fd } = tempFile(t, MiB);
  const src = Buffer.alloc(10000);
  for (let i = 0; i < src.length; i++) src[i] = (i * 31 + 7) & 0xff;
  t.equal(native.pwrite(fd, src, 1000, 4096, 5 * 4096 + 17), 4096, 'wrote 4096 bytes from the middle of the buffer');
  const viaFs = Buffer.alloc(4096);
  readSync(fd, viaFs, 0, 4096, 5 * 4096 + 17);
  t.ok(viaFs.equals(src.subarray(1000, 5096)), 'fs reads back exactly buf[1000, 5096) at the position');
  const back = Buffer.alloc(6000, 0xee);
  t.equal(native.pread(fd, back, 500, 4096, 5 * 4096 + 17), 4096);
  t.ok(back.subarray(500, 4596).equals(src.subarray(1000, 5096)), 'pread fills buf[500, 4596)');
  t.ok(back.subarray(0, 500).every((b) => b === 0xee) && back.subarray(4596).every((b) => b === 0xee), 'nothing outside the range touched');
  t.equal(native.pread(fd, back, 0, 4096, MiB - 100), 100, 'a read across the end returns what there is');
  t.equal(native.pread(fd, back, 0, 4096, 2 * MiB), 0, 'a read past the end returns 0');
  const view = src.subarray(2000, 3000);
  t.equal(native.pwrite(fd, view, 0, 1000, 0), 1000, 'a subarray view writes from its own start');
  readSync(fd, viaFs, 0, 1000, 0);
  t.ok(viaFs.subarray(0, 1000).equals(view));
  t.throws(() => native.pwrite(fd, src, 9000, 2000, 0), { code: 'ERR_OUT_OF_RANGE' }, 'a range outside the buffer is refused before any I/O');
  t.throws(() => native.pread(fd, src, -1, 10, 0), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => native.pwrite(fd, 'text' as unknown as Buffer, 0, 4, 0), { code: 'ERR_INVALID_ARG_TYPE' });
  const ro = openSync(join(dir, 'vol'), 'r');
  t.teardown(() => closeSync(ro));
  t.throws(() => native.pwrite(ro, src, 0, 10, 0), { code: 'EBADF', errno: 9, syscall: 'write' }, 'a read-only fd: EBADF, as fs.writeSync says');
  t.throws(() => native.pread(9999, src, 0, 10, 0), { code: 'EBADF', syscall: 'read' });
});

t.test('errors carry errno code, syscall and path', { skip: noAddon }, async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const fd = openSync(join(dir, 'f'), 'w+');
  t.teardown(() => closeSync(fd));
  t.throws(() => native.blockDeviceSize(fd), { code: 'ENOTTY', errno: 25, syscall: 'ioctl' }, 'BLKGETSIZE64 on a file');
  t.throws(() => native.seekData(-1, 0), { code: 'EBADF', syscall: 'lseek' });
  await t.rejects(native.punchHoleAsync(-1, 0, 4096), { code: 'EBADF', syscall: 'fallocate' });
  t.throws(() => native.seekData(fd, -5), { code: 'ERR_INVALID_ARG_TYPE' }, 'negative offset refused');

  const [a, b] = native.socketpair();
  closeSync(b);
  t.throws(() => native.nbdAttach(join(dir, 'nbd-missing'), a, { size: MiB, blockSize: 4096, flags: 1, timeoutSec: 5 }),
    { code: 'ENOENT', syscall: 'open', path: join(dir, 'nbd-missing'), message: /modprobe nbd/ }, 'missing device names modprobe nbd');
  const [c, d] = native.socketpair();
  closeSync(d);
  t.throws(() => native.nbdAttach(join(dir, 'f'), c, { size: MiB, blockSize: 4096, flags: 1, timeoutSec: 5 }),
    { code: 'ENOTTY', syscall: 'ioctl', message: /NBD_SET_SOCK.*not an NBD device/ }, 'a regular file is not an NBD device');
  const [e, f] = native.socketpair();
  closeSync(f);
  t.throws(() => native.nbdAttach('/dev/null', e, { size: MiB, blockSize: 1000, flags: 1, timeoutSec: 5 }), { code: 'ERR_OUT_OF_RANGE' });
  await t.rejects(native.nbdDetach(join(dir, 'nbd-missing')), { code: 'ENOENT', message: /modprobe nbd/ });
  if (!existsSync('/sys/module/nbd')) {
    // On a kernel without NBD (the development machine) the real device path gives the same hint.
    const [g, h] = native.socketpair();
    closeSync(h);
    t.throws(() => native.nbdAttach('/dev/nbd0', g, { size: MiB, blockSize: 4096, flags: 1, timeoutSec: 5 }), { message: /modprobe nbd/ });
  }
});

t.test('blockDeviceSize on a loop device', { skip: noAddon || needsRoot() || missingTools('losetup') }, async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const img = join(dir, 'img');
  const fd0 = openSync(img, 'w');
  ftruncateSync(fd0, 3 * MiB);
  closeSync(fd0);
  const r = await runCmd('losetup', ['-f', '--show', img]);
  if (r.code !== 0) { t.comment(`losetup failed: ${r.stderr.trim()}`); return; }
  const loop = r.stdout.trim();
  t.teardown(() => runCmd('losetup', ['-d', loop]));
  const fd = openSync(loop, 'r');
  t.teardown(() => closeSync(fd));
  t.equal(native.blockDeviceSize(fd), 3 * MiB);
});

t.test('socketpair: the two ends are connected stream sockets', { skip: noAddon }, async (t) => {
  const [a, b] = native.socketpair();
  const sa = new net.Socket({ fd: a, readable: true, writable: true });
  const sb = new net.Socket({ fd: b, readable: true, writable: true });
  t.teardown(() => { sa.destroy(); sb.destroy(); });
  sa.end('hello through the pair');
  let got = '';
  sb.setEncoding('utf8').on('data', (d: string) => { got += d; });
  await once(sb, 'end');
  t.equal(got, 'hello through the pair');
});

t.test('sdNotify: false without NOTIFY_SOCKET, datagrams to a path and to an abstract socket', { skip: noAddon || missingTools('python3') }, async (t) => {
  const saved = process.env.NOTIFY_SOCKET;
  t.teardown(() => { if (saved === undefined) delete process.env.NOTIFY_SOCKET; else process.env.NOTIFY_SOCKET = saved; });
  delete process.env.NOTIFY_SOCKET;
  t.equal(native.sdNotify('READY=1'), false);

  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const path = join(dir, 'notify');
  const abstract = `georm-test-${process.pid}`;
  const procs = new Procs();
  t.teardown(() => procs.stopAll());
  // Node has no unix datagram sockets, which is why the addon exists; python plays systemd here.
  const py = procs.spawn('python3', ['-u', '-c', `
import socket, sys
a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); a.bind(sys.argv[1])
b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); b.bind('\\0' + sys.argv[2])
print('bound', flush=True)
print('path:' + a.recv(4096).decode().replace('\\n', '|'), flush=True)
print('abstract:' + b.recv(4096).decode().replace('\\n', '|'), flush=True)
`, path, abstract]);
  const out = watchOutput(py);
  await out.wait(/bound/);
  process.env.NOTIFY_SOCKET = path;
  t.equal(native.sdNotify('READY=1\nSTATUS=serving'), true);
  await out.wait(/path:READY=1\|STATUS=serving/);
  process.env.NOTIFY_SOCKET = `@${abstract}`;
  t.equal(native.sdNotify('WATCHDOG=1'), true);
  await out.wait(/abstract:WATCHDOG=1/);
  process.env.NOTIFY_SOCKET = 'relative/path';
  t.throws(() => native.sdNotify('READY=1'), { code: 'EINVAL' });
  process.env.NOTIFY_SOCKET = join(dir, 'nobody-listens');
  t.throws(() => native.sdNotify('READY=1'), { code: 'ENOENT', syscall: 'sendto' });
});

t.test('without the addon: reason given, calls refuse with NATIVE_UNAVAILABLE', async (t) => {
  const script = `
    const n = await import(${JSON.stringify(join(ROOT, 'dist/src/native/index.js'))});
    const out = { available: n.nativeAvailable, reason: n.nativeUnavailableReason };
    try { n.seekData(0, 0); } catch (e) { out.code = e.code; }
    try { n.nbdAttach('/dev/nbd0', 0, {}); } catch (e) { out.code2 = e.code; }
    await n.punchHoleAsync(0, 0, 1).catch((e) => { out.code3 = e.code; });
    out.notify = n.sdNotify('READY=1');
    console.log(JSON.stringify(out));`;
  const env: NodeJS.ProcessEnv = { ...process.env, GEORM_NATIVE_DISABLE: '1' };
  delete env.NOTIFY_SOCKET;
  const r = await runCmd(process.execPath, ['--input-type=module', '-e', script], { env });
  t.equal(r.code, 0, r.stderr);
  t.same(JSON.parse(r.stdout), { available: false, reason: 'disabled by GEORM_NATIVE_DISABLE=1', code: 'NATIVE_UNAVAILABLE', code2: 'NATIVE_UNAVAILABLE', code3: 'NATIVE_UNAVAILABLE', notify: false });

  const r2 = await runCmd(process.execPath, ['--input-type=module', '-e', script], { env: { ...env, GEORM_NATIVE_DISABLE: '', GEORM_NATIVE_DIR: '/nonexistent' } });
  const o2 = JSON.parse(r2.stdout) as { available: boolean; reason: string };
  t.equal(o2.available, false);
  t.match(o2.reason, /native addon not built/);
});
