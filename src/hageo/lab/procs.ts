/**
 * Processes of a lab node, found by namespace: every process whose /proc/PID/ns/net (or ns/mnt) is
 * the node's. No PID namespace is used (the host's ps shows every node's daemons under the same
 * names), so this is how the lab kills a node or checks that nothing is left — by pid, never by name.
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';

/** The inode of a namespace file (/run/netns/X, a pinned mount namespace, /proc/PID/ns/net). */
export function nsInode(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
}

/** Pids whose namespace of `kind` has one of `inodes`. */
export function pidsInNamespaces(kind: 'net' | 'mnt' | 'uts', inodes: Iterable<number>): number[] {
  const want = new Set(inodes);
  if (want.size === 0) return [];
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const m = /\[(\d+)\]/.exec(readlinkSync(`/proc/${d}/ns/${kind}`));
      if (m && want.has(Number(m[1]))) out.push(Number(d));
    } catch { /* exited meanwhile, or a kernel thread */ }
  }
  return out;
}

export function killPids(pids: readonly number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try { process.kill(pid, signal); } catch { /* already gone */ }
  }
}

export function pidAlive(pid: number): boolean {
  try {
    // A zombie still answers kill(0); treat it as gone (its parent reaps it).
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Start time of a process (clock ticks since boot), to tell a live owner from a reused pid. */
export function pidStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Waits until none of `pids` is alive; false if `timeoutMs` passes first. */
export async function waitGone(pids: readonly number[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!pids.some(pidAlive)) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** SIGTERM (unless SIGKILL is asked), wait, then SIGKILL whatever is left; true when all are gone. */
export async function endPids(pids: readonly number[], signal: NodeJS.Signals, graceMs: number): Promise<boolean> {
  const live = pids.filter(pidAlive);
  if (live.length === 0) return true;
  killPids(live, signal);
  if (signal !== 'SIGKILL' && await waitGone(live, graceMs)) return true;
  killPids(live.filter(pidAlive), 'SIGKILL');
  return waitGone(live, 10000);
}
