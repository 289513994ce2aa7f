/**
 * `npm run bench:nbd`: fio (ioengine=nbd) against `georm export` and `nbdkit file` on the same file,
 * in one run, side by side. Prints a table with the georm/nbdkit ratio per workload, and JSON with
 * --json. Options: --runtime SEC (default 10), --size SIZE (default 1G), --dir DIR, --transport
 * unix|tcp (default unix), --rounds N (default 1; the best round counts), --out FILE (JSON copy).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, writeSync, closeSync, existsSync, writeFileSync, fsyncSync } from 'node:fs';
import { tmpdir, cpus, loadavg } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { runFio, type FioResult } from './lib/fio.js';
import { processCpuSeconds } from './lib/cpu.js';
import { stopProcess } from '../../src/util/process.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const GEORM = join(ROOT, 'bin', 'georm.js');

interface Workload { name: string; rw: string; bs: string; iodepth: number; unit: 'IOPS' | 'MB/s' }
const WORKLOADS: Workload[] = [
  { name: '4k randwrite qd32', rw: 'randwrite', bs: '4k', iodepth: 32, unit: 'IOPS' },
  { name: '4k randread qd32', rw: 'randread', bs: '4k', iodepth: 32, unit: 'IOPS' },
  { name: '1M seq write qd8', rw: 'write', bs: '1M', iodepth: 8, unit: 'MB/s' },
  { name: '1M seq read qd8', rw: 'read', bs: '1M', iodepth: 8, unit: 'MB/s' },
];

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : dflt;
}
const json = process.argv.includes('--json');
const runtime = Number(arg('runtime', '10'));
const rounds = Number(arg('rounds', '1'));
const transport = arg('transport', 'unix');
const sizeArg = arg('size', '1G');
const size = Number(/^(\d+)([KMG]?)/i.exec(sizeArg)![1]) * ({ '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 } as Record<string, number>)[(/^(\d+)([KMG]?)/i.exec(sizeArg)![2] ?? '').toUpperCase()]!;
const say = (s: string) => { if (!json) process.stderr.write(`${s}\n`); };

interface Server { name: string; uri: string; proc: ChildProcess }

async function waitFor(cond: () => boolean, what: string, ms = 15000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function startGeorm(file: string, dir: string): Promise<Server> {
  const listen = transport === 'tcp' ? 'tcp://127.0.0.1:0' : `unix:${join(dir, 'georm.sock')}`;
  const proc = spawn('node', [...(process.env.GEORM_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean), GEORM, 'export', file, '--listen', listen, '--name', 'bench'],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, GEORM_LOG_LEVEL: 'warn' } });
  let out = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  await waitFor(() => /\n/.test(out), 'georm export to start');
  return { name: 'georm', uri: out.trim().split('\n')[0]!, proc };
}

async function startNbdkit(file: string, dir: string): Promise<Server> {
  if (transport === 'tcp') {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const proc = spawn('nbdkit', ['-f', '-p', String(port), '-i', '127.0.0.1', 'file', file], { stdio: 'inherit' });
    await new Promise((r) => setTimeout(r, 500));
    return { name: 'nbdkit', uri: `nbd://127.0.0.1:${port}/`, proc };
  }
  const sock = join(dir, 'nbdkit.sock');
  const proc = spawn('nbdkit', ['-f', '-U', sock, 'file', file], { stdio: 'inherit' });
  await waitFor(() => existsSync(sock), 'nbdkit to start');
  return { name: 'nbdkit', uri: `nbd+unix:///?socket=${sock}`, proc };
}

async function stop(s: Server): Promise<void> {
  await stopProcess(s.proc);
}

function value(w: Workload, r: FioResult): number {
  const d = w.rw.includes('read') ? r.read : r.write;
  return w.unit === 'IOPS' ? d.iops : d.bw / 1e6;
}

interface Row { workload: string; unit: string; georm: number; nbdkit: number; ratio: number;
  geormCpuUsPerIo: number; nbdkitCpuUsPerIo: number; geormP99Us: number; nbdkitP99Us: number }

async function main(): Promise<void> {
  for (const tool of ['fio', 'nbdkit']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is not installed (run scripts/install-deps.sh as root)`);
  }
  const dir = mkdtempSync(join(arg('dir', tmpdir()), 'georm-bench-nbd-'));
  const file = join(dir, 'bench.img');
  const servers: Server[] = [];
  const cleanup = async () => { for (const s of servers) await stop(s); rmSync(dir, { recursive: true, force: true }); };
  process.on('SIGINT', () => { void cleanup().then(() => process.exit(130)); });
  try {
    say(`preparing ${file} (${sizeArg}, fully allocated)`);
    const fd = openSync(file, 'w');
    const chunk = randomBytes(1024 * 1024);
    for (let off = 0; off < size; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
    fsyncSync(fd); // on disk before measuring: the kernel's writeback of it would land in the first runs
    closeSync(fd);

    const georm = await startGeorm(file, dir);
    servers.push(georm);
    const nbdkit = await startNbdkit(file, dir);
    servers.push(nbdkit);
    say(`georm: ${georm.uri}   nbdkit: ${nbdkit.uri}   fio ${runtime}s per run, ${rounds} round(s)`);

    const rows: Row[] = [];
    for (const w of WORKLOADS) {
      const best: Record<string, { r: FioResult; cpuUsPerIo: number }> = {};
      for (let round = 0; round < rounds; round++) {
        // Alternate the order per round so neither server always runs on a warmer cache.
        const order = round % 2 === 0 ? [georm, nbdkit] : [nbdkit, georm];
        for (const s of order) {
          const cpu0 = processCpuSeconds(s.proc.pid!);
          const r = await runFio({
            name: `${s.name}-${w.rw}-${w.bs}`,
            options: { ioengine: 'nbd', uri: s.uri, rw: w.rw, bs: w.bs, iodepth: w.iodepth, size, runtime, time_based: true,
              ramp_time: 1, norandommap: true, randrepeat: 0 },
          });
          const cpu = processCpuSeconds(s.proc.pid!) - cpu0;
          const d = w.rw.includes('read') ? r.read : r.write;
          const cpuUsPerIo = (cpu * 1e6) / Math.max(1, d.ios);
          say(`  ${w.name.padEnd(18)} ${s.name.padEnd(7)} ${value(w, r).toFixed(w.unit === 'IOPS' ? 0 : 1).padStart(9)} ${w.unit}  p99 ${d.latP99Us.toFixed(0)} us  server CPU ${cpuUsPerIo.toFixed(1)} us/IO`);
          if (!best[s.name] || value(w, r) > value(w, best[s.name]!.r)) best[s.name] = { r, cpuUsPerIo };
        }
      }
      const g = best.georm!;
      const k = best.nbdkit!;
      const dirOf = (r: FioResult) => (w.rw.includes('read') ? r.read : r.write);
      rows.push({
        workload: w.name, unit: w.unit, georm: value(w, g.r), nbdkit: value(w, k.r), ratio: value(w, g.r) / value(w, k.r),
        geormCpuUsPerIo: g.cpuUsPerIo, nbdkitCpuUsPerIo: k.cpuUsPerIo, geormP99Us: dirOf(g.r).latP99Us, nbdkitP99Us: dirOf(k.r).latP99Us,
      });
    }
    const meta = { date: new Date().toISOString(), node: process.version, cpus: cpus().length, loadavg: loadavg(), runtime, rounds, transport, size };
    const result = { meta, rows };
    if (arg('out', '')) writeFileSync(arg('out', ''), `${JSON.stringify(result, null, 2)}\n`);
    if (json) { process.stdout.write(`${JSON.stringify(result)}\n`); return; }
    const fmt = (v: number, u: string) => (u === 'IOPS' ? `${(v / 1000).toFixed(1)}k` : `${v.toFixed(0)} MB/s`);
    const lines = [
      '| workload | georm | nbdkit | georm/nbdkit | server CPU µs/IO georm / nbdkit | p99 µs georm / nbdkit |',
      '|---|---|---|---|---|---|',
      ...rows.map((r) => `| ${r.workload} | ${fmt(r.georm, r.unit)} | ${fmt(r.nbdkit, r.unit)} | ${r.ratio.toFixed(2)} | ${r.geormCpuUsPerIo.toFixed(1)} / ${r.nbdkitCpuUsPerIo.toFixed(1)} | ${r.geormP99Us.toFixed(0)} / ${r.nbdkitP99Us.toFixed(0)} |`),
    ];
    process.stdout.write(`${lines.join('\n')}\n(${meta.cpus} CPUs, load ${meta.loadavg.map((x) => x.toFixed(1)).join(' ')}, ${transport} socket, ${runtime}s per run, best of ${rounds})\n`);
  } finally {
    await cleanup();
  }
}

main().catch((e: unknown) => { process.stderr.write(`bench:nbd: ${e instanceof Error ? e.message : String(e)}\n`); process.exit(1); });
