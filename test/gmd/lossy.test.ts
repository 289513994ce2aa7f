import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { TestCluster, identical } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { missingTools, needsRoot } from '../helpers/env.js';
import { newHistory, readLog, seqs, settledSeqs, checkAcked, checkPrefix, startWriter } from './seqlog.js';
import type { GmdMode } from '../../src/gmd/protocol.js';
import type { GeoMessageStats } from '../../src/geomessage/stats.js';
import { stopProcess } from '../../src/util/process.js';

/**
 * Mirroring over lossy links. The two sites sit in network namespaces joined by two veth networks;
 * the kernel drops 5% of the UDP packets leaving each site (iptables' statistic match), and one of
 * the two networks is cut for a while in the middle of the load. GeoMessage must hide all of it:
 *  - the mirror never drops its peer, nothing is marked stale, no remote write fails;
 *  - fio's crc32c verify passes, and every write the application saw acknowledged is on both
 *    volumes; the volumes are byte-identical.
 * Then kill -9 of the primary under 10% loss. Lost fragments are sent again, so the
 * secondary receives later messages before earlier ones; it may apply nothing behind a gap:
 *  - sync, mwc: the secondary already holds every acknowledged write;
 *  - async: the secondary holds exactly a prefix of the write order.
 * After restart and resync the volumes are identical again.
 */
const SIZE = 16 * 1024 * 1024;
const LOSS = '0.05';
/** Heavier loss while the primary is killed: more messages wait for a lost fragment at that moment. */
const CRASH_LOSS = '0.1';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function sh(cmd: string, args: string[]): Promise<void> {
  const r = await runCmd(cmd, args, { timeoutMs: 30000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
}

/** Adds (-A) or removes (-D) the random drop of outgoing UDP in both sites' namespaces. */
async function loss(c: TestCluster, op: '-A' | '-D', p = LOSS): Promise<void> {
  for (const ns of [c.ns.alpha!, c.ns.beta!]) {
    await sh('ip', ['netns', 'exec', ns, 'iptables', op, 'OUTPUT', '-p', 'udp', '-m', 'statistic', '--mode', 'random', '--probability', p, '-j', 'DROP']);
  }
}

/** Packets the iptables rules dropped in the namespace of machine m. */
async function dropped(c: TestCluster, m: string): Promise<number> {
  const r = await runCmd('ip', ['netns', 'exec', c.ns[m]!, 'iptables', '-L', 'OUTPUT', '-n', '-v', '-x'], { timeoutMs: 30000 });
  const line = r.stdout.split('\n').find((l) => l.includes('statistic'));
  return line ? Number(line.trim().split(/\s+/)[0]) : 0;
}

function startFio(uri: string): ChildProcess {
  return spawn('fio', ['--name=verify', '--verify_state_save=0', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=8',
    `--offset=${8 * 1024 * 1024}`, `--size=${2 * 1024 * 1024}`, '--verify=crc32c', '--verify_fatal=1', '--output=/dev/null'], { stdio: 'ignore' });
}

async function exitCode(p: ChildProcess): Promise<number | null> {
  if (p.exitCode !== null || p.signalCode !== null) return p.exitCode;
  const [code] = await once(p, 'exit') as [number | null];
  return code;
}

async function lossyMode(t: Test, mode: GmdMode): Promise<void> {
  // A long Promote Failure Timeout: only a failure of the reliable layer could drop the peer here.
  const c = await TestCluster.create({ mode, size: SIZE, netns: true, pft: 30 });
  t.teardown(() => c.cleanup());
  await c.up();
  await c.waitInSync();
  const h = newHistory();

  // Phase 1: load over lossy links, one network cut for 2 s in the middle.
  await loss(c, '-A');
  const log1 = join(c.dir, 'writer1.log');
  const writer = startWriter(c.uri, log1, h, 1000000, 7);
  const fio = startFio(c.uri);
  await sleep(1500);
  const net0 = c.veth.alpha!;
  await sh('ip', ['-n', c.ns.alpha!, 'link', 'set', net0, 'down']);
  await sleep(2000);
  await sh('ip', ['-n', c.ns.alpha!, 'link', 'set', net0, 'up']);
  t.equal(await exitCode(fio), 0, 'fio crc32c verify passed over lossy links and a network cut');
  await stopProcess(writer);
  await readLog(log1, h);
  t.ok(h.lastAcked.size > 0, `the writer had writes acknowledged (${h.writes.length} issued)`);
  const drops = await dropped(c, 'alpha') + await dropped(c, 'beta');
  t.ok(drops > 0, `the kernel dropped packets (${drops})`);
  const net = await c.ctl('alpha', 'netstat') as GeoMessageStats;
  const resends = net.networks.reduce((n, x) => n + x.resends, 0);
  t.ok(resends > 0, `GeoMessage sent lost packets again (${resends} resends)`);
  const s = await c.status('alpha');
  t.ok(s.peers.some((p) => p.active), 'the primary still mirrors to its peer');
  t.equal(s.stats.remoteFailures, 0, 'no mirrored write failed');
  t.equal(s.stats.staleMarkings, 0, 'nothing was marked stale: the loss cost no resync');
  await loss(c, '-D');
  await c.waitInSync();
  checkAcked(t, await seqs(c.vol.alpha!), h, `${mode} primary after lossy load`);
  checkAcked(t, await settledSeqs(c.vol.beta!), h, `${mode} secondary after lossy load`);

  // Phase 2: kill -9 of the primary under load while packets are being lost.
  await loss(c, '-A', CRASH_LOSS);
  const log2 = join(c.dir, 'writer2.log');
  const writer2 = startWriter(c.uri, log2, h, 1000000, 8);
  await sleep(1500 + Math.floor(Math.random() * 1000));
  await c.kill9('alpha');
  await exitCode(writer2);
  await readLog(log2, h);
  const onBeta = await settledSeqs(c.vol.beta!);
  if (mode === 'async') checkPrefix(t, onBeta, h);
  else checkAcked(t, onBeta, h, `${mode} secondary right after the primary's crash`);
  await loss(c, '-D', CRASH_LOSS);
  await c.run('alpha');
  await c.start('alpha', ['beta']);
  await c.start('beta');
  await c.waitInSync();
  checkAcked(t, await seqs(c.vol.alpha!), h, `${mode} primary after restart and resync`);
  await c.terminate('alpha');
  await c.terminate('beta');
  const same = await identical(c.vol.alpha!, c.vol.beta!);
  t.ok(same.same, `volumes identical after stop ${same.detail}`);
}

const skip = needsRoot() || missingTools('fio', 'python3', 'cmp', 'ip', 'iptables');
for (const mode of (process.env.GMD_MODES?.split(',') ?? ['sync', 'mwc', 'async']) as GmdMode[]) {
  t.test(`${mode}: 5% packet loss each way and a network cut under load, then kill -9 of the primary under 10% loss`, { skip }, (t) => lossyMode(t, mode));
}
