import t from 'tap';
import { closeSync, existsSync, ftruncateSync, openSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { GEORM_BIN, missingTools, tempDir } from '../helpers/env.js';
import { Procs, runCmd, watchOutput } from '../helpers/proc.js';
import { attachToDevice, blockSizeFor, parseAttachTimeout } from '../../src/native/attach.js';
import { nativeAvailable } from '../../src/native/index.js';
import { SYSTEM_PATH } from '../nbd/clients.js';

const MiB = 1024 * 1024;

t.test('georm export --attach without an NBD driver says to modprobe nbd', { skip: existsSync('/sys/module/nbd') && 'this kernel has nbd loaded' }, async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const r = await runCmd(process.execPath, [GEORM_BIN, 'export', join(dir, 'vol'), '--size', '16M', '--attach', '/dev/nbd0'], { timeoutMs: 30_000 });
  t.equal(r.code, 1, r.stderr);
  t.match(r.stderr, nativeAvailable ? /cannot attach \/dev\/nbd0: open \/dev\/nbd0: No such file or directory.*modprobe nbd/ : /cannot attach/);
  const bad = await runCmd(process.execPath, [GEORM_BIN, 'export', join(dir, 'vol'), '--attach', '/dev/nbd0', '--attach-timeout', '0'], { timeoutMs: 30_000 });
  t.equal(bad.code, 1);
  t.match(bad.stderr, /--attach-timeout must be a whole number of seconds/);
});

t.test('attach helpers', async (t) => {
  t.equal(blockSizeFor(96 * MiB), 4096);
  t.equal(blockSizeFor(6144), 2048);
  t.equal(blockSizeFor(1024 * 3), 1024);
  t.equal(blockSizeFor(512 * 3), 512);
  t.equal(parseAttachTimeout(undefined), 60);
  t.equal(parseAttachTimeout('15'), 15);
  t.throws(() => parseAttachTimeout('1.5'), { code: 'GEORM_ERR_USAGE' });
  t.throws(() => attachToDevice({ device: '/dev/nbd0', size: MiB, flags: 1, timeoutSec: 0, serve: () => {} }),
    { code: nativeAvailable ? 'GEORM_ERR_USAGE' : 'GEORM_ERR_NATIVE' });
  if (nativeAvailable) {
    const { dir, cleanup } = tempDir();
    t.teardown(cleanup);
    let served = 0;
    t.throws(() => attachToDevice({ device: join(dir, 'nope'), size: MiB, flags: 1, timeoutSec: 5, serve: (s) => { served++; s.on('error', () => {}); } }),
      { code: 'GEORM_ERR_ATTACH', message: /modprobe nbd/ });
    t.equal(served, 1, 'the server side was handed its socket (and closed on failure)');
  }
});

t.test('georm export uses the addon: holes in BLOCK_STATUS, TRIM punches holes', { skip: !nativeAvailable || missingTools('nbdinfo', 'nbdsh') }, async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const vol = join(dir, 'vol');
  const fd = openSync(vol, 'w');
  ftruncateSync(fd, 16 * MiB);
  writeSync(fd, Buffer.alloc(2 * MiB, 7), 0, 2 * MiB, 4 * MiB);
  closeSync(fd);
  const procs = new Procs();
  t.teardown(() => procs.stopAll());
  const sock = join(dir, 'nbd.sock');
  const p = procs.spawn(process.execPath, [GEORM_BIN, 'export', vol, '--listen', `unix:${sock}`, '--name', 'v']);
  const out = watchOutput(p);
  await out.wait(/nbd\+unix/);
  const uri = `nbd+unix:///v?socket=${sock}`;
  const map = await runCmd('nbdinfo', ['--map', '--json', uri]);
  t.equal(map.code, 0, map.stderr);
  const extents = JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>;
  t.ok(extents.some((e) => e.offset === 0 && (e.type & 1) === 1), 'a hole at the start');
  t.ok(extents.some((e) => e.offset <= 4 * MiB && e.offset + e.length >= 6 * MiB && e.type === 0), 'data at 4–6 MiB');
  const before = statSync(vol).blocks;
  const trim = await runCmd('nbdsh', ['-u', uri, '-c', `h.trim(${4 * MiB}, ${2 * MiB})`, '-c', 'h.flush()'],
    { env: { ...process.env, PATH: SYSTEM_PATH } });
  t.equal(trim.code, 0, trim.stderr);
  t.ok(statSync(vol).blocks < before, `TRIM deallocated blocks (${before} → ${statSync(vol).blocks})`);
});
