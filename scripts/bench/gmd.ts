/**
 * `npm run bench:gmd`: the GeoMirror device against its baselines, side by side in one run.
 *
 *   fio (ioengine=nbd) 4 KiB randwrite iodepth 32 and 1 MiB sequential write iodepth 8 on:
 *     - georm export of the same file (no mirroring: the NBD layer's own speed)
 *     - nbdkit's file plugin on the same file (a reference NBD server in C, no mirroring)
 *     - the GMD in sync, mwc and async mode, peer on loopback, GeoMessage MTU 1500 (georm demo setup)
 *     - qemu-storage-daemon blockdev-mirror copy-mode=write-blocking to an NBD peer (direct and writeback)
 *   plus resync of 1 GiB of stale regions between two network namespaces over a veth capped with
 *   `tc qdisc tbf rate 1gbit`.
 *
 * Prints a table with ratios and, with --json, one JSON document. Options: --runtime SEC (10),
 * --size SIZE (256M), --skip-resync, --resync-mtu 1500,9000, --only sync,mwc,… (or --only resync: just the resync part), --dir DIR.
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, closeSync, existsSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { cpus, tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runFio, type FioResult } from './lib/fio.js';
import { startQemuMirror } from './qemu-mirror.js';
import { startDemo } from '../../src/gmd/demo.js';
import { parseSize } from '../../src/util/size.js';
import { TestCluster } from '../../test/gmd/cluster.js';
import type { GmdMode } from '../../src/gmd/protocol.js';
import { machineCpuTicks, processCpuSeconds } from './lib/cpu.js';
import { stopProcess } from '../../src/util/process.js';
import { callControl } from '../../src/gmd/control.js';
import type { GmdStatus } from '../../src/gmd/device/index.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const GEORM = join(ROOT, 'bin', 'georm.js');
const argv = process.argv.slice(2);
const arg = (name: string, dflt: string): string => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1]! : dflt; };
const flag = (name: string): boolean => argv.includes(`--${name}`);
const runtime = Number(arg('runtime', '10'));
const size = parseSize(arg('size', '256M'));
const only = arg('only', 'export,nbdkit,sync,mwc,async,async-8M,qemu-direct,qemu-writeback,resync').split(',');
const json = flag('json');
const say = (s: string) => process.stderr.write(`${s}\n`);

interface Workload { key: string; rw: string; bs: string; iodepth: number; unit: 'IOPS' | 'MB/s' }
const WORKLOADS: Workload[] = [
  { key: '4k-randwrite-qd32', rw: 'randwrite', bs: '4k', iodepth: 32, unit: 'IOPS' },
  { key: '1m-write-qd8', rw: 'write', bs: '1M', iodepth: 8, unit: 'MB/s' },
];

/** hwmWaits: a GMD primary's count of async writes that waited at the high water mark (GmdStats). */
interface Target { name: string; uri: string; pids: () => number[]; stop: () => Promise<void>; hwmWaits?: () => Promise<number> }
/** cpuUsPerIo: the target's processes; fioUsPerIo: fio's own; idle: share of all cores left idle. */
interface Cell { value: number; p99Us: number; cpuUsPerIo: number | null; fioUsPerIo: number; idle: number; hwmWaitShare: number | null }

async function fio(uri: string, w: Workload): Promise<FioResult> {
  return runFio({
    name: w.key,
    options: {
      ioengine: 'nbd', uri, rw: w.rw, bs: w.bs, iodepth: w.iodepth, size: String(size), runtime, time_based: true,
      randrepeat: 0, norandommap: true, ramp_time: 1,
    },
  });
}

/** Writes `bytes` of random data (one random MiB, repeated) to `path`. */
function fill(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  const chunk = randomBytes(1024 * 1024);
  for (let off = 0; off < bytes; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - off), off);
  closeSync(fd); // settle() writes it back
}

/**
 * Puts a prepared file in the same state for every target: on disk, and out of the page cache.
 *  - Written back: otherwise the kernel writes back the setup's hundreds of dirty MB during the
 *    next fio run, and that target pays for it.
 *  - Dropped from the cache: how a file was written decides the size of its cached pages (folios).
 *    4 KiB writes into pages cached by the 1 MiB writes of the fill cost the kernel about twice
 *    the CPU of writes into pages they bring in themselves: `georm export` measured 87k IOPS at
 *    12 µs/IO on a file just filled, 175k at 6 µs/IO on the same file dropped from the cache.
 *    GNU dd with oflag=nocache and count=0 drops one file's pages (posix_fadvise DONTNEED).
 */
