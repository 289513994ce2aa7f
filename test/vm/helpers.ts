import { createHash } from 'node:crypto';
import { createReadStream, mkdirSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Test } from 'tap';
import { buildVm, keepArtifact, markers, type BootResult, type VmImages } from '../../scripts/vm/vm.js';
import { tempDir } from '../helpers/env.js';

export interface VmWorkspace {
  /** The test's temporary directory (removed in teardown). */
  dir: string;
  /** An empty `dir/job`, which the guest sees as /job. */
  job: string;
  images: VmImages;
  /** Registers a process (qemu, a host-side peer) to be SIGKILLed in teardown if still running. */
  track: (c: ChildProcess) => void;
}

/** What every VM scenario starts with: a temp dir with a job folder, the cached images, process cleanup. */
export async function vmWorkspace(t: Test, prefix: string): Promise<VmWorkspace> {
  const { dir, cleanup } = tempDir(prefix);
  t.teardown(cleanup);
  const children: ChildProcess[] = [];
  t.teardown(() => { for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL'); });
  const images = await buildVm();
  const job = join(dir, 'job');
  mkdirSync(job);
  return { dir, job, images, track: (c) => { children.push(c); } };
}

/** sha256 of a whole file (a backing volume). */
export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** sha256 of one file inside an ext4 image, read with debugfs (no mount needed). */
export function sha256InExt4(image: string, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    const p = spawn('debugfs', ['-R', `cat /${path}`, image], { stdio: ['ignore', 'pipe', 'ignore'] });
    p.stdout.on('data', (d: Buffer) => h.update(d));
    p.once('error', reject);
    p.once('exit', (code) => (code === 0 ? resolve(h.digest('hex')) : reject(new Error(`debugfs exit ${code}`))));
  });
}

/**
 * The checks both scenarios share: the guest's job finished, fio verified, files read back the same
 * after a remount, and the host's backing volume holds exactly what the guest wrote.
 */
export async function checkFilesystemRun(t: Test, name: string, res: BootResult, volumes: string[]): Promise<void> {
  if (res.exitCode !== 0 || res.timedOut) {
    const kept = keepArtifact(res.consoleLog, name);
    t.fail(`guest job failed (exit ${res.exitCode}${res.timedOut ? ', timed out' : ''}); console kept at ${kept}`);
    t.comment(res.console.split('\n').slice(-60).join('\n'));
    return;
  }
  t.match(res.console, /OK fio verify/, 'fio verify job passed in the guest');
  t.match(res.console, /OK e2fsck clean/, 'e2fsck finds the filesystem clean');
  const sha = Object.fromEntries(markers(res.console, 'SHA').map(([f, h]) => [f!, h!]));
  const sha2 = Object.fromEntries(markers(res.console, 'SHA2').map(([f, h]) => [f!, h!]));
  t.equal(Object.keys(sha).length, 4, 'four files checksummed');
  t.same(sha2, sha, 'checksums unchanged after umount and mount');
  const devSha = markers(res.console, 'DEVSHA')[0]?.[0];
  for (const vol of volumes) {
    for (const [f, h] of Object.entries(sha)) t.equal(await sha256InExt4(vol, f), h, `${f} on ${vol} matches the guest's checksum`);
    t.equal(await sha256File(vol), devSha, `${vol} is byte-identical to the guest's /dev/nbd0`);
  }
  if (t.passing()) return;
  t.comment(`console kept at ${keepArtifact(res.consoleLog, name)}`);
}
