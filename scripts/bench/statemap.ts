/**
 * Micro-benchmark of durable state-map marking: the cost a GMD pays per write before issuing it.
 * Runs, side by side in one process on one file system:
 *   naive      : every write marks its region with its own pwrite + fdatasync (the seed's "extra state map write")
 *   group      : StateMap with the activity log off — concurrent markings share one fdatasync
 *   group+AL   : StateMap with the default activity log, random 4 KiB writes over the whole device
 *   hot set    : StateMap with the default activity log, writes within a working set that fits in it
 * Each "write" is beginWrite → (write done on the next turn of the event loop) → endWrite('both'),
 * at iodepth 32. Prints a table and writes JSON (bench-statemap.json, or the path given as argv[2]).
 *
 * npm run bench:statemap [-- OUT.json] ; env BENCH_SECONDS (default 3), BENCH_DIR (default os.tmpdir()).
 */
import { open, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateMap } from '../../src/statemap/index.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const DEPTH = 32;
const DEVICE = 1024 ** 3; // 1 GiB
const REGION = 32 * 1024;
const REGIONS = DEVICE / REGION;

interface Row { name: string; ops: number; opsPerSec: number; fdatasyncs: number; writesPerSync: number }

async function runLoop(name: string, op: (region: number) => Promise<void>, pick: () => number, syncs: () => number): Promise<Row> {
  const end = Date.now() + SECONDS * 1000;
  let ops = 0;
  const s0 = syncs();
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: DEPTH }, async () => {
    while (Date.now() < end) { await op(pick()); ops++; }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const fdatasyncs = syncs() - s0;
  return { name, ops, opsPerSec: Math.round(ops / secs), fdatasyncs, writesPerSync: fdatasyncs ? +(ops / fdatasyncs).toFixed(1) : Infinity };
}

const nextTurn = () => new Promise<void>((r) => setImmediate(r));
const uniform = () => Math.floor(Math.random() * REGIONS);
const hot = () => Math.floor(Math.random() * 4096); // 128 MiB working set, inside the 8192-region activity log

async function main(): Promise<void> {
  const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'georm-bench-sm-'));
  const rows: Row[] = [];
  try {
    // naive: one page write + fdatasync per write, iodepth 32 (the thread pool runs them concurrently)
    const fh = await open(join(dir, 'naive.map'), 'w+');
    await fh.truncate(8192 + REGIONS / 2);
    let naiveSyncs = 0;
    const page = Buffer.alloc(4096, 0x11);
    rows.push(await runLoop('naive fdatasync per write', async (r) => {
      await fh.write(page, 0, 4096, 8192 + Math.floor(r / 2 / 4096) * 4096);
      await fh.datasync();
      naiveSyncs++;
      await nextTurn();
    }, uniform, () => naiveSyncs));
    await fh.close();

    for (const [name, al, pick] of [
      ['group commit, no activity log', 0, uniform],
      ['group commit + activity log, uniform', 8192, uniform],
      ['group commit + activity log, hot set', 8192, hot],
    ] as const) {
      const map = await StateMap.create(join(dir, `${al}-${rows.length}.map`), { gmdName: 'bench', minor: 0, deviceSize: DEVICE, regionSize: REGION }, { activityLogRegions: al });
      rows.push(await runLoop(name, async (r) => {
        await map.beginWrite(r, r);
        await nextTurn();
        map.endWrite(r, r, 'both');
      }, pick, () => map.stats().commits));
      await map.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const base = rows[0]!.opsPerSec;
  const w = Math.max(...rows.map((r) => r.name.length));
  console.log(`state map marking, 1 GiB device, 32 KiB regions, iodepth ${DEPTH}, ${SECONDS}s each, dir ${process.env.BENCH_DIR ?? tmpdir()}`);
  console.log(`${'mode'.padEnd(w)}  ${'ops/s'.padStart(9)}  ${'fdatasyncs'.padStart(10)}  ${'writes/sync'.padStart(11)}  ${'vs naive'.padStart(8)}`);
  for (const r of rows) {
    console.log(`${r.name.padEnd(w)}  ${String(r.opsPerSec).padStart(9)}  ${String(r.fdatasyncs).padStart(10)}  ${String(r.writesPerSync).padStart(11)}  ${(r.opsPerSec / base).toFixed(1).padStart(7)}x`);
  }
  await writeFile(process.argv[2] ?? 'bench-statemap.json', `${JSON.stringify({ seconds: SECONDS, depth: DEPTH, device: DEVICE, region: REGION, rows }, null, 2)}\n`);
}

await main();
