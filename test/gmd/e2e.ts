/** Shared body of the two-site end-to-end tests (loopback and network namespaces). */
import { randomBytes, createHash } from 'node:crypto';
import { writeFile, readFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Test } from 'tap';
import { TestCluster, mountExt4, identical } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import type { GmdMode } from '../../src/gmd/protocol.js';

export async function ext4TwoSite(t: Test, mode: GmdMode, netns: boolean): Promise<void> {
  const c = await TestCluster.create({ mode, size: 64 * 1024 * 1024, netns });
  t.teardown(() => c.cleanup());
  await c.up();
  const m = await mountExt4(c.dir, c.uri);
  t.teardown(m.unmount);
  const sums = new Map<string, string>();
  await mkdir(join(m.mnt, 'data'));
  for (let i = 0; i < 24; i++) {
    const buf = randomBytes(4096 + Math.floor(Math.random() * 700 * 1024));
    const name = join(m.mnt, 'data', `f${i}.bin`);
    await writeFile(name, buf);
    sums.set(name, createHash('sha256').update(buf).digest('hex'));
  }
  await runCmd('sync', []);
  for (const [name, sum] of sums) {
    t.equal(createHash('sha256').update(await readFile(name)).digest('hex'), sum, `checksum of ${name.split('/').pop()}`);
  }
  await m.unmount();
  await c.waitInSync();
  const s = await c.status('alpha');
  t.ok(s.stats.remoteWriteBytes > 1024 * 1024, `writes were mirrored (${s.stats.remoteWriteBytes} bytes)`);
  if (mode === 'async') t.ok(s.stats.asyncInflightMax > 0, 'async queue used');
  await c.terminate('alpha');
  await c.terminate('beta');
  const same = await identical(c.vol.alpha!, c.vol.beta!);
  t.ok(same.same, `volumes byte-identical after stop (${same.detail})`);
  const fsck = await runCmd('e2fsck', ['-fn', c.vol.beta!], { timeoutMs: 30000 });
  t.equal(fsck.code, 0, `the secondary volume holds a clean ext4 file system ${fsck.stdout.slice(-300)} ${fsck.stderr.slice(-300)}`);
}
