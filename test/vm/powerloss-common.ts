import { existsSync, writeFileSync } from 'node:fs';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Test } from 'tap';
import { bootVm, keepArtifact, stageRepo, vmUnavailable, type BootResult, type VmImages } from '../../scripts/vm/vm.js';
import { demoAvailable, geormAvailable } from '../../scripts/vm/host.js';
import { geormDetach, gmdWaitAttached } from '../../scripts/vm/jobs.js';
import { GEORM_BIN, missingTools, ROOT } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';
import { stopProcess } from '../../src/util/process.js';
import { callControl } from '../../src/gmd/control.js';
import { vmWorkspace, type VmWorkspace } from './helpers.js';

/**
 * What the power-loss VM tests share (powerloss.test.ts: durable writes survive a cut of the
 * primary's machine; powerloss-lazy.test.ts: plain writes acknowledged and then lost by a cut must
 * not leave the two volumes different after resync).
 */

// Debian's python3 has the libnbd binding; a pyenv python on PATH may not.
export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
export const noLibnbd = spawnSync(PYTHON, ['-c', 'import nbd'], { stdio: 'ignore' }).status !== 0 && 'python3 without the libnbd binding (python3-libnbd)';

export const powerlossSkip = vmUnavailable() || missingTools('qemu-system-x86_64', 'busybox', 'cpio', 'mke2fs', 'debugfs', 'fio', 'apt-get')
  || (!existsSync(join(ROOT, 'build/Release/georm_native.node')) && 'native addon not built')
  || (!geormAvailable() && '`georm export` not built yet (nbd module)')
  || (!demoAvailable() && 'GMD not built yet (gmd module)');

/**
 * Guest-side control client, /job/ctl.mjs, printing marker lines:
 *   before                  MAPBEFORE <state> <map counts>, CELLS <base64> (the map as loaded after the cut)
 *   start [down,…]          start, with gmddown of the listed peers
 *   wait-sync SEC           until mirroring with a clean map and no resync left (the resync driver's view)
 *   wait-active SEC         until AVAILABLE with an active peer
 *   wait-peer-gone SEC      until a peer was active and no longer is (the other side stopped)
 */
export const CTL = `import { callControl } from '/job/georm/dist/src/gmd/control.js';
const sock = '/tmp/run/vm0gmd.sock';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const op = process.argv[2];
async function status(timeoutMs = 10000) { return callControl(sock, 'status', {}, timeoutMs); }
const deadline = Date.now() + Number(process.argv[3] ?? 0) * 1000;
function late(s) { if (Date.now() > deadline) { console.log('CTL-TIMEOUT ' + op + ' ' + JSON.stringify({ state: s.state, peers: s.peers, map: s.map, resync: s.resync })); process.exit(1); } }
try {
  if (op === 'before') {
    let s;
    for (let i = 0; ; i++) { try { s = await status(); break; } catch (e) { if (i > 600) throw e; await sleep(200); } }
    console.log('MAPBEFORE ' + s.state + ' ' + JSON.stringify(s.map));
    if (s.map) console.log('CELLS ' + (await callControl(sock, 'cells', { peers: false }, 10000)).cells);
  } else if (op === 'start') {
    const down = (process.argv[3] ?? '').split(',').filter(Boolean);
    const r = await callControl(sock, 'start', { down }, 120000);
    console.log('OK alpha started: ' + JSON.stringify(r).slice(0, 200));
  } else if (op === 'wait-sync') {
    for (;;) {
      const s = await status();
      const rs = s.resync;
      if (s.peers.some((p) => p.active) && s.map && s.map.stale === 0 && s.map.inconsistent === 0 && (!rs || rs.complete || rs.leftBytes === 0)) {
        console.log('OK in sync ' + JSON.stringify({ map: s.map, resync: rs && { direction: rs.direction, doneBytes: rs.doneBytes, leftBytes: rs.leftBytes } }));
        break;
      }
      late(s);
      await sleep(500);
    }
  } else if (op === 'wait-active') {
    for (;;) {
      let s = null;
      try { s = await status(); } catch { /* not listening yet */ }
      if (s && s.state === 'AVAILABLE' && s.peers.some((p) => p.active)) { console.log('OK alpha mirroring'); break; }
      if (s) late(s); else if (Date.now() > deadline) throw new Error('no status');
      await sleep(200);
    }
  } else if (op === 'wait-peer-gone') {
    let seen = false;
    for (;;) {
      const s = await status();
      const active = s.peers.some((p) => p.active);
      if (active) seen = true;
      else if (seen) { console.log('OK peer gone ' + JSON.stringify(s.map)); break; }
      late(s);
      await sleep(300);
    }
  }
} catch (e) { console.log('CTL-ERROR ' + op + ' ' + (e.code ?? '') + ' ' + e.message); process.exit(1); }
`;

