import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The VM harness: boots Debian's cloud kernel under qemu TCG with the busybox initramfs and tools
 * disk that scripts/vm/build.sh makes (and caches), runs one job script as the guest's workload and
 * returns the console. The guest reaches the host's loopback as 10.0.2.2 (-netdev user).
 *
 * A job is a directory: `run.sh` (run by the guest's init from /job, with `sh -x`) plus any files it
 * needs; it becomes the guest's second disk (/dev/vdb, ext4 made with `mke2fs -d`), writable, so the
 * guest can leave results there for `readJobFile`.
 */

/** Repository root (this file runs from dist/scripts/vm/). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export interface VmImages { kernel: string; initrd: string; tools: string; kver: string }

export interface RunResult<T = unknown> { code: number | null; stdout: string; stderr: string; extra?: T }

function run(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<RunResult> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd ?? process.cwd() });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 300_000);
  return once(child, 'exit').then(([code]) => { clearTimeout(timer); return { code: code as number | null, stdout, stderr }; });
}

/** Why the VM tests cannot run here, or false. */
export function vmUnavailable(): string | false {
  if (process.platform !== 'linux') return 'VM tests need Linux';
  if (process.getuid?.() !== 0) return 'VM tests need root (apt-get download, kernel package extraction)';
  return false;
}

/** Builds or reuses the cached kernel, initramfs and tools disk. */
export async function buildVm(cacheDir?: string): Promise<VmImages> {
  const r = await run('bash', [join(ROOT, 'scripts/vm/build.sh'), ...(cacheDir ? [cacheDir] : [])], { timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`scripts/vm/build.sh failed (${r.code}): ${r.stderr.slice(-3000)}`);
  const kv = Object.fromEntries(r.stdout.trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
  return { kernel: kv.KERNEL!, initrd: kv.INITRD!, tools: kv.TOOLS!, kver: kv.KVER! };
}

/** Production files of this repository that `georm` needs inside the guest (for scenario b). */
export async function stageRepo(dest: string): Promise<void> {
  mkdirSync(dest, { recursive: true });
  const ls = await run('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: ROOT, env: { ...process.env, npm_config_loglevel: 'silent' } });
  const dirs = ls.stdout.trim().split('\n').filter((d) => d && d !== ROOT && d.startsWith(ROOT));
  const cp = await run('bash', ['-c', [
    `set -e; cd ${JSON.stringify(ROOT)}`,
    `tar -cf - package.json bin dist/src dist/nbd build/Release/georm_native.node ${dirs.map((d) => JSON.stringify(d.slice(ROOT.length + 1))).join(' ')} | tar -xf - -C ${JSON.stringify(dest)}`,
  ].join('\n')]);
  if (cp.code !== 0) throw new Error(`staging the repository failed: ${cp.stderr}`);
}

/** Makes the job disk image from a directory. */
export async function makeJobDisk(jobDir: string, image: string, extraMb = 64): Promise<void> {
  const du = await run('du', ['-sm', jobDir]);
  const mb = Number.parseInt(du.stdout, 10) + extraMb;
  const r = await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'nodiscard,lazy_itable_init=1,lazy_journal_init=1', '-L', 'georm-job', '-d', jobDir, image, `${mb}M`]);
  if (r.code !== 0) throw new Error(`mke2fs -d failed: ${r.stderr}`);
}

/** Reads a file the guest left on the job disk (after the VM exited). */
export async function readJobFile(image: string, path: string): Promise<string | null> {
  const r = await run('debugfs', ['-R', `cat ${path}`, image]);
  return r.code === 0 && !/File not found/.test(r.stderr) ? r.stdout : null;
}

/** Copies a (binary) file the guest left on the job disk to the host. */
export async function dumpJobFile(image: string, path: string, dest: string): Promise<void> {
  const r = await run('debugfs', ['-R', `dump ${path} ${dest}`, image]);
  if (r.code !== 0 || /not found/i.test(r.stderr) || !existsSync(dest)) throw new Error(`debugfs dump ${path}: ${r.stderr}`);
}

export interface BootOptions {
  images: VmImages;
  /** Directory with run.sh; made into the job disk. */
  jobDir: string;
  /** Where to put job.img and console.log. */
  workDir: string;
  memMb?: number;
  cpus?: number;
  /** Guest connections to 10.0.2.100:<guest> are forwarded to the host's 127.0.0.1:<host>. */
  forward?: Array<{ guest: number; host: number }>;
  /** UDP datagrams to the host's 127.0.0.1:<host> are forwarded to the guest's 10.0.2.15:<guest>. */
  udpIn?: Array<{ guest: number; host: number }>;
  /** TCP connections to the host's 127.0.0.1:<host> are forwarded to the guest's 10.0.2.15:<guest>. */
  tcpIn?: Array<{ guest: number; host: number }>;
  /** Free space on the job disk beyond its files (the guest may create volumes there). */
  jobSpaceMb?: number;
  /**
   * A host file the guest sees as /dev/vdc and that outlives the boot (unlike the job disk, which is
   * made afresh each time). It is attached with cache=writeback (qemu's default, named explicitly):
   * the guest sees a volatile write cache, so its kernel sends flushes, and qemu turns each flush
   * into an fdatasync of this file. Killing qemu with SIGKILL loses the guest's RAM — its page cache
   * and every process — as a power cut would, while whatever the guest had already handed to the
   * virtual disk stays in the host's page cache. So the model is "power loss with a disk that has no
   * volatile cache of its own": it catches a missing fdatasync in the guest (the data never left
   * its page cache), not a missing flush after a write the guest kernel already wrote out.
   * cache=unsafe (flushes ignored) would be wrong for the host-crash case and is never used.
   */
  dataDisk?: string;
  timeoutMs?: number;
  /** Called with each console chunk (e.g. to react to markers while the guest runs). */
  onConsole?: (text: string) => void;
  /** Registers the qemu process so a test's teardown can kill it. */
  track?: (child: import('node:child_process').ChildProcess) => void;
}

export interface BootResult { exitCode: number | null; console: string; consoleLog: string; jobImage: string; timedOut: boolean }

/**
 * Boots the VM, runs the job and waits until the guest powers off (or the timeout kills qemu).
 * `exitCode` is run.sh's exit status as the guest reported it, null when it never got there.
 */
export async function bootVm(o: BootOptions): Promise<BootResult> {
  mkdirSync(o.workDir, { recursive: true });
  const jobImage = join(o.workDir, 'job.img');
  const consoleLog = join(o.workDir, 'console.log');
  if (!existsSync(join(o.jobDir, 'run.sh'))) throw new Error(`no run.sh in ${o.jobDir}`);
  await makeJobDisk(o.jobDir, jobImage, o.jobSpaceMb ?? 64);
  writeFileSync(consoleLog, '');
  const args = [
    '-accel', 'tcg', '-cpu', 'max', '-m', String(o.memMb ?? 1536), '-smp', String(o.cpus ?? 2),
    '-display', 'none', '-monitor', 'none', '-no-reboot', '-serial', 'stdio',
    '-kernel', o.images.kernel, '-initrd', o.images.initrd,
    '-append', 'console=ttyS0 panic=-1 rdinit=/init loglevel=4 nbd.nbds_max=4',
    '-netdev', ['user,id=n0', ...(o.forward ?? []).map((f) => `guestfwd=tcp:10.0.2.100:${f.guest}-tcp:127.0.0.1:${f.host}`),
      ...(o.udpIn ?? []).map((f) => `hostfwd=udp:127.0.0.1:${f.host}-10.0.2.15:${f.guest}`),
      ...(o.tcpIn ?? []).map((f) => `hostfwd=tcp:127.0.0.1:${f.host}-10.0.2.15:${f.guest}`)].join(','), '-device', 'virtio-net-pci,netdev=n0',
    '-drive', `file=${o.images.tools},if=virtio,format=raw,readonly=on`,
    '-drive', `file=${jobImage},if=virtio,format=raw`,
    ...(o.dataDisk ? ['-drive', `file=${o.dataDisk},if=virtio,format=raw,cache=writeback`] : []),
  ];
  const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  o.track?.(qemu);
  let text = '';
  const onData = (d: string) => {
    text += d;
    writeFileSync(consoleLog, d, { flag: 'a' });
    o.onConsole?.(d);
  };
  qemu.stdout.setEncoding('utf8').on('data', onData);
  qemu.stderr.setEncoding('utf8').on('data', onData);
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; qemu.kill('SIGKILL'); }, o.timeoutMs ?? 240_000);
  if (qemu.exitCode === null && qemu.signalCode === null) await once(qemu, 'exit');
  clearTimeout(timer);
  const m = /GEORM-VM-EXIT (\d+)/.exec(text);
  return { exitCode: m ? Number(m[1]) : null, console: text, consoleLog, jobImage, timedOut };
}

/** Keeps a failed run's console under artifacts/ (CI uploads that folder). */
export function keepArtifact(consoleLog: string, name: string): string {
  const dir = join(ROOT, 'artifacts', 'vm');
  mkdirSync(dir, { recursive: true });
  const dest = join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.log`);
  copyFileSync(consoleLog, dest);
  return dest;
}

/** The guest's console lines that start with a marker, e.g. `SHA file1 <hash>`. */
export function markers(consoleText: string, tag: string): string[][] {
  return consoleText.split(/\r?\n/).filter((l) => l.startsWith(`${tag} `)).map((l) => l.trim().split(/\s+/).slice(1));
}

export function readText(path: string): string { return readFileSync(path, 'utf8'); }
