import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Procs, watchOutput } from '../helpers/proc.js';
import { tempDir } from '../helpers/env.js';
import { StateMap, readStateMapFile, CELL_CLEAN } from '../../src/statemap/index.js';

const CHILD = fileURLToPath(new URL('./fixtures/crash-writer.js', import.meta.url));

/**
 * DESIGN §4.2 "mark durably before issue": a writer is SIGKILLed at random moments; in the file it
 * leaves behind, every region of a write that was issued and not completed on both sides is non-clean.
 */
t.test('SIGKILL at random points never leaves an issued write unmarked', async (t) => {
  const { dir, cleanup } = tempDir('georm-sm-crash-');
  t.teardown(cleanup);
  const procs = new Procs();
  t.teardown(() => procs.stopAll());
  const path = join(dir, 'crash.map');
  const journal = join(dir, 'journal');
  // 4 MiB device in 4 KiB regions = 1024 regions; a tiny activity log forces constant eviction and cleaning.
  await (await StateMap.create(path, { gmdName: 'crash0gmd', minor: 0, deviceSize: 4 << 20, regionSize: 4096 })).close();

  const iterations = 12;
  let checkedRegions = 0;
  for (let i = 0; i < iterations; i++) {
    const al = i % 3 === 0 ? 0 : 16;
    const child = procs.spawn(process.execPath, [CHILD, path, journal, '16', String(al)]);
    const out = watchOutput(child);
    await out.wait(/ready/);
    await new Promise((r) => setTimeout(r, 30 + Math.random() * 250));
    await procs.stop(child, 'SIGKILL');

    const snap = await readStateMapFile(path);
    t.equal(snap.open, true, `iteration ${i}: the killed writer left the map marked open`);
    // Replay the journal: regions of issued writes without an 'E' (completed on both sides).
    const open = new Map<string, number>();
    const staleOk = new Set<number>();
    for (const line of readFileSync(journal, 'utf8').split('\n')) {
      const [op, a, b] = line.split(' ');
      if (!op || b === undefined) continue;
      const key = `${a} ${b}`;
      if (op === 'S') for (let r = Number(a); r <= Number(b); r++) staleOk.add(r);
      if (op === 'I') open.set(key, (open.get(key) ?? 0) + 1);
      else if (op === 'E') {
        const n = (open.get(key) ?? 0) - 1;
        if (n > 0) open.set(key, n); else open.delete(key);
      }
    }
    let bad = 0;
    const needed = new Set<number>(staleOk);
    for (const key of open.keys()) {
      const [a, b] = key.split(' ').map(Number) as [number, number];
      for (let r = a; r <= b; r++) {
        checkedRegions++;
        needed.add(r);
        if (snap.cells[r] === CELL_CLEAN) bad++;
      }
    }
    t.equal(bad, 0, `iteration ${i}: ${open.size} unfinished writes, all of their regions marked`);
    // The price of cheap marking: regions marked without need, bounded by the activity log (README).
    let extra = 0;
    snap.cells.forEach((v, r) => { if (v !== CELL_CLEAN && !needed.has(r)) extra++; });
    const bound = al + Math.max(64, Math.ceil(al / 8)) + 16 * 3 * 4; // + evictions during one file write (slack)
    t.ok(extra <= bound, `iteration ${i}: ${extra} regions marked beyond need (activity log ${al}, bound ${bound})`);

    const map = await StateMap.open(path);
    t.equal(map.crashed, true, 'reopen reports the crash');
    await map.setAll(CELL_CLEAN); // start the next round from a clean map so the check stays sharp
    await map.close();
  }
  t.ok(checkedRegions > 0, `checked ${checkedRegions} regions of unfinished writes`);
});