/**
 * A VM workspace with the repository staged for the guest, /job/ctl.mjs, a random tag for the run's
 * data, and the persistent data disk (`dataDisk`): an ext4 filesystem the guest mounts at /data,
 * holding alpha's volume and map, and surviving the power cut.
 */
export async function powerlossWorkspace(t: Test, prefix: string): Promise<VmWorkspace & { tag: string; dataDisk: string }> {
  const ws = await vmWorkspace(t, prefix);
  await stageRepo(join(ws.job, 'georm'));
  writeFileSync(join(ws.job, 'ctl.mjs'), CTL);
  const dataDisk = join(ws.dir, 'data.img');
  const mk = await runCmd('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'georm-data', dataDisk, '64M']);
  t.equal(mk.code, 0, 'data disk made');
  return { ...ws, tag: randomBytes(8).toString('hex'), dataDisk };
}

/** A boot that went wrong: one failure naming the kept console, its last lines and the host peer's log. */
export function failBoot(t: Test, res: BootResult, name: string, what: string, hostLog: string): void {
  t.fail(`${what}; console kept at ${keepArtifact(res.consoleLog, name)}`);
  t.comment(res.console.split('\n').slice(-40).join('\n'));
  t.comment(`host GMD log: ${hostLog.slice(-2000)}`);
}

export interface Recovery {
  res: BootResult;
  /** `georm start` of the host's secondary (null if the guest never got as far as asking for it). */
  betaStart: { code: number | null; stdout: string; stderr: string } | null;
  betaCode: number | null;
}

/**
 * Boot 2 after a power cut of the guest primary's machine (DESIGN's crash procedure): the data disk
 * is mounted again, the GMD configured (`before` prints the map it found), started with gmddown of
 * the host's secondary (which stops it), the secondary is started again on the host and rejoins,
 * the resync runs to completion, the device is read into /job/served.img, the GMD stops, /data is
 * unmounted. The host's secondary (`beta`, a `gmd run` process) is stopped with SIGTERM at the end.
 */
export async function recoverGuestPrimary(o: {
  images: VmImages; job: string; workDir: string; dataDisk: string; volumeMb: number; hostCfg: string;
  beta: ChildProcess; udpIn: Array<{ guest: number; host: number }>; track: (c: ChildProcess) => void;
}): Promise<Recovery> {
  writeFileSync(join(o.job, 'run.sh'), `set -e
mkdir -p /data /tmp/run
mount /dev/vdc /data
node /job/georm/bin/georm.js gmd run vm0gmd --config /job/georm.toml --machine alpha >/tmp/gmd.out 2>/tmp/gmd.err &
GEORM_PID=$!
node /job/ctl.mjs before
node /job/ctl.mjs start beta
${gmdWaitAttached()}echo "OK attached again"
node /job/ctl.mjs wait-sync 150
dd if=/dev/nbd0 of=/job/served.img bs=1M 2>/dev/null
${geormDetach()}umount /data
echo "OK data unmounted"
`);
  let betaStart: Promise<{ code: number | null; stdout: string; stderr: string }> | undefined;
  let text = '';
  const res = await bootVm({
    images: o.images, jobDir: o.job, workDir: o.workDir, timeoutMs: 300_000, jobSpaceMb: 64 + o.volumeMb, dataDisk: o.dataDisk,
    udpIn: o.udpIn, track: o.track,
    onConsole: (d) => {
      text += d;
      // gmddown stopped the secondary; start it again once the primary is AVAILABLE, so it rejoins.
      if (!betaStart && text.includes('OK alpha started')) {
        betaStart = runCmd(process.execPath, [GEORM_BIN, 'start', 'vm0gmd', '--config', o.hostCfg, '--machine', 'beta'], { timeoutMs: 120_000 });
      }
    },
  });
  const bs = (await betaStart) ?? null;
  const betaCode = await stopProcess(o.beta, 'SIGTERM', 10_000);
  return { res, betaStart: bs, betaCode };
}

/**
 * A host-side NBD writer (libnbd, python) driven line by line on stdin, so that the test decides
 * when each set of writes goes out and the connection stays open across the power cut (a
 * disconnect could make the server flush). `write PHASE COUNT FIRST N` issues COUNT plain 4 KiB
 * writes — no FUA, no FLUSH — 16 in flight, cycling over regions FIRST … FIRST+N-1 (32 KiB each) at
 * varying blocks, and prints `DONE PHASE COUNT` once every one was acknowledged; `flush ID` sends one
 * NBD FLUSH and prints `FLUSHED ID`. Each block starts
 * with `GEORM-LZ`, the run's tag, the phase and (write number, region); the rest is random, so a
 * block read back says which write it holds.
 */
const PLAIN_WRITER = `import os, struct, sys
import nbd
uri, tag = sys.argv[1], sys.argv[2].encode('latin1')[:16].ljust(16, b'-')
h = nbd.NBD()
h.connect_uri(uri)
print('READY', flush=True)
for line in sys.stdin:
    a = line.split()
    if not a:
        continue
    if a[0] == 'quit':
        break
    if a[0] == 'flush':
        h.flush()
        print('FLUSHED %s' % a[1], flush=True)
        continue
    phase, count, first, n = a[1], int(a[2]), int(a[3]), int(a[4])
    live = []
    for i in range(count):
        r = first + (i * 7919) % n
        blk = (i // n + r) % 8
        head = b'GEORM-LZ' + tag + phase.encode('latin1')[:8].ljust(8, b' ') + struct.pack('<II', i, r)
        b = nbd.Buffer.from_bytearray(bytearray(head + os.urandom(4096 - len(head))))
        while h.aio_in_flight() >= 16:
            h.poll(-1)
        live.append((h.aio_pwrite(b, r * 32768 + blk * 4096), b))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c, _ in live:
        h.aio_command_completed(c)
    print('DONE %s %d' % (phase, count), flush=True)
`;

export const REGION = 32768;

export class PlainWriter {
  private text = '';
  private err = '';
  private waiters: Array<() => void> = [];
  private flushes = 0;
  private constructor(readonly child: ChildProcess) {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { this.text += d; this.wake(); });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { this.err += d; });
    child.once('exit', () => this.wake());
    child.stdin!.on('error', () => undefined);
  }

  /** Starts the writer on `uri` (registered with `track`) and waits until it is connected. */
  static async start(dir: string, uri: string, tag: string, track: (c: ChildProcess) => void): Promise<PlainWriter> {
    const script = join(dir, 'plainwriter.py');
    writeFileSync(script, PLAIN_WRITER);
    const child = spawn(PYTHON, [script, uri, tag], { stdio: ['pipe', 'pipe', 'pipe'] });
    track(child);
    const w = new PlainWriter(child);
    await w.until('READY', 60_000);
    return w;
  }

  private wake(): void { for (const f of this.waiters.splice(0)) f(); }

  private async until(line: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.text.split('\n').includes(line)) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`writer exited before "${line}": ${this.err.slice(-1500)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`writer: no "${line}" within ${timeoutMs} ms: ${this.err.slice(-1500)}`);
      await new Promise<void>((r) => { const tm = setTimeout(r, left); this.waiters.push(() => { clearTimeout(tm); r(); }); });
    }
  }

  /** One set of writes (see PLAIN_WRITER); resolves with its duration in ms once all were acknowledged. */
  async write(phase: string, count: number, first: number, n: number, timeoutMs = 120_000): Promise<number> {
    const t0 = Date.now();
    this.child.stdin!.write(`write ${phase} ${count} ${first} ${n}\n`);
    await this.until(`DONE ${phase} ${count}`, timeoutMs);
    return Date.now() - t0;
  }

  /** One NBD FLUSH; resolves once it was acknowledged. */
  async flush(timeoutMs = 60_000): Promise<void> {
    const id = ++this.flushes;
    this.child.stdin!.write(`flush ${id}\n`);
    await this.until(`FLUSHED ${id}`, timeoutMs);
  }

  stderr(): string { return this.err; }
  stop(): Promise<number | null> { return stopProcess(this.child, 'SIGTERM', 5000); }
}

/** What a 4 KiB block holds, for reports: `A#12/r7` (phase A's write 12, to region 7), `zero`, or `other`. */
function blockLabel(b: Buffer, tag: string): string {
  if (b.every((x) => x === 0)) return 'zero';
  if (b.toString('latin1', 0, 8) !== 'GEORM-LZ' || b.toString('latin1', 8, 24) !== tag.slice(0, 16).padEnd(16, '-')) return 'other';
  return `${b.toString('latin1', 24, 32).trim()}#${b.readUInt32LE(32)}/r${b.readUInt32LE(36)}`;
}

