/**
 * Micro-benchmark of durable state-map marking: the cost a GMD pays per write before issuing it.
 * Cases run side by side in one process on one file system, ROUNDS times interleaved (median kept,
 * since shared machines are noisy), iodepth 32, random 32 KiB regions of a 1 GiB device:
 *   naive                : every write marks its region with its own pwrite + fdatasync
 *   group commit, AL 0   : StateMap, activity log off — concurrent markings share one fdatasync
 *   group commit, AL 256M: StateMap, activity log of 8192 regions (a quarter of the device)
 *   group commit, AL 1G  : StateMap defaults (activity log covers the device: hot after warm-up)
 * Each marking-only "write" is beginWrite → next event-loop turn → endWrite('both'). The "4K data"
 * cases put a real 4 KiB pwrite (page cache) there instead: the overhead a GMD sees vs no map.
 * Prints a table and writes JSON (bench-statemap.json, or argv[2]).
 *
 * npm run bench:statemap [-- OUT.json] ; env BENCH_SECONDS (per run, default 2), BENCH_ROUNDS (3),
 * BENCH_DIR (default os.tmpdir(); put it on the file system whose fdatasync you care about).
 */
import { open, mkdtemp, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateMap } from '../../src/statemap/index.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const DEPTH = 32;
const DEVICE = 1024 ** 3;
const REGION = 32 * 1024;
const REGIONS = DEVICE / REGION;
const ID = { gmdName: 'bench', minor: 0, deviceSize: DEVICE, regionSize: REGION };

interface Sample { ops: number; secs: number; syncs: number }
interface Row { name: string; opsPerSec: number; fdatasyncs: number; writesPerSync: number; runs: number[] }

const nextTurn = () => new Promise<void>((r) => setImmediate(r));
const uniform = () => Math.floor(Math.random() * REGIONS);

async function loop(op: (region: number) => Promise<void>, syncs: () => number): Promise<Sample> {
  const end = Date.now() + SECONDS * 1000;
  let ops = 0;
  const s0 = syncs();
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: DEPTH }, async () => {
    while (Date.now() < end) { await op(uniform()); ops++; }
  }));
  return { ops, secs: Number(process.hrtime.bigint() - t0) / 1e9, syncs: syncs() - s0 };
}

interface Case { name: string; run(dir: string, round: number): Promise<Sample> }

function naiveCase(name: string, data: () => FileHandle | null): Case {
  const page = Buffer.alloc(4096, 0x11);
  return {
    name,
    async run(dir, round) {
      const fh = await open(join(dir, `naive-${round}-${name.length}.map`), 'w+');
      await fh.truncate(8192 + REGIONS / 2);
      let n = 0;
      try {
        return await loop(async (r) => {
          await fh.write(page, 0, 4096, 8192 + Math.floor(r / 2 / 4096) * 4096);
          await fh.datasync();
          n++;
          await dataWrite(data(), r);
        }, () => n);
      } finally {
        await fh.close();
      }
    },
  };
}

function mapCase(name: string, al: number | undefined, data: () => FileHandle | null): Case {
  return {
    name,
    async run(dir, round) {
      const map = await StateMap.create(join(dir, `m-${round}-${name.length}-${al}.map`), ID, al === undefined ? {} : { activityLogRegions: al });
      try {
        // Warm-up: every region written once, as on a device in use; the activity log keeps what it can.
        for (let r = 0; r < REGIONS; r += 1024) {
          await map.beginWrite(r, r + 1023);
          map.endWrite(r, r + 1023, 'both');
        }
        return await loop(async (r) => {
          await map.beginWrite(r, r);
          await dataWrite(data(), r);
          map.endWrite(r, r, 'both');
        }, () => map.stats().commits);
      } finally {
        await map.close();
      }
    },
  };
}

const block = Buffer.alloc(4096, 0x5a);
async function dataWrite(fh: FileHandle | null, r: number): Promise<void> {
  if (fh === null) return nextTurn();
  await fh.write(block, 0, 4096, r * REGION + Math.floor(Math.random() * 8) * 4096);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'georm-bench-sm-'));
  let dataFh: FileHandle | null = null;
  const none = () => null;
  const data = () => dataFh;
  const cases: Case[] = [
    naiveCase('naive fdatasync per write', none),
    mapCase('group commit, AL 0', 0, none),
    mapCase('group commit, AL 256 MiB', 8192, none),
    mapCase('group commit, AL 1 GiB (default)', undefined, none),
    { name: '4K data write, no state map', run: () => loop((r) => dataWrite(dataFh, r), () => 0) },
    naiveCase('4K data + naive fdatasync mark', data),
    mapCase('4K data + StateMap AL 0', 0, data),
    mapCase('4K data + StateMap AL 256 MiB', 8192, data),
    mapCase('4K data + StateMap default', undefined, data),
  ];
  const samples = cases.map(() => [] as Sample[]);
  try {
    dataFh = await open(join(dir, 'data.img'), 'w+');
    await dataFh.truncate(DEVICE);
    for (let round = 0; round < ROUNDS; round++) {
      for (let c = 0; c < cases.length; c++) samples[c]!.push(await cases[c]!.run(dir, round));
    }
  } finally {
    await dataFh?.close();
    await rm(dir, { recursive: true, force: true });
  }
  const rows: Row[] = cases.map((c, i) => {
    const runs = samples[i]!.map((s) => s.ops / s.secs).sort((a, b) => a - b);
    const med = samples[i]!.slice().sort((a, b) => a.ops / a.secs - b.ops / b.secs)[Math.floor(runs.length / 2)]!;
    return {
      name: c.name, opsPerSec: Math.round(med.ops / med.secs), fdatasyncs: med.syncs,
      writesPerSync: med.syncs ? +(med.ops / med.syncs).toFixed(1) : 0, runs: runs.map(Math.round),
    };
  });
  const base = rows[0]!.opsPerSec;
  const dataBase = rows[4]!.opsPerSec;
  const w = Math.max(...rows.map((r) => r.name.length));
  console.log(`state map marking: 1 GiB device, 32 KiB regions, uniform random, iodepth ${DEPTH}, median of ${ROUNDS} × ${SECONDS}s, dir ${process.env.BENCH_DIR ?? tmpdir()}`);
  console.log(`${'case'.padEnd(w)}  ${'ops/s'.padStart(9)}  ${'writes/fdatasync'.padStart(16)}  ratio`);
  rows.forEach((r, i) => {
    const ratio = i >= 4 ? `${(r.opsPerSec / dataBase).toFixed(2)}× no map` : `${(r.opsPerSec / base).toFixed(1)}× naive`;
    console.log(`${r.name.padEnd(w)}  ${String(r.opsPerSec).padStart(9)}  ${(r.fdatasyncs ? String(r.writesPerSync) : '-').padStart(16)}  ${ratio}`);
  });
  await writeFile(process.argv[2] ?? 'bench-statemap.json', `${JSON.stringify({ seconds: SECONDS, rounds: ROUNDS, depth: DEPTH, device: DEVICE, region: REGION, rows }, null, 2)}\n`);
}

await main();
