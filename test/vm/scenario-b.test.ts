import t from 'tap';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bootVm, dumpJobFile, markers, stageRepo, vmUnavailable } from '../../scripts/vm/vm.js';
import { demoAvailable, geormAvailable } from '../../scripts/vm/host.js';
import { crashAttached, filesystemWorkload, geormAttach, geormDetach, gmdWaitAttached } from '../../scripts/vm/jobs.js';
import { missingTools, ROOT } from '../helpers/env.js';
import { checkFilesystemRun, sha256File, vmWorkspace } from './helpers.js';
import { runHostBeta, setupVmPair } from './gmd-config.js';

/**
 * Scenario (b): georm runs inside the guest (Node, the compiled code and the built addon copied in)
 * and attaches /dev/nbd0 itself through the addon (socketpair + NBD_SET_SOCK … NBD_DO_IT); the same
 * filesystem workload runs on it, SIGTERM detaches, and the volume is checked on the host.
 */
const skip = vmUnavailable() || missingTools('qemu-system-x86_64', 'busybox', 'cpio', 'mke2fs', 'debugfs', 'fio', 'apt-get')
  || (!existsSync(join(ROOT, 'build/Release/georm_native.node')) && 'native addon not built')
  || (!geormAvailable() && '`georm export` not built yet (nbd module)');

t.test('georm export --attach /dev/nbd0 inside the guest: mkfs, mount, files, fio verify, detach', { skip, timeout: 400_000 }, async (t) => {
  const { dir, job, images, track } = await vmWorkspace(t, 'georm-vm-b-');
  await stageRepo(join(job, 'georm'));
  writeFileSync(join(job, 'run.sh'), `set -e
${geormAttach('/job/vol.img', 96)}${filesystemWorkload()}${geormDetach()}
echo "VOLSHA $(sha256sum /job/vol.img | cut -d' ' -f1)"
${crashAttached('/job/vol.img', 96)}`);
  const res = await bootVm({ images, jobDir: job, workDir: join(dir, 'vm'), timeoutMs: 360_000, jobSpaceMb: 160, track });
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

t.test('GMD primary inside the guest attaches /dev/nbd0 itself, its secondary on the host: both volumes identical',
  { skip: skip || (!demoAvailable() && 'GMD not built yet (gmd module)'), timeout: 400_000 }, async (t) => {
  const { dir, job, images, track } = await vmWorkspace(t, 'georm-vm-b-gmd-');
  await stageRepo(join(job, 'georm'));
  const { pair, hostCfg, udpIn } = await setupVmPair(dir, job, { mode: 'mwc', alphaVolume: '/job/alpha.img', alphaMap: '/job/alpha.map', betaSizeMb: 96 });
  // The secondary starts first (alpha still down), so the primary finds an AVAILABLE peer.
  const { child: beta, log: betaLog, available } = runHostBeta(hostCfg, pair.beta.runDir, track, ['--start', '--down', 'alpha']);
  await available();
  writeFileSync(join(job, 'run.sh'), `set -e
truncate -s 96M /job/alpha.img
mkdir -p /tmp/run
node /job/georm/bin/georm.js gmd run vm0gmd --config /job/georm.toml --machine alpha --start >/tmp/gmd.out 2>/tmp/gmd.err &
GEORM_PID=$!
${gmdWaitAttached()}echo "OK attached /dev/nbd0 $(cat /sys/block/nbd0/size) sectors"
${filesystemWorkload()}${geormDetach()}
echo "VOLSHA $(sha256sum /job/alpha.img | cut -d' ' -f1)"
`);
  const res = await bootVm({ images, jobDir: job, workDir: join(dir, 'vm'), timeoutMs: 360_000, jobSpaceMb: 160,
    udpIn, track });
  // Stop the secondary cleanly, then compare.
  if (beta.exitCode === null) { beta.kill('SIGTERM'); await new Promise((r) => beta.once('exit', r)); }
  t.match(res.console, /OK attached \/dev\/nbd0 196608 sectors/, 'the GMD attached the whole device');
  t.match(res.console, /EXPORT-EXIT 0/, 'the GMD exits 0 on SIGTERM after detaching');
  const alpha = join(dir, 'alpha.img');
  if (res.exitCode === 0) await dumpJobFile(res.jobImage, '/alpha.img', alpha);
  if (res.exitCode !== 0) t.comment(`secondary log: ${betaLog().slice(-3000)}`);
  await checkFilesystemRun(t, 'scenario-b-gmd', res, res.exitCode === 0 ? [alpha, pair.beta.volume] : []);
});
