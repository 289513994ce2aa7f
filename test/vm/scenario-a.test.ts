import t from 'tap';
import { closeSync, openSync, ftruncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bootVm, vmUnavailable } from '../../scripts/vm/vm.js';
import { demoAvailable, geormAvailable, startGeormDemo, startGeormExport, startNbdkit, type HostServer } from '../../scripts/vm/host.js';
import { filesystemWorkload, nbdClientDisconnect, nbdtabConnect } from '../../scripts/vm/jobs.js';
import { missingTools } from '../helpers/env.js';
import { checkFilesystemRun, vmWorkspace } from './helpers.js';

/**
 * Scenario (a): a real Linux kernel (Debian's cloud kernel under qemu TCG) attaches /dev/nbd0 with
 * Debian's nbd-client (configured by an /etc/nbdtab line) to an NBD export on the host, makes ext4 on it, writes files and a fio verify
 * job; the host then finds exactly those bytes in its backing volume.
 */
const skip = vmUnavailable() || missingTools('qemu-system-x86_64', 'nbd-client', 'busybox', 'cpio', 'mke2fs', 'debugfs', 'fio', 'apt-get');

t.test('guest nbd-client → host NBD export: mkfs, mount, files, fio verify', { skip, timeout: 300_000 }, async (t) => {
  const { dir, job, images, track } = await vmWorkspace(t, 'georm-vm-a-');
  let server: HostServer | undefined;
  t.teardown(async () => { await server?.stop(); });

  const volume = join(dir, 'volume.img');
  const fd = openSync(volume, 'w');
  ftruncateSync(fd, 96 * 1024 * 1024);
  closeSync(fd);

  // `georm export` once the NBD server has landed; until then the reference server keeps the harness honest.
  server = geormAvailable() ? await startGeormExport(volume) : await startNbdkit(volume);
  t.comment(`host server: ${server.kind} on 127.0.0.1:${server.port}`);

  writeFileSync(join(job, 'run.sh'), `set -e
${nbdtabConnect(server.exportName)}${filesystemWorkload()}${nbdClientDisconnect()}`);
  const res = await bootVm({ images, jobDir: job, workDir: join(dir, 'vm'), timeoutMs: 240_000, forward: [{ guest: 10809, host: server.port }], track });
  await server.stop();
  await checkFilesystemRun(t, 'scenario-a', res, [volume]);
});

t.test('guest nbd-client → GMD primary on the host (georm demo): both volumes identical', { skip: skip || (!demoAvailable() && '`georm demo` not built yet (gmd module)'), timeout: 300_000 }, async (t) => {
  const { dir, job, images, track } = await vmWorkspace(t, 'georm-vm-a-gmd-');
  let server: HostServer | undefined;
  t.teardown(async () => { await server?.stop(); });
  const demo = await startGeormDemo(join(dir, 'demo'), '96M', 'mwc');
  server = demo;
  t.comment(`host server: ${demo.kind}, NBD on 127.0.0.1:${demo.port}, export ${demo.exportName}`);
  writeFileSync(join(job, 'run.sh'), `set -e
${nbdtabConnect(demo.exportName)}${filesystemWorkload()}${nbdClientDisconnect()}`);
  const res = await bootVm({ images, jobDir: job, workDir: join(dir, 'vm'), timeoutMs: 240_000, forward: [{ guest: 10809, host: demo.port }], track });
  await demo.stop(); // primary first, then secondary: both volumes final
  await checkFilesystemRun(t, 'scenario-a-gmd', res, [demo.primaryVolume, demo.secondaryVolume]);
});