function settle(path: string): void {
  // conv=fdatasync writes the file back first, so that its pages can be dropped.
  const r = spawnSync('dd', ['if=/dev/null', `of=${path}`, 'oflag=nocache', 'conv=notrunc,fdatasync', 'count=0', 'status=none'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`dropping ${path} from the page cache failed: ${r.stderr}`);
}

function copySettled(from: string, to: string): void {
  copyFileSync(from, to);
  settle(to);
}

async function exportTarget(file: string, dir: string): Promise<Target> {
  const sock = join(dir, 'export.sock');
  const proc = spawn(process.execPath, [GEORM, 'export', file, '--listen', `unix:${sock}`, '--name', 'bench'],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, GEORM_LOG_LEVEL: 'warn' } });
  let out = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  const end = Date.now() + 15000;
  while (!out.includes('\n')) { if (Date.now() > end) throw new Error('georm export did not start'); await new Promise((r) => setTimeout(r, 50)); }
  return { name: 'georm export', uri: `nbd+unix:///bench?socket=${sock}`, pids: () => [proc.pid!], stop: () => stopProcess(proc).then(() => undefined) };
}

/** nbdkit's file plugin (C, threads): the reference unmirrored NBD server of DESIGN §8. */
async function nbdkitTarget(file: string, dir: string): Promise<Target> {
  const f = join(dir, 'nbdkit.img');
  copySettled(file, f);
  const sock = join(dir, 'nbdkit.sock');
  const proc = spawn('nbdkit', ['-f', '-U', sock, 'file', f], { stdio: ['ignore', 'ignore', 'inherit'] });
  const end = Date.now() + 15000;
  while (!existsSync(sock)) { if (Date.now() > end) throw new Error('nbdkit did not start'); await new Promise((r) => setTimeout(r, 50)); }
  return { name: 'nbdkit file', uri: `nbd+unix:///?socket=${sock}`, pids: () => [proc.pid!], stop: () => stopProcess(proc).then(() => undefined) };
}

async function gmdTarget(mode: GmdMode, file: string, dir: string, hwm = '128K'): Promise<Target> {
  const d = join(dir, `gmd-${mode}-${hwm}`);
  spawnSync('mkdir', ['-p', d]);
  copySettled(file, join(d, 'alpha.img'));
  copySettled(file, join(d, 'beta.img'));
  process.env.GEORM_LOG_LEVEL = 'warn';
  const demo = await startDemo({ dir: d, mode, size, syncRate: '1M', hwm });
  const name = mode === 'async' && hwm !== '128K' ? `GMD async (hwm ${hwm})` : `GMD ${mode}`;
  const primarySocket = join(demo.info.dir, 'run', demo.info.machines.primary, `${demo.info.gmd}.sock`);
  const hwmWaits = mode === 'async' ? async () => ((await callControl(primarySocket, 'status')) as GmdStatus).stats.hwmWaits : undefined;
  return { name, uri: demo.info.unixUri, pids: () => demo.children.map((c) => c.pid!), stop: async () => { await demo.stop(); }, hwmWaits };
}

async function qemuTarget(file: string, dir: string, cache: 'direct' | 'writeback'): Promise<Target> {
  const f = join(dir, `qemu-${cache}.img`);
  const peer = join(dir, `qemu-${cache}-peer.img`);
  copySettled(file, f);
  copySettled(file, peer);
  const m = await startQemuMirror({ file: f, peerFile: peer, cache });
  return { name: `qemu mirror (${cache})`, uri: m.uri, pids: () => [], stop: () => m.stop() };
}

async function measure(t: Target): Promise<Record<string, Cell>> {
  const out: Record<string, Cell> = {};
  for (const w of WORKLOADS) {
    const pids = t.pids();
    const waits0 = t.hwmWaits ? await t.hwmWaits() : 0;
    const cpu0 = pids.reduce((s, p) => s + processCpuSeconds(p), 0);
    const m0 = machineCpuTicks();
    const r = await fio(t.uri, w);
    const m1 = machineCpuTicks();
    const cpu1 = pids.reduce((s, p) => s + processCpuSeconds(p), 0);
    const d = r.write;
    out[w.key] = {
      value: w.unit === 'IOPS' ? d.iops : d.bw / 1e6, p99Us: d.latP99Us,
      cpuUsPerIo: pids.length && d.ios ? ((cpu1 - cpu0) * 1e6) / d.ios : null,
      fioUsPerIo: d.iops ? (r.cpuPercent / 100) * 1e6 / d.iops : NaN,
      idle: (m1.idle - m0.idle) / (m1.total - m0.total),
      // Writes of the run (ramp included) that waited for the peer at the HWM, per measured write.
      hwmWaitShare: t.hwmWaits && d.ios ? (await t.hwmWaits() - waits0) / d.ios : null,
    };
    say(`  ${t.name.padEnd(22)} ${w.key.padEnd(18)} ${out[w.key]!.value.toFixed(w.unit === 'IOPS' ? 0 : 1)} ${w.unit}`);
  }
  return out;
}

