import t from 'tap';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { bootVm, buildVm, dumpJobFile, markers, stageRepo, vmUnavailable } from '../../scripts/vm/vm.js';
import { geormAvailable } from '../../scripts/vm/host.js';
import { crashAttached, filesystemWorkload, geormAttach, geormDetach } from '../../scripts/vm/jobs.js';
import { missingTools, tempDir, ROOT } from '../helpers/env.js';
import { checkFilesystemRun, sha256File } from './helpers.js';

/**
 * Scenario (b): georm runs inside the guest (Node, the compiled code and the built addon copied in)
 * and attaches /dev/nbd0 itself through the addon (socketpair + NBD_SET_SOCK … NBD_DO_IT); the same
 * filesystem workload runs on it, SIGTERM detaches, and the volume is checked on the host.
 */
const skip = vmUnavailable() || missingTools('qemu-system-x86_64', 'busybox', 'cpio', 'mke2fs', 'debugfs', 'fio', 'apt-get')
  || (!existsSync(join(ROOT, 'build/Release/georm_native.node')) && 'native addon not built')
  || (!geormAvailable() && '`georm export` not built yet (nbd module)');

t.test('georm export --attach /dev/nbd0 inside the guest: mkfs, mount, files, fio verify, detach', { skip, timeout: 400_000 }, async (t) => {
  const { dir, cleanup } = tempDir('georm-vm-b-');
  t.teardown(cleanup);
  const children: ChildProcess[] = [];
  t.teardown(() => { for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL'); });

  const images = await buildVm();
  const job = join(dir, 'job');
  mkdirSync(job);
  await stageRepo(join(job, 'georm'));
  writeFileSync(join(job, 'run.sh'), `set -e
${geormAttach('/job/vol.img', 96)}${filesystemWorkload()}${geormDetach()}
echo "VOLSHA $(sha256sum /job/vol.img | cut -d' ' -f1)"
${crashAttached('/job/vol.img', 96)}`);
  const res = await bootVm({ images, jobDir: job, workDir: join(dir, 'vm'), timeoutMs: 360_000, jobSpaceMb: 160, track: (c) => children.push(c) });
  t.match(res.console, /OK attached \/dev\/nbd0 196608 sectors/, 'the kernel sees the whole 96 MiB volume');
  t.match(res.console, /EXPORT-EXIT 0/, 'georm export exits 0 on SIGTERM after detaching');
  t.match(res.console, /OK detached/, 'the device is released (size 0) after stop');
  const vol = join(dir, 'vol.img');
  if (res.exitCode === 0) await dumpJobFile(res.jobImage, '/vol.img', vol);
  await checkFilesystemRun(t, 'scenario-b', res, res.exitCode === 0 ? [vol] : []);
  if (res.exitCode === 0) t.equal(await sha256File(vol), markers(res.console, 'VOLSHA')[0]?.[0], 'volume read back on the host equals the guest volume');
  // After kill -9 of the attached daemon the device must fail fast, not hang (no timeout needed).
  const [bytes, rc] = markers(res.console, 'CRASH-READ')[0] ?? [];
  t.equal(bytes, '0', 'a read after the crash returns no data');
  t.not(rc, '124', 'the read did not hang until the 90 s timeout');
  t.equal(markers(res.console, 'CRASH-SIZE')[0]?.[0], '0', 'the kernel released the device after the crash');
});
