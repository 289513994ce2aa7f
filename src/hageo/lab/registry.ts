/**
 * What a lab is made of, written down so it can always be taken apart: /run/georm-lab/<id>/lab.json
 * (beside the pinned mount and UTS namespaces of its nodes) and a copy in the lab's directory. The
 * teardown here works from that record alone — for the lab that created it, for `lab.js down
 * --dir D`, and for the stale-leftover cleaner, which removes labs whose owning process is dead
 * (a test killed before its teardown) and namespaces named with the lab prefix that no record
 * claims. Everything is found by pid and namespace inode, never by process name.
 */
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './exec.js';
import { endPids, nsInode, pidAlive, pidsInNamespaces, pidStartTime } from './procs.js';

/** Every lab namespace name starts with this; the cleaner keys on it. */
export const LAB_PREFIX = 'glab-';
/** Pins and records of labs on this host (tmpfs: gone after a reboot, as the namespaces are). */
export const LAB_ROOT = '/run/georm-lab';

export interface LabNodeState {
  name: string;
  /** 1-based index: node<index>, addresses .<index>, WAN veths n<index>l<link>. */
  index: number;
  netns: string;
  mntPin: string;
  utsPin: string;
  inodes: { net: number; mnt: number; uts: number };
  pids: { corosync?: number; pacemakerd?: number };
}

export interface LabState {
  id: string;
  dir: string;
  pinsDir: string;
  /** The process whose death makes the lab stale; null for a lab meant to outlive its creator (`lab.js up`). */
  owner: { pid: number; start: string } | null;
  wanNs: string;
  wanInode: number;
  links: number;
  nodes: LabNodeState[];
}

export function saveState(s: LabState): void {
  const text = `${JSON.stringify(s, null, 2)}\n`;
  writeFileSync(join(s.pinsDir, 'lab.json'), text);
  writeFileSync(join(s.dir, 'lab.json'), text);
}

export function readState(path: string): LabState {
  return JSON.parse(readFileSync(path, 'utf8')) as LabState;
}

/** Pids of every process in one of the node's namespaces (net or mount). */
export function nodePids(n: LabNodeState): number[] {
  return [...new Set([...pidsInNamespaces('net', [n.inodes.net]), ...pidsInNamespaces('mnt', [n.inodes.mnt])])];
}

/**
 * Stops a node's cluster daemons: SIGTERM pacemakerd (it stops its resources first) and wait up to
 * `graceMs`, then corosync, then SIGKILL whatever still runs in the node's namespaces. With
 * graceful=false everything gets SIGKILL at once (a site failure). Resolves true when none is left.
 */
export async function stopNodeProcesses(n: LabNodeState, graceful: boolean, graceMs = 30000): Promise<boolean> {
  const inNode = new Set(nodePids(n));
  if (graceful) {
    for (const which of ['pacemakerd', 'corosync'] as const) {
      const pid = n.pids[which];
      // The recorded pid counts only while it is still in this node's namespaces (pids get reused).
      if (pid !== undefined && inNode.has(pid)) await endPids([pid], 'SIGTERM', which === 'pacemakerd' ? graceMs : 10000);
    }
  }
  for (let round = 0; round < 3; round++) {
    const left = nodePids(n);
    if (left.length === 0) return true;
    await endPids(left, 'SIGKILL', 0);
  }
  return nodePids(n).length === 0;
}

/** Removes a lab: processes, pinned namespaces, network namespaces, the pins directory. Idempotent. */
export async function destroyLab(s: LabState, opts: { graceful: boolean }): Promise<string[]> {
  const problems: string[] = [];
  const stopped = await Promise.all(s.nodes.map((n) => stopNodeProcesses(n, opts.graceful)));
  stopped.forEach((ok, i) => { if (!ok) problems.push(`processes left in node ${s.nodes[i]!.name}: ${nodePids(s.nodes[i]!).join(' ')}`); });
  for (const n of s.nodes) {
    for (const pin of [n.mntPin, n.utsPin]) {
      if (existsSync(pin)) await run('umount', [pin]);
    }
    if (existsSync(`/run/netns/${n.netns}`)) {
      const r = await run('ip', ['netns', 'del', n.netns]);
      if (r.code !== 0) problems.push(`ip netns del ${n.netns}: ${r.stderr.trim()}`);
    }
  }
  if (existsSync(`/run/netns/${s.wanNs}`)) {
    const r = await run('ip', ['netns', 'del', s.wanNs]);
    if (r.code !== 0) problems.push(`ip netns del ${s.wanNs}: ${r.stderr.trim()}`);
  }
  if (existsSync(s.pinsDir)) {
    await run('umount', [s.pinsDir]);
    try { rmSync(s.pinsDir, { recursive: true, force: true }); } catch (e) { problems.push(`rm ${s.pinsDir}: ${(e as Error).message}`); }
  }
  return problems;
}

/** True while the lab's owner process lives (same pid and start time). Persistent labs always count as owned. */
export function ownerAlive(s: LabState): boolean {
  if (s.owner === null) return true;
  return pidAlive(s.owner.pid) && pidStartTime(s.owner.pid) === s.owner.start;
}

/**
 * Removes leftovers of earlier labs on this host: labs whose owner died (or every lab with
 * `all`), and lab-prefixed network namespaces no record claims. Returns what it removed.
 */
export async function cleanStaleLabs(opts: { all?: boolean } = {}): Promise<string[]> {
  const removed: string[] = [];
  const claimed = new Set<string>();
  const ids = existsSync(LAB_ROOT) ? readdirSync(LAB_ROOT) : [];
  for (const id of ids) {
    const pinsDir = join(LAB_ROOT, id);
    let s: LabState | undefined;
    try { s = readState(join(pinsDir, 'lab.json')); } catch { /* no record: an interrupted creation */ }
    if (s) {
      claimed.add(s.wanNs);
      for (const n of s.nodes) claimed.add(n.netns);
      if (!opts.all && ownerAlive(s)) continue;
      await destroyLab(s, { graceful: false });
      removed.push(`lab ${id}`);
    } else if (!opts.all && Date.now() - safeMtime(pinsDir) < 60000) {
      continue; // probably being created right now by another process
    } else {
      await destroyPinsDir(pinsDir);
      removed.push(`pins ${pinsDir}`);
    }
  }
  const netns = existsSync('/run/netns') ? readdirSync('/run/netns').filter((n) => n.startsWith(LAB_PREFIX)) : [];
  for (const ns of netns) {
    if (claimed.has(ns)) continue;
    const id = ns.slice(LAB_PREFIX.length).split('-')[0]!;
    if (!opts.all && existsSync(join(LAB_ROOT, id))) continue; // its lab is being created
    const inode = nsInode(`/run/netns/${ns}`);
    if (inode !== undefined) await endPids(pidsInNamespaces('net', [inode]), 'SIGKILL', 0);
    await run('ip', ['netns', 'del', ns]);
    removed.push(`netns ${ns}`);
  }
  return removed;
}

function safeMtime(p: string): number {
  try { return statSync(p).mtimeMs; } catch { return 0; }
}

/** A pins directory without a record: unmount whatever is pinned in it, then remove it. */
async function destroyPinsDir(pinsDir: string): Promise<void> {
  for (const f of readdirSync(pinsDir)) {
    const p = join(pinsDir, f);
    const inode = nsInode(p);
    if (inode !== undefined && f.endsWith('.mnt')) await endPids(pidsInNamespaces('mnt', [inode]), 'SIGKILL', 0);
    await run('umount', [p]);
  }
  await run('umount', [pinsDir]);
  rmSync(pinsDir, { recursive: true, force: true });
}