/**
 * What async / export could reach on this machine if the mirror cost nothing beyond a second copy of
 * the export's own work: the primary doing what the export server does (E CPU µs per write), the
 * secondary as cheap as an NBD server receiving the same write (E again), fio as before (F). With all
 * cores busy the rate is at most cores / (F + 2E), against the export's measured rate. A peer on the
 * same cores as the application makes mirroring cost twice the I/O work; a target above this bound
 * cannot be met here by any implementation.
 */
function idealMirrorBound(exportCell: Cell | undefined): number {
  if (!exportCell || exportCell.cpuUsPerIo === null) return NaN;
  const perWrite = exportCell.fioUsPerIo + 2 * exportCell.cpuUsPerIo;
  return (cpus().length * 1e6) / perWrite / exportCell.value;
}

/** Resync of 1 GiB of stale regions between namespaces over a 1 Gbit/s tbf-capped veth. */
interface ResyncResult { mtu: number; bytes: number; seconds: number; mbPerSec: number; linkMbPerSec: number; ratio: number }
async function resyncBench(mtu: number): Promise<ResyncResult> {
  const bytes = 1024 * 1024 * 1024;
  const c = await TestCluster.create({ mode: 'mwc', size: bytes, netns: true, networks: 1, syncRate: '1M', mtu });
  try {
    // Random data on the side that holds it: resync sends a chunk that reads as zeros as a zero
    // message, so a sparse volume would measure nothing of the link.
    fill(c.vol.alpha!, bytes);
    settle(c.vol.alpha!);
    await c.run('alpha');
    await c.run('beta');
    await c.ctl('alpha', 'dirty');
    const run = async (cmd: string[]) => { const r = spawnSync('ip', cmd, { encoding: 'utf8' }); if (r.status !== 0) throw new Error(`ip ${cmd.join(' ')}: ${r.stderr}`); };
    await run(['netns', 'exec', c.ns.alpha!, 'tc', 'qdisc', 'add', 'dev', c.veth.alpha!, 'root', 'tbf', 'rate', '1gbit', 'burst', '256kb', 'latency', '50ms']);
    await run(['netns', 'exec', c.ns.beta!, 'tc', 'qdisc', 'add', 'dev', c.veth.beta!, 'root', 'tbf', 'rate', '1gbit', 'burst', '256kb', 'latency', '50ms']);
    await c.start('alpha', ['beta']);
    await c.start('beta');
    const s = await c.waitFor('alpha', (st) => !!st.resync?.complete, 'resync complete', 300000);
    const seconds = s.resync!.elapsedSec;
    const mb = s.resync!.doneBytes / seconds / 1e6;
    // A clean exit, so processes started with GEORM_GMD_NODE_ARGS=--cpu-prof write their profiles.
    await c.terminate('beta');
    await c.terminate('alpha');
    return { mtu, bytes: s.resync!.doneBytes, seconds, mbPerSec: mb, linkMbPerSec: 125, ratio: mb / 125 };
  } finally {
    await c.cleanup();
  }
}

