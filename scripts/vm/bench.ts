/**
 * `npm run bench:vm`: in one VM boot, fio inside the guest on /dev/nbd0 (kernel NBD client, Debian's
 * nbd-client) against `georm export` and against `nbdkit file` on the host, alternating rounds so
 * that noise on the shared machine hits both. Under TCG the absolute numbers mean little; the
 * ratio georm/nbdkit is the result. Prints a table and writes artifacts/bench/vm.json.
 */
import { closeSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { bootVm, buildVm, keepArtifact, markers, ROOT, vmUnavailable } from './vm.js';
import { startGeormExport, startNbdkit, type HostServer } from './host.js';
import { BENCH_JOBS, fioBench, nbdClientConnect, nbdClientDisconnect } from './jobs.js';

const ROUNDS = Number(process.env.GEORM_BENCH_ROUNDS ?? 2);

async function main(): Promise<number> {
  const why = vmUnavailable();
  if (why) { process.stderr.write(`bench:vm: ${why}\n`); return 2; }
  const dir = mkdtempSync(join(tmpdir(), 'georm-bench-vm-'));
  const servers: HostServer[] = [];
  const children: ChildProcess[] = [];
  const cleanup = async () => {
    for (const s of servers) await s.stop();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => { void cleanup().then(() => process.exit(130)); });
  try {
    const images = await buildVm();
    const vol = (name: string) => {
      const p = join(dir, name);
      const fd = openSync(p, 'w');
      ftruncateSync(fd, 512 * 1024 * 1024);
      closeSync(fd);
      return p;
    };
    const georm = await startGeormExport(vol('georm.img'));
    servers.push(georm);
    const nbdkit = await startNbdkit(vol('nbdkit.img'));
    servers.push(nbdkit);
    const order: Array<[string, HostServer]> = [];
    for (let r = 0; r < ROUNDS; r++) order.push(['georm', georm], ['nbdkit', nbdkit]);
    const job = join(dir, 'job');
    mkdirSync(job);
    writeFileSync(join(job, 'run.sh'), 'set -e\n' + order.map(([label, s], i) =>
      `${nbdClientConnect(s.port, s.exportName)}${fioBench(`${label}.${i}`)}${nbdClientDisconnect()}`).join(''));
    process.stderr.write(`bench:vm: booting (${ROUNDS} rounds × ${BENCH_JOBS.length} jobs × 2 servers)…\n`);
    const res = await bootVm({ images, jobDir: job, workDir: join(dir, 'vm'), timeoutMs: 900_000, track: (c) => children.push(c) });
    if (res.exitCode !== 0) {
      process.stderr.write(`bench:vm: guest failed (exit ${res.exitCode}); console kept at ${keepArtifact(res.consoleLog, 'bench-vm')}\n`);
      return 1;
    }
    // FIO <label>.<round> <job> <KiB/s> <IOPS>: sum per server and job over the rounds.
    const sums = new Map<string, { kib: number; iops: number; n: number }>();
    for (const [labelRound, jobName, kib, iops] of markers(res.console, 'FIO')) {
      const key = `${labelRound!.split('.')[0]}|${jobName}`;
      const s = sums.get(key) ?? { kib: 0, iops: 0, n: 0 };
      s.kib += Number(kib); s.iops += Number(iops); s.n++;
      sums.set(key, s);
    }
    const avg = (label: string, jobName: string) => {
      const s = sums.get(`${label}|${jobName}`);
      return s ? { kibPerSec: s.kib / s.n, iops: s.iops / s.n, runs: s.n } : null;
    };
    const rows = BENCH_JOBS.map((j) => {
      const g = avg('georm', j.name);
      const k = avg('nbdkit', j.name);
      const ratio = g && k ? (j.bs === '4k' ? g.iops / k.iops : g.kibPerSec / k.kibPerSec) : null;
      return { job: j.name, georm: g, nbdkit: k, ratio };
    });
    const fmt = (x: { kibPerSec: number; iops: number } | null, bs: string) =>
      !x ? 'n/a' : bs === '4k' ? `${Math.round(x.iops)} IOPS` : `${(x.kibPerSec / 1024).toFixed(1)} MiB/s`;
    const lines = [
      'fio in a TCG guest on /dev/nbd0 (kernel NBD client via nbd-client), server on the host; absolute numbers are',
      'TCG-bound, compare the ratio only.',
      '',
      '| job | georm export | nbdkit file | georm/nbdkit |',
      '|---|---|---|---|',
      ...rows.map((r) => {
        const bs = BENCH_JOBS.find((j) => j.name === r.job)!.bs;
        return `| ${r.job} | ${fmt(r.georm, bs)} | ${fmt(r.nbdkit, bs)} | ${r.ratio === null ? 'n/a' : r.ratio.toFixed(2)} |`;
      }),
    ];
    process.stdout.write(lines.join('\n') + '\n');
    const out = join(ROOT, 'artifacts', 'bench');
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'vm.json'), JSON.stringify({ date: new Date().toISOString(), kernel: images.kver, rounds: ROUNDS, jobs: BENCH_JOBS, rows }, null, 2) + '\n');
    return 0;
  } finally {
    await cleanup();
  }
}

process.exitCode = await main();
