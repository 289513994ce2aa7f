/**
 * The reference numbers for the mirror benchmarks, side by side in one run: nbdkit's file plugin
 * (no mirroring) and qemu-storage-daemon's write-blocking blockdev-mirror to an NBD peer on loopback,
 * with the source on O_DIRECT and on the page cache. fio ioengine=nbd, DESIGN §8 workloads.
 *
 *   npm run bench:qemu-mirror [-- OUT.json] ; env BENCH_DIR (default os.tmpdir()), BENCH_SECONDS (8), BENCH_SIZE (1G)
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../../src/util/size.js';
import { runFio } from './lib/fio.js';
import { startQemuMirror } from './qemu-mirror.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
/** DESIGN §8 write workloads. */
const WORKLOADS = [
  { name: '4k randwrite qd32', rw: 'randwrite', bs: '4k', iodepth: 32 },
  { name: '1M write qd8', rw: 'write', bs: '1M', iodepth: 8 },
] as const;
interface Row { target: string; job: string; iops: number; bytesPerSec: number; latMeanUs: number }
const SIZE = process.env.BENCH_SIZE ?? '1G';

async function nbdkitFile(file: string, sock: string): Promise<{ uri: string; stop: () => Promise<void> }> {
  const p = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', sock, 'file', `file=${file}`], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    try {
      await stat(sock);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    uri: `nbd+unix:///?socket=${sock}`,
    async stop() { p.kill('SIGTERM'); await once(p, 'exit'); },
  };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'georm-bench-qm-'));
  const results: Row[] = [];
  try {
    const file = join(dir, 'local.img');
    const peer = join(dir, 'peer.img');
    for (const f of [file, peer]) { await writeFile(f, ''); await truncate(f, parseSize(SIZE)); }
    const targets: Array<{ name: string; start: () => Promise<{ uri: string; stop: () => Promise<void> }> }> = [
      { name: 'nbdkit file (no mirror)', start: () => nbdkitFile(file, join(dir, 'nbdkit.sock')) },
      { name: 'qemu mirror, O_DIRECT source', start: () => startQemuMirror({ file, peerFile: peer, cache: 'direct' }) },
      { name: 'qemu mirror, page-cache source', start: () => startQemuMirror({ file, peerFile: peer, cache: 'writeback' }) },
    ];
    for (const t of targets) {
      const s = await t.start();
      try {
        for (const w of WORKLOADS) {
          const r = await runFio({ name: w.name.replace(/\s+/g, '-'), options: {
            ioengine: 'nbd', uri: s.uri, rw: w.rw, bs: w.bs, iodepth: w.iodepth, runtime: SECONDS, time_based: true, size: SIZE, randrepeat: 0,
          } });
          results.push({ target: t.name, job: w.name, iops: Math.round(r.write.iops), bytesPerSec: r.write.bw, latMeanUs: Math.round(r.write.latMeanUs) });
        }
      } finally {
        await s.stop();
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const w = Math.max(...results.map((r) => r.target.length));
  console.log(`fio ioengine=nbd, ${SECONDS}s per run, ${SIZE} files, peer nbdkit on 127.0.0.1`);
  console.log(`${'target'.padEnd(w)}  ${'workload'.padEnd(18)}  ${'IOPS'.padStart(8)}  ${'MB/s'.padStart(8)}  ${'lat µs'.padStart(7)}`);
  for (const r of results) {
    console.log(`${r.target.padEnd(w)}  ${r.job.padEnd(18)}  ${String(r.iops).padStart(8)}  ${(r.bytesPerSec / 1e6).toFixed(1).padStart(8)}  ${String(r.latMeanUs).padStart(7)}`);
  }
  await writeFile(process.argv[2] ?? 'bench-qemu-mirror.json', `${JSON.stringify({ seconds: SECONDS, size: SIZE, results }, null, 2)}\n`);
}

await main();
