/**
 * A real ext4 on the NBD server without a kernel NBD driver: nbdfuse exposes the export as a file,
 * losetup makes it a block device, then mkfs.ext4, mount, write, umount and a clean e2fsck -fn.
 * The server runs as a separate `georm export` process: the kernel's page cache and FUSE wait on it,
 * so a server sharing this test's event loop would deadlock on the test's own file I/O.
 */
import t from 'tap';
import { existsSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { randomBytes, createHash } from 'node:crypto';
import { join } from 'node:path';
import { missingTools, needsRoot, tempDir, GEORM_BIN } from '../helpers/env.js';
import { Procs, runCmd, watchOutput } from '../helpers/proc.js';
import { SYSTEM_PATH } from './clients.js';

const MiB = 1024 * 1024;
const env = { ...process.env, PATH: SYSTEM_PATH };
const skip = needsRoot() || missingTools('nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount')
  || (existsSync('/dev/fuse') ? false : 'no /dev/fuse');

async function sh(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  const r = await runCmd(cmd, args, { env, timeoutMs: 30000 });
  return { code: r.code, out: r.stdout + r.stderr };
}

t.test('ext4 over nbdfuse + loop', { skip }, async (t) => {
  const { dir, cleanup } = tempDir('georm-ext4-');
  const procs = new Procs();
  const fuseDir = join(dir, 'fuse');
  const mnt = join(dir, 'mnt');
  const sock = join(dir, 'nbd.sock');
  mkdirSync(fuseDir);
  mkdirSync(mnt);
  let loop = '';
  let mounted = false;
  t.teardown(async () => {
    if (mounted) await sh('umount', ['-l', mnt]);
    if (loop) await sh('losetup', ['-d', loop]);
    await sh('fusermount3', ['-u', fuseDir]).then((r) => (r.code === 0 ? r : sh('umount', ['-l', fuseDir])));
    await procs.stopAll();
    cleanup();
  });

  const server = procs.spawn('node', [GEORM_BIN, 'export', join(dir, 'disk.img'), '--size', '128M', '--listen', `unix:${sock}`, '--name', 'disk']);
  const [uri] = await watchOutput(server).wait(/nbd\+unix:\S+/);
  procs.spawn('nbdfuse', [fuseDir, uri!], { env });
  const file = join(fuseDir, 'nbd');
  for (let i = 0; i < 100 && !existsSync(file); i++) await new Promise((r) => setTimeout(r, 100));
  t.ok(existsSync(file), 'nbdfuse exposes the export as a file');

  const ls = await sh('losetup', ['-f', '--show', file]);
  t.equal(ls.code, 0, ls.out);
  loop = ls.out.trim().split('\n')[0]!;
  t.match(loop, /^\/dev\/loop\d+$/);

  t.equal((await sh('mkfs.ext4', ['-q', '-F', loop])).code, 0, 'mkfs.ext4');
  const m = await sh('mount', [loop, mnt]);
  t.equal(m.code, 0, m.out);
  mounted = true;
  const data = randomBytes(16 * MiB);
  writeFileSync(join(mnt, 'data.bin'), data);
  for (let i = 0; i < 50; i++) writeFileSync(join(mnt, `small-${i}.txt`), `file ${i}\n`.repeat(i + 1));
  t.equal((await sh('sync', [])).code, 0);
  t.equal((await sh('umount', [mnt])).code, 0, 'umount');
  mounted = false;

  const fsck = await sh('e2fsck', ['-fn', loop]);
  t.equal(fsck.code, 0, `e2fsck -fn clean: ${fsck.out}`);

  t.equal((await sh('mount', ['-o', 'ro', loop, mnt])).code, 0, 'remount read-only');
  mounted = true;
  const back = readFileSync(join(mnt, 'data.bin'));
  t.equal(createHash('sha256').update(back).digest('hex'), createHash('sha256').update(data).digest('hex'), 'data survives');
  t.equal(readFileSync(join(mnt, 'small-7.txt'), 'utf8'), 'file 7\n'.repeat(8));
});