export interface VolumeDiff {
  /** Regions (32 KiB) in which the two volumes differ. */
  regions: number[];
  /** 4 KiB blocks that differ. */
  blocks: number;
  /** A few differing blocks: `region r block k: <a's content> vs <b's content>`. */
  examples: string[];
}

/** Byte-for-byte comparison of two volumes of equal size, by region and 4 KiB block. */
export function diffVolumes(a: Buffer, b: Buffer, tag: string, maxExamples = 8): VolumeDiff {
  const d: VolumeDiff = { regions: [], blocks: 0, examples: [] };
  if (a.length !== b.length) { d.examples.push(`sizes differ: ${a.length} vs ${b.length}`); return d; }
  for (let off = 0; off < a.length; off += REGION) {
    if (a.subarray(off, off + REGION).equals(b.subarray(off, off + REGION))) continue;
    d.regions.push(off / REGION);
    for (let k = off; k < off + REGION; k += 4096) {
      const x = a.subarray(k, k + 4096);
      const y = b.subarray(k, k + 4096);
      if (x.equals(y)) continue;
      d.blocks++;
      if (d.examples.length < maxExamples) d.examples.push(`region ${off / REGION} block ${(k - off) / 4096}: ${blockLabel(x, tag)} vs ${blockLabel(y, tag)}`);
    }
  }
  return d;
}

/** Compact list of region numbers: `0-12, 15, 20-31`. */
export function ranges(ns: number[]): string {
  const out: string[] = [];
  for (let i = 0; i < ns.length;) {
    let j = i;
    while (j + 1 < ns.length && ns[j + 1] === ns[j]! + 1) j++;
    out.push(i === j ? `${ns[i]}` : `${ns[i]}-${ns[j]}`);
    i = j + 1;
  }
  return out.join(', ');
}

/** The status of a GMD on the host (its control socket in `runDir`), or null if it does not answer. */
export interface GmdStatus { state: string; peers: Array<{ name?: string; active: boolean }>; map: { stale: number; inconsistent: number; clean: number; crashed: boolean } | null; resync?: { complete?: boolean; leftBytes?: number; doneBytes?: number } | null;
  stats?: { unflushedRegions?: number } }
export function hostStatus(runDir: string): Promise<GmdStatus | null> {
  return callControl(join(runDir, 'vm0gmd.sock'), 'status', {}, 5000).then((s) => s as GmdStatus, () => null);
}