async function main(): Promise<void> {
  for (const tool of ['fio', 'qemu-storage-daemon', 'nbdkit']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is not installed (run scripts/install-deps.sh as root)`);
  }
  const dir = mkdtempSync(join(arg('dir', tmpdir()), 'georm-bench-gmd-'));
  const results: Record<string, Record<string, Cell>> = {};
  try {
    const file = join(dir, 'base.img');
    const fioWanted = only.some((k) => k !== 'resync');
    if (fioWanted) {
      say(`preparing ${size} bytes of random data; fio ${runtime}s per run`);
      fill(file, size);
      settle(file);
    }
    const makers: Array<[string, () => Promise<Target>]> = [
      ['export', () => exportTarget(file, dir)],
      ['nbdkit', () => nbdkitTarget(file, dir)],
      ['sync', () => gmdTarget('sync', file, dir)],
      ['mwc', () => gmdTarget('mwc', file, dir)],
      ['async', () => gmdTarget('async', file, dir)],
      // Extra row: async with a configured HWM of 8 MiB (the default 128 KiB row stays the reference).
      ['async-8M', () => gmdTarget('async', file, dir, '8M')],
      ['qemu-direct', () => qemuTarget(file, dir, 'direct')],
      ['qemu-writeback', () => qemuTarget(file, dir, 'writeback')],
    ];
    for (const [key, make] of makers) {
      if (!only.includes(key)) continue;
      const t = await make();
      try { results[t.name] = await measure(t); } finally { await t.stop(); }
    }
    // MTU 1500 is the reference; MTU 9000 (jumbo frames on the same 1 Gbit/s veth) is an extra row:
    // the sender's cost is per packet (UDP send through veth + tbf), so fewer, larger packets show
    // what the resync engine itself can do.
    const resync: ResyncResult[] = [];
    if (!flag('skip-resync') && only.includes('resync')) {
      if (process.getuid?.() !== 0) say('resync benchmark skipped: needs root (network namespaces)');
      else {
        for (const mtu of arg('resync-mtu', '1500,9000').split(',').map(Number)) {
          say(`resync: 1 GiB stale, netns, veth tbf 1gbit, MTU ${mtu}`);
          resync.push(await resyncBench(mtu));
        }
      }
    }
    const v = (name: string, w: string) => results[name]?.[w]?.value ?? NaN;
    const qemuBest = (w: string) => Math.max(v('qemu mirror (direct)', w) || 0, v('qemu mirror (writeback)', w) || 0) || NaN;
    const ratios = {
      mwcVsQemuDirect4k: v('GMD mwc', WORKLOADS[0]!.key) / v('qemu mirror (direct)', WORKLOADS[0]!.key),
      mwcVsQemuBest4k: v('GMD mwc', WORKLOADS[0]!.key) / qemuBest(WORKLOADS[0]!.key),
      asyncVsExport4k: v('GMD async', WORKLOADS[0]!.key) / v('georm export', WORKLOADS[0]!.key),
      asyncVsNbdkit4k: v('GMD async', WORKLOADS[0]!.key) / v('nbdkit file', WORKLOADS[0]!.key),
      async8MVsExport4k: v('GMD async (hwm 8M)', WORKLOADS[0]!.key) / v('georm export', WORKLOADS[0]!.key),
      mwcVsQemuBest1m: v('GMD mwc', WORKLOADS[1]!.key) / qemuBest(WORKLOADS[1]!.key),
      idealMirrorVsExport4k: idealMirrorBound(results['georm export']?.[WORKLOADS[0]!.key]),
    };
    if (json) {
      process.stdout.write(JSON.stringify({ runtimeSec: runtime, size, results, ratios, resync }, null, 2) + '\n');
      return;
    }
    const lines: string[] = [];
    lines.push(`| target | 4k randwrite qd32 (IOPS) | p99 µs | CPU µs/IO | fio µs/IO | idle | waited at HWM | 1M write qd8 (MB/s) |`);
    lines.push('|---|---|---|---|---|---|---|---|');
    for (const [name, r] of Object.entries(results)) {
      const a = r[WORKLOADS[0]!.key]!, b = r[WORKLOADS[1]!.key]!;
      const waited = a.hwmWaitShare === null ? '-' : `${(Math.min(1, a.hwmWaitShare) * 100).toFixed(0)}%`;
      lines.push(`| ${name} | ${a.value.toFixed(0)} | ${a.p99Us.toFixed(0)} | ${a.cpuUsPerIo === null ? '-' : a.cpuUsPerIo.toFixed(1)} | ${a.fioUsPerIo.toFixed(1)} | ${(a.idle * 100).toFixed(0)}% | ${waited} | ${b.value.toFixed(0)} |`);
    }
    lines.push('');
    lines.push(`mwc / qemu mirror (direct), 4k randwrite: ${ratios.mwcVsQemuDirect4k.toFixed(2)}×   (target ≥ 1.0×, want 2×)`);
    lines.push(`mwc / best qemu mirror, 4k randwrite:     ${ratios.mwcVsQemuBest4k.toFixed(2)}×`);
    lines.push(`async / georm export, 4k randwrite:       ${ratios.asyncVsExport4k.toFixed(2)}×   (target ≥ 0.7×)`);
    lines.push(`  bound for an ideal mirror on ${cpus().length} cores:   ${ratios.idealMirrorVsExport4k.toFixed(2)}×   (fio + the export server per write on the primary, once more the server's cost on the secondary; see idealMirrorBound)`);
    lines.push(`async / nbdkit file (unmirrored), 4k:    ${ratios.asyncVsNbdkit4k.toFixed(2)}×   (reference: the C server of DESIGN §8, no mirroring)`);
    lines.push(`async (hwm 8M) / georm export, 4k:       ${ratios.async8MVsExport4k.toFixed(2)}×   (configured HWM 8 MiB; default 128 KiB above)`);
    lines.push(`mwc / best qemu mirror, 1M write:         ${ratios.mwcVsQemuBest1m.toFixed(2)}×`);
    for (const r of resync) lines.push(`resync 1 GiB stale over tbf 1gbit veth, MTU ${r.mtu}: ${r.mbPerSec.toFixed(1)} MB/s in ${r.seconds.toFixed(1)} s = ${(r.ratio * 100).toFixed(0)}% of 125 MB/s   (target ≥ 80%)`);
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (e: unknown) => { process.stderr.write(`bench:gmd failed: ${(e as Error).stack ?? String(e)}\n`); process.exit(1); });
