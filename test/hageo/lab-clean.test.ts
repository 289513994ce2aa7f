/**
 * The lab's stale-leftover cleaner: a lab whose owner died (a test killed before its teardown) is
 * removed — its processes killed by namespace, its pinned mount namespace unmounted, its network
 * namespaces deleted — and so is a lab-prefixed namespace no record claims; a lab whose owner
 * lives is left alone. No Pacemaker needed: the "daemon" is a sleep inside the node's namespaces.
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { cleanStaleLabs, destroyLab, LAB_PREFIX, LAB_ROOT, saveState, type LabState } from '../../src/hageo/lab/registry.js';
import { nsInode, pidAlive, pidStartTime } from '../../src/hageo/lab/procs.js';
import { missingTools, needsRoot, tempDir } from '../helpers/env.js';

const sh = (cmd: string, args: string[]) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
};

/** A lab record with one node: netns + pinned mount namespace + a sleep inside; owner as given. */
function fakeLab(dir: string, owner: LabState['owner']): { state: LabState; sleeper: number } {
  const id = randomBytes(3).toString('hex');
  const pinsDir = join(LAB_ROOT, id);
  mkdirSync(pinsDir, { recursive: true });
  sh('mount', ['--bind', pinsDir, pinsDir]);
  sh('mount', ['--make-private', pinsDir]);
  const netns = `${LAB_PREFIX}${id}-node1`;
  const wanNs = `${LAB_PREFIX}${id}-wan`;
  sh('ip', ['netns', 'add', netns]);
  sh('ip', ['netns', 'add', wanNs]);
  const mntPin = join(pinsDir, 'node1.mnt');
  const utsPin = join(pinsDir, 'node1.uts');
  for (const p of [mntPin, utsPin]) closeSync(openSync(p, 'w'));
  sh('unshare', [`--mount=${mntPin}`, `--uts=${utsPin}`, '--propagation', 'slave', 'true']);
  const child = spawn('nsenter', [`--net=/run/netns/${netns}`, `--mount=${mntPin}`, `--uts=${utsPin}`, '--', 'sleep', '600'], { detached: true, stdio: 'ignore' });
  child.unref();
  const state: LabState = {
    id, dir, pinsDir, owner, wanNs, wanInode: nsInode(`/run/netns/${wanNs}`)!, links: 1,
    nodes: [{ name: 'node1', index: 1, netns, mntPin, utsPin,
      inodes: { net: nsInode(`/run/netns/${netns}`)!, mnt: nsInode(mntPin)!, uts: nsInode(utsPin)! }, pids: { corosync: child.pid! } }],
  };
  saveState(state);
  return { state, sleeper: child.pid! };
}

t.test('stale labs and orphan namespaces are removed; live ones are kept', { skip: needsRoot() || missingTools('ip', 'unshare', 'nsenter') }, async (t) => {
  const { dir, cleanup } = tempDir('georm-labclean-');
  t.teardown(cleanup);
  // A dead owner: a process that has exited.
  const gone = spawnSync('true');
  const deadOwner = { pid: gone.pid!, start: 'long ago' };
  const stale = fakeLab(join(dir), deadOwner);
  const { dir: dir2, cleanup: cleanup2 } = tempDir('georm-labclean-');
  t.teardown(cleanup2);
  const live = fakeLab(dir2, { pid: process.pid, start: pidStartTime(process.pid)! });
  t.teardown(() => destroyLab(live.state, { graceful: false }));
  const orphan = `${LAB_PREFIX}${randomBytes(3).toString('hex')}-node1`;
  sh('ip', ['netns', 'add', orphan]);
  t.teardown(() => { spawnSync('ip', ['netns', 'del', orphan]); });

  t.ok(pidAlive(stale.sleeper) && pidAlive(live.sleeper), 'both labs run a process');
  const removed = await cleanStaleLabs();
  t.ok(removed.includes(`lab ${stale.state.id}`), `stale lab removed (${removed.join(', ')})`);
  t.ok(removed.includes(`netns ${orphan}`), 'orphan namespace removed');
  t.notOk(pidAlive(stale.sleeper), 'its process was killed');
  t.notOk(existsSync(`/run/netns/${stale.state.nodes[0]!.netns}`) || existsSync(`/run/netns/${stale.state.wanNs}`) || existsSync(`/run/netns/${orphan}`), 'namespaces deleted');
  t.notOk(existsSync(stale.state.pinsDir), 'pins directory removed');
  t.notOk(readFileSync('/proc/self/mountinfo', 'utf8').includes(stale.state.pinsDir), 'nothing of it mounted');

  t.ok(pidAlive(live.sleeper), 'the lab whose owner lives is untouched');
  t.ok(existsSync(`/run/netns/${live.state.nodes[0]!.netns}`));
  t.same(await destroyLab(live.state, { graceful: true }), []);
  t.notOk(pidAlive(live.sleeper));
  t.notOk(existsSync(live.state.pinsDir));
});
