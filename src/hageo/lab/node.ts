/**
 * One lab node: its network namespace (`ip netns`), a mount and a UTS namespace pinned by bind
 * mounts in the lab's pins directory (no holder process), and its own state directories bound over
 * /etc/corosync, /var/lib/corosync, /var/lib/pacemaker, /var/log, /run and /tmp, with a fresh tmpfs
 * on /dev/shm (libqb's ring buffers) and a sysfs of its own network namespace on /sys. Its daemons
 * run through `nsenter --net --mount --uts` in a new session, so the pid we get is the daemon's.
 */
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, closeSync, mkdirSync, openSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { must, run, type RunResult } from './exec.js';
import { nsInode } from './procs.js';
import type { LabNodeState } from './registry.js';

/** Host directory (under the node's state dir) → path the node sees it at. */
export const NODE_BINDS: ReadonlyArray<readonly [string, string]> = [
  ['etc-corosync', '/etc/corosync'],
  ['var-lib-corosync', '/var/lib/corosync'],
  ['var-lib-pacemaker', '/var/lib/pacemaker'],
  ['var-log', '/var/log'],
  ['run', '/run'],
  ['tmp', '/tmp'],
];

export interface ExtraBind { source: string; target: string }

/** This checkout's root (this file runs from dist/src/hageo/lab/): georm, its node_modules and tap's loaders. */
const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');

/**
 * Host paths a node must still see although they lie below a directory it mounts its own copy of:
 * a checkout under /tmp (a CI clone, say) would otherwise vanish inside every node, and with it the
 * georm the agents and `georm hageo` run.
 */
function keptPaths(): string[] {
  return [PACKAGE_ROOT].filter((p) => NODE_BINDS.some(([, target]) => p.startsWith(`${target}/`)));
}

/** The environment the daemons start with: not the test's (tap's NODE_OPTIONS must not reach agents). */
export function daemonEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', ...extra };
}

