import t, { type Test } from 'tap';
import { readFileSync, writeFileSync, truncateSync, statSync, unlinkSync, closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/env.js';
import { StateMap, readStateMapFile, mergeAndClear, resizeStateMap, CELL_CLEAN, CELL_STALE, StateMapError } from '../../src/statemap/index.js';

const ID = { gmdName: 'data10gmd', minor: 10, deviceSize: 10 * 1024 * 1024 + 512, regionSize: 32 * 1024 };

function setup(t: Test) {
  const { dir, cleanup } = tempDir('georm-sm-');
  t.teardown(cleanup);
  return dir;
}

t.test('create, write, close, reopen round trip', async (t) => {
  const path = join(setup(t), 'a.map');
  const map = await StateMap.create(path, ID);
  t.equal(map.regionCount, 321, 'size follows the device: ceil(10 MiB + 512 / 32 KiB)');
  t.equal(map.crashed, false);
  t.ok(map.isClean());
  t.same(map.regionRange(0, 1), [0, 0]);
  t.same(map.regionRange(32 * 1024 - 1, 2), [0, 1]);
  t.same(map.regionRange(ID.deviceSize - 512, 512), [320, 320]);
  t.throws(() => map.regionRange(ID.deviceSize, 1), { code: 'STATEMAP_ERR_INVALID' });

  await map.beginWrite(3, 4);
  t.equal(map.cell(3), 1, 'in flight: 0x1');
  await map.beginWrite(4, 4);
  t.equal(map.cell(4), 2, 'two writes in flight: 0x2');
  map.endWrite(3, 4, 'both');
  t.equal(map.cell(3), 0, 'completed on both sides: clean');
  t.equal(map.cell(4), 1);
  map.endWrite(4, 4, 'local-only');
  t.equal(map.cell(4), CELL_STALE, 'peer missed it: stale');
  await map.markStale(100, 101);
  t.same(map.dirtyRegions(), [4, 100, 101]);
  t.equal(map.nextDirty(5), 100);
  t.equal(map.nextDirty(102), -1);
  t.same(map.counts(), { regions: 321, clean: 318, inconsistent: 0, stale: 3 });
  const gen = map.generation;
  const gen2 = await map.newGeneration();
  t.not(gen2, gen);
  await map.close();
  await map.close(); // idempotent

  const snap = await readStateMapFile(path);
  t.equal(snap.open, false, 'closed cleanly');
  t.equal(snap.generation, gen2);
  t.same([...snap.cells].map((v, r) => (v ? r : -1)).filter((r) => r >= 0), [4, 100, 101], 'only the stale regions are on disk');

  const again = await StateMap.open(path, ID);
  t.equal(again.crashed, false);
  t.equal(again.cell(100), CELL_STALE);
  again.cleanRegion(100);
  t.equal(again.cell(100), CELL_CLEAN);
  await again.close();
  t.equal((await readStateMapFile(path)).cells[100], CELL_CLEAN, 'close persists cleaning');
});

t.test('activity log: hot regions are marked once; idle ones are cleaned lazily', async (t) => {
  const dir = setup(t);
  const path = join(dir, 'al.map');
  const map = await StateMap.create(path, ID, { activityLogRegions: 2, idleCleanMs: 600000 });
  for (let i = 0; i < 5; i++) {
    await map.beginWrite(7, 7);
    map.endWrite(7, 7, 'both');
  }
  let s = map.stats();
  t.equal(s.marks, 1, 'region 7 was marked on disk once for five writes');
  t.equal(s.fastPath, 4);
  t.equal((await readStateMapFile(path)).cells[7], 1, 'still marked on disk while hot (costs a resync after a crash, never data)');
  for (const r of [10, 11, 12]) { await map.beginWrite(r, r); map.endWrite(r, r, 'both'); }
  s = map.stats();
  t.equal(s.activityLog, 2, 'activity log stays within its capacity');
  t.equal(s.evictions, 2, 'the two oldest idle regions were evicted');
  await map.flush();
  const cells = (await readStateMapFile(path)).cells;
  t.same([cells[7], cells[10], cells[11], cells[12]], [0, 0, 0, 0], 'flush cleans the activity log on disk');
  await map.close();

  // Idle regions leave the activity log by themselves (background writer).
  const path2 = join(dir, 'idle.map');
  const idle = await StateMap.create(path2, ID, { activityLogRegions: 100, idleCleanMs: 20, lazyFlushMs: 10 });
  for (const r of [1, 2, 3]) { await idle.beginWrite(r, r); idle.endWrite(r, r, 'both'); }
  // Wait (bounded) for the background writer; a loaded machine may delay its timer.
  const marked = async () => (await readStateMapFile(path2)).cells.reduce((a, v) => a + (v ? 1 : 0), 0);
  for (let i = 0; i < 100 && (idle.stats().activityLog > 0 || await marked() > 0); i++) await new Promise((r) => setTimeout(r, 50));
  t.equal(idle.stats().activityLog, 0, 'idle regions left the activity log');
  t.equal(await marked(), 0, 'and were cleaned on disk by the background writer');
  await idle.close();
});

t.test('group commit: concurrent beginWrite calls share commits', async (t) => {
  const path = join(setup(t), 'gc.map');
  const map = await StateMap.create(path, ID, { activityLogRegions: 0 });
  const before = map.stats().commits;
  await Promise.all(Array.from({ length: 64 }, (_, i) => map.beginWrite(i, i)));
  const used = map.stats().commits - before;
  t.ok(used <= 2, `64 concurrent markings used ${used} commit(s)`);
  let syncCalled = 0;
  const done = await new Promise<boolean>((resolve) => {
    const fast = map.beginWriteCb(200, 200, (err) => { syncCalled++; resolve(!err); });
    t.equal(fast, false, 'cold region: callback follows');
  });
  t.ok(done);
  t.equal(map.beginWriteCb(200, 200, () => { syncCalled++; }), true, 'already marked: immediate, no callback');
  t.equal(syncCalled, 1);
  await t.rejects(map.setAll(CELL_CLEAN), { code: 'STATEMAP_ERR_BUSY' }, 'gmdclean refused with writes in flight');
  for (let i = 0; i < 64; i++) map.endWrite(i, i, 'both');
  map.endWrite(200, 200, 'both');
  map.endWrite(200, 200, 'both');
  await map.setAll(CELL_STALE);
  t.equal(map.counts().stale, map.regionCount);
  await map.setAll(CELL_CLEAN);
  t.ok(map.isClean());
  await t.rejects(map.setAll(3), { code: 'STATEMAP_ERR_INVALID' });
  await map.close();
  await t.rejects(map.beginWrite(0, 0), { code: 'STATEMAP_ERR_CLOSED' });
  const cbErr = await new Promise<Error | undefined>((resolve) => {
    t.equal(map.beginWriteCb(0, 0, resolve), false, 'callback form reports the error');
  });
  t.match(cbErr, { code: 'STATEMAP_ERR_CLOSED' }, 'through the callback');
  await t.rejects(map.markStale(0, 0), { code: 'STATEMAP_ERR_CLOSED' });
  t.throws(() => map.endWrite(0, 99999, 'both'), { code: 'STATEMAP_ERR_INVALID' });
});

t.test('orWith: unify and local takeover', async (t) => {
  const dir = setup(t);
  const a = await StateMap.create(join(dir, 'a.map'), ID);
  const b = await StateMap.create(join(dir, 'b.map'), { ...ID, gmdName: 'data10gmd' });
  await a.markStale(1, 2);
  await b.markStale(2, 3);
  await b.beginWrite(9, 9); // in flight on the failed machine: "may differ"
  await a.orWith(b);
  t.same(a.dirtyRegions(), [1, 2, 3, 9]);
  const arr = new Uint8Array(a.regionCount);
  arr[20] = 0x3;
  await a.orWith(arr);
  t.equal(a.cell(20), CELL_STALE);
  await t.rejects(a.orWith(new Uint8Array(5)), { code: 'STATEMAP_ERR_MISMATCH' });
  const badCells = new Uint8Array(a.regionCount); badCells[0] = 0x9;
  await t.rejects(a.orWith(badCells), { code: 'STATEMAP_ERR_INVALID' });
  const c = await StateMap.create(join(dir, 'c.map'), { ...ID, deviceSize: ID.deviceSize * 2 });
  await t.rejects(a.orWith(c), { code: 'STATEMAP_ERR_MISMATCH' });
  b.endWrite(9, 9, 'both');
  // seed §2.2 / §8.3.5: merge, then the other map is cleared.
  await mergeAndClear(a, b);
  t.ok(b.isClean());
  t.same(a.dirtyRegions(), [1, 2, 3, 9, 20]);
  await Promise.all([a.close(), b.close(), c.close()]);
});

t.test('refusals: missing, existing, locked, mismatched, corrupt, truncated', async (t) => {
  const dir = setup(t);
  const path = join(dir, 'r.map');
  await t.rejects(StateMap.open(path), { code: 'STATEMAP_ERR_NOT_FOUND' });
  const map = await StateMap.create(path, ID);
  await t.rejects(StateMap.create(path, ID), { code: 'STATEMAP_ERR_EXISTS' });
  await t.rejects(StateMap.open(path), { code: 'STATEMAP_ERR_LOCKED', message: /in use by process/ });
  await map.close();
  // Stale locks: a dead owner, or a live pid whose start time differs (the pid was reused).
  writeFileSync(`${path}.lock`, '4194303 12345\n');
  await (await StateMap.open(path)).close();
  writeFileSync(`${path}.lock`, `${process.pid} 1\n`);
  await (await StateMap.open(path)).close();
  writeFileSync(`${path}.lock`, `${process.pid}\n`);
  await t.rejects(StateMap.open(path), { code: 'STATEMAP_ERR_LOCKED' }, 'a live owner without a start time is respected');
  unlinkSync(`${path}.lock`);

  await t.rejects(StateMap.open(path, { gmdName: 'other' }), { code: 'STATEMAP_ERR_MISMATCH', message: /GMD name 'data10gmd' \(expected 'other'\)/ });
  await t.rejects(StateMap.open(path, { minor: 11 }), { code: 'STATEMAP_ERR_MISMATCH' });
  await t.rejects(StateMap.open(path, { deviceSize: 1 }), { code: 'STATEMAP_ERR_MISMATCH' });
  await t.rejects(StateMap.open(path, { regionSize: 65536 }), { code: 'STATEMAP_ERR_MISMATCH' });

  const good = readFileSync(path);
  // One header slot damaged: the other (older) one is used.
  const oneBad = Buffer.from(good); oneBad[4096 + 100] ^= 0xff; oneBad[100] ^= 0x00;
  writeFileSync(path, oneBad);
  const m2 = await StateMap.open(path, ID);
  await m2.close();
  // Both slots damaged: refused.
  const bothBad = readFileSync(path); bothBad[95] ^= 0x01; bothBad[4096 + 95] ^= 0x01;
  writeFileSync(path, bothBad);
  await t.rejects(StateMap.open(path), { code: 'STATEMAP_ERR_CORRUPT', message: /checksum/ });
  await t.rejects(readStateMapFile(path), { code: 'STATEMAP_ERR_CORRUPT' });
  writeFileSync(path, Buffer.alloc(20000));
  await t.rejects(StateMap.open(path), { code: 'STATEMAP_ERR_CORRUPT', message: /not a georm state map/ });
  writeFileSync(path, good);
  truncateSync(path, 8192 + 10);
  await t.rejects(StateMap.open(path), { code: 'STATEMAP_ERR_CORRUPT', message: /truncated/ });
  truncateSync(path, 100);
  await t.rejects(StateMap.open(path), { code: 'STATEMAP_ERR_CORRUPT', message: /truncated/ });
  const badCell = Buffer.from(good); badCell[8192 + 3] = 0x9a;
  writeFileSync(path, badCell);
  await t.rejects(StateMap.open(path), { code: 'STATEMAP_ERR_CORRUPT', message: /region 6 has undefined cell value 0xa/ });
  t.equal(statSync(path).size, good.length);
  t.ok(new StateMapError('STATEMAP_ERR_IO', 'x') instanceof Error);
});

t.test('invalid identities are refused at create', async (t) => {
  const dir = setup(t);
  for (const bad of [
    { ...ID, gmdName: '' }, { ...ID, gmdName: 'x'.repeat(200) }, { ...ID, minor: 1024 }, { ...ID, deviceSize: 0 },
    { ...ID, regionSize: 3000 }, { ...ID, regionSize: 256 },
  ]) {
    await t.rejects(StateMap.create(join(dir, 'bad.map'), bad), { code: 'STATEMAP_ERR_INVALID' });
  }
});

t.test('no 32 GB limit: a 2 TiB device', async (t) => {
  const path = join(setup(t), 'big.map');
  const map = await StateMap.create(path, { gmdName: 'big', minor: 1, deviceSize: 2 * 1024 ** 4, regionSize: 32 * 1024 });
  t.equal(map.regionCount, 64 * 1024 * 1024);
  await map.beginWrite(map.regionCount - 1, map.regionCount - 1);
  map.endWrite(map.regionCount - 1, map.regionCount - 1, 'local-only');
  t.same(map.dirtyRegions(), [map.regionCount - 1]);
  await map.close();
  t.equal((await readStateMapFile(path)).cells[map.regionCount - 1], CELL_STALE);
});

t.test('resizeStateMap: the map follows a grown or shrunk device', async (t) => {
  const path = join(setup(t), 'rs.map');
  const small = { gmdName: 'rs', minor: 2, deviceSize: 100 * 32768, regionSize: 32768 };
  const map = await StateMap.create(path, small);
  await map.markStale(10, 10);
  await t.rejects(resizeStateMap(path, 200 * 32768, 'stale'), { code: 'STATEMAP_ERR_LOCKED' }, 'not while open');
  await map.close();
  await resizeStateMap(path, 200 * 32768, 'stale');
  let snap = await readStateMapFile(path, { ...small, deviceSize: 200 * 32768 });
  t.equal(snap.cells.length, 200);
  t.equal(snap.cells[10], CELL_STALE, 'old cells kept');
  t.equal(snap.cells[50], CELL_CLEAN);
  t.ok(snap.cells.subarray(100).every((v) => v === CELL_STALE), 'grown part stale on the primary');
  await resizeStateMap(path, 150 * 32768 + 512, 'clean');
  snap = await readStateMapFile(path);
  t.equal(snap.cells.length, 151, 'shrunk (partial last region counts)');
  t.equal(snap.identity.deviceSize, 150 * 32768 + 512);
  await resizeStateMap(path, 160 * 32768, 'clean');
  snap = await readStateMapFile(path);
  t.ok(snap.cells.subarray(151).every((v) => v === CELL_CLEAN), 'grown part clean on the secondary');
  const again = await StateMap.open(path, { deviceSize: 160 * 32768 });
  t.equal(again.regionCount, 160);
  await again.close();
  await t.rejects(resizeStateMap(path, 0, 'clean'), { code: 'STATEMAP_ERR_INVALID' });
  await t.rejects(resizeStateMap(join(setup(t), 'none.map'), 1 << 20, 'clean'), { code: 'STATEMAP_ERR_NOT_FOUND' });
});

t.test('a map that cannot be written refuses further writes (never issues one unmarked)', async (t) => {
  const dir = setup(t);
  await t.rejects(StateMap.create(join(dir, 'no/such/dir.map'), ID), { code: 'STATEMAP_ERR_NOT_FOUND', message: /directory .* does not exist/ });
  const map = await StateMap.create(join(dir, 'io.map'), ID, { activityLogRegions: 0 });
  // Put /dev/full under its file descriptor: every later write of the map fails with ENOSPC.
  // (The fd number is refilled at once, so no other file can ever receive the map's writes.)
  const fd = (map as unknown as { fh: { fd: number } }).fh.fd;
  closeSync(fd);
  const extra: number[] = [];
  for (let n = openSync('/dev/full', 'w'); ; n = openSync('/dev/full', 'w')) {
    if (n === fd) break;
    extra.push(n);
    if (n > fd + 64) throw new Error('could not refill the descriptor');
  }
  t.teardown(() => { for (const n of extra) closeSync(n); });
  await t.rejects(map.beginWrite(1, 1), { code: 'STATEMAP_ERR_IO', message: /cannot be written: .*(ENOSPC|EINVAL)/ });
  await t.rejects(map.beginWrite(2, 2), { code: 'STATEMAP_ERR_IO' }, 'and stays failed');
  await t.rejects(map.flush(), { code: 'STATEMAP_ERR_IO' });
  await map.close(); // closes the /dev/full descriptor
});

t.test('counts, isClean and nextDirty stay equal to a full scan under random operations', async (t) => {
  const path = join(setup(t), 'prop.map');
  const map = await StateMap.create(path, { gmdName: 'prop', minor: 0, deviceSize: 37 * 4096, regionSize: 4096 }, { activityLogRegions: 4 });
  const open: Array<[number, number]> = [];
  let bad = 0;
  for (let i = 0; i < 3000; i++) {
    const op = Math.random();
    const a = Math.floor(Math.random() * 37);
    const b = Math.min(36, a + Math.floor(Math.random() * 3));
    if (op < 0.35) { await map.beginWrite(a, b); open.push([a, b]); }
    else if (op < 0.7 && open.length) {
      const [x, y] = open.splice(Math.floor(Math.random() * open.length), 1)[0]!;
      map.endWrite(x, y, Math.random() < 0.8 ? 'both' : 'local-only');
    } else if (op < 0.75) await map.markStale(a, b);
    else map.cleanRegion(a);
    const cells = map.cells();
    const stale = cells.filter((v) => v === CELL_STALE).length;
    const clean = cells.filter((v) => v === CELL_CLEAN).length;
    const want = { regions: 37, clean, inconsistent: 37 - clean - stale, stale };
    const dirty = [...cells].map((v, r) => (v ? r : -1)).filter((r) => r >= 0);
    const from = Math.floor(Math.random() * 40);
    if (JSON.stringify(map.counts()) !== JSON.stringify(want) || map.isClean() !== (clean === 37)
      || JSON.stringify(map.dirtyRegions()) !== JSON.stringify(dirty) || map.nextDirty(from) !== (dirty.find((r) => r >= from) ?? -1)) bad++;
  }
  t.equal(bad, 0, '3000 random operations');
  for (const [x, y] of open) map.endWrite(x, y, 'both');
  await map.close();
});

t.test('many writes in flight on one region (count beyond the 6-bit field)', async (t) => {
  const map = await StateMap.create(join(setup(t), 'many.map'), ID, { activityLogRegions: 0 });
  await Promise.all(Array.from({ length: 200 }, () => map.beginWrite(5, 6)));
  t.equal(map.cell(5), 7, 'saturates at 0x7');
  t.equal(map.stats().inflightRegions, 2);
  await t.rejects(map.setAll(CELL_CLEAN), { code: 'STATEMAP_ERR_BUSY', message: /2 regions have writes in flight/ });
  for (let i = 0; i < 195; i++) map.endWrite(5, 6, 'both');
  t.equal(map.cell(5), 5, 'five left: 0x5');
  map.cleanRegion(6); // resync cannot clean a region with writes in flight
  t.equal(map.cell(6), 5);
  for (let i = 0; i < 5; i++) map.endWrite(5, 6, 'both');
  t.equal(map.cell(5), CELL_CLEAN);
  t.equal(map.stats().inflightRegions, 0);
  map.endWrite(5, 5, 'both'); // one too many is harmless
  t.equal(map.cell(5), CELL_CLEAN);
  await map.close();
});