function hacluster(): { uid: number; gid: number } {
  // Resolved by the system's own tool so NSS sources other than /etc/passwd work too.
  const id = (flag: string) => Number(execFileSync('id', [flag, 'hacluster'], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

/** Creates the node's directories with the owners Pacemaker wants. Keeps what exists (a restart keeps its CIB). */
export function prepareNodeDirs(stateDir: string): void {
  const { uid, gid } = hacluster();
  for (const [d] of NODE_BINDS) mkdirSync(join(stateDir, d), { recursive: true });
  mkdirSync(join(stateDir, 'data'), { recursive: true });
  for (const d of ['cib', 'pengine', 'blackbox', 'cores']) {
    const p = join(stateDir, 'var-lib-pacemaker', d);
    mkdirSync(p, { recursive: true });
    chownSync(p, uid, gid);
    chmodSync(p, 0o750);
  }
  for (const d of ['pacemaker', 'corosync', 'crmsh', 'cluster']) mkdirSync(join(stateDir, 'var-log', d), { recursive: true });
  chownSync(join(stateDir, 'var-log', 'pacemaker'), uid, gid);
  chmodSync(join(stateDir, 'var-log', 'pacemaker'), 0o770);
  chmodSync(join(stateDir, 'tmp'), 0o1777);
}

/** Writes the node's cib.xml (owned by hacluster, as pacemaker-based writes it). */
export function writeNodeCib(stateDir: string, cibXml: string): void {
  const { uid, gid } = hacluster();
  const p = join(stateDir, 'var-lib-pacemaker', 'cib', 'cib.xml');
  writeFileSync(p, cibXml, { mode: 0o600 });
  chownSync(p, uid, gid);
}

/** Creates and pins the node's namespaces and mounts its directories inside them. */
export async function createNodeNamespaces(n: LabNodeState, stateDir: string, binds: readonly ExtraBind[]): Promise<void> {
  await must('ip', ['netns', 'add', n.netns]);
  for (const pin of [n.mntPin, n.utsPin]) closeSync(openSync(pin, 'w'));
  // slave: unmounts on the host (another test's FUSE or loop mount) still reach this namespace.
  await must('unshare', [`--mount=${n.mntPin}`, `--uts=${n.utsPin}`, '--propagation', 'slave', 'true']);
  n.inodes = { net: nsInode(`/run/netns/${n.netns}`)!, mnt: nsInode(n.mntPin)!, uts: nsInode(n.utsPin)! };
  const q = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
  const keep = keptPaths();
  const script = [
    'set -e',
    `hostname ${q(n.name)}`,
    // Drop the copies of mounts this node must not keep alive: other namespaces' pins (ours and
    // other labs'), FUSE and loop/NBD-backed filesystems other tests may be about to unmount.
    "awk '{ for (i = 7; i <= NF; i++) if ($i == \"-\") break; t = $(i + 1); s = $(i + 2);"
      + " if (t == \"nsfs\" || t ~ /^fuse/ || s ~ /^\\/dev\\/(loop|nbd)/) print $5 }' /proc/self/mountinfo"
      + ' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done',
    // Kept paths are bound aside first (the state dir is not shadowed), then back over the node's copy.
    ...keep.map((p, i) => `mkdir -p ${q(join(stateDir, `keep${i}`))} && mount --bind ${q(p)} ${q(join(stateDir, `keep${i}`))}`),
    ...NODE_BINDS.map(([d, target]) => `mkdir -p ${q(target)} && mount --bind ${q(join(stateDir, d))} ${q(target)}`),
    ...keep.map((p, i) => `mkdir -p ${q(p)} && mount --bind ${q(join(stateDir, `keep${i}`))} ${q(p)}`),
    'mount -t tmpfs -o mode=1777,size=256m tmpfs /dev/shm',
    'mount -t sysfs sysfs /sys',
    ...binds.map((b) => `mkdir -p ${q(b.target)} && mount --bind ${q(b.source)} ${q(b.target)}`),
  ].join('\n');
  await must('nsenter', [...nsenterArgs(n), '--', 'sh', '-c', script]);
}

export function nsenterArgs(n: LabNodeState): string[] {
  return [`--net=/run/netns/${n.netns}`, `--mount=${n.mntPin}`, `--uts=${n.utsPin}`];
}

/** Runs a command inside the node (network, mount and UTS namespaces) to completion. */
export function nodeExec(n: LabNodeState, cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return run('nsenter', [...nsenterArgs(n), '--', cmd, ...args], opts);
}

/** Starts a daemon inside the node in a new session, output appended to `logFile`; returns its pid. */
export function spawnDaemon(n: LabNodeState, logFile: string, cmd: string, args: readonly string[], env: NodeJS.ProcessEnv): number {
  const fd = openSync(logFile, 'a');
  try {
    // nsenter without --pid execs the command itself: the child's pid is the daemon's.
    const child = spawn('nsenter', [...nsenterArgs(n), '--', cmd, ...args], { detached: true, stdio: ['ignore', fd, fd], env, cwd: '/' });
    child.unref();
    if (child.pid === undefined) throw new Error(`could not start ${cmd} in ${n.name}`);
    return child.pid;
  } finally {
    closeSync(fd);
  }
}

/** Before a restart: a fresh /dev/shm (stale libqb buffers of killed daemons) and an empty /run. */
export async function resetVolatile(n: LabNodeState, stateDir: string): Promise<void> {
  // The node's /run is this host directory: empty it here, never through a path that might not be the bind.
  const runDir = join(stateDir, 'run');
  for (const f of readdirSync(runDir)) rmSync(join(runDir, f), { recursive: true, force: true });
  await must('nsenter', [...nsenterArgs(n), '--', 'sh', '-c', 'umount -l /dev/shm && mount -t tmpfs -o mode=1777,size=256m tmpfs /dev/shm']);
}
