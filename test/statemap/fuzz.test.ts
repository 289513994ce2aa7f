import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/env.js';
import { StateMap, StateMapError, readStateMapFile, dumpStateMap, parseDump, CELL_STALE } from '../../src/statemap/index.js';

/** Deterministic PRNG so a failure can be replayed from the seed printed in the assertion. */
function rng(seed: number) {
  let s = seed >>> 0;
  return () => { s = (s + 0x6d2b79f5) >>> 0; let x = s; x = Math.imul(x ^ (x >>> 15), x | 1); x ^= x + Math.imul(x ^ (x >>> 7), x | 61); return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32; };
}

function mutate(buf: Buffer, rand: () => number): Buffer {
  const out = Buffer.from(buf);
  const kind = Math.floor(rand() * 4);
  if (kind === 0) { // flip bytes anywhere
    for (let i = 0, n = 1 + Math.floor(rand() * 8); i < n; i++) out[Math.floor(rand() * out.length)] = Math.floor(rand() * 256);
    return out;
  }
  if (kind === 1) return out.subarray(0, Math.floor(rand() * out.length)); // truncate
  if (kind === 2) { // flip in the header slots only (where the checksums guard)
    for (let i = 0, n = 1 + Math.floor(rand() * 4); i < n; i++) out[Math.floor(rand() * 8192)] ^= 1 << Math.floor(rand() * 8);
    return out;
  }
  const junk = Buffer.alloc(Math.floor(rand() * 20000)); // random bytes
  for (let i = 0; i < junk.length; i++) junk[i] = Math.floor(rand() * 256);
  return junk;
}

t.test('map loader: mutated files are loaded consistently or refused with StateMapError', async (t) => {
  const { dir, cleanup } = tempDir('georm-fuzz-');
  t.teardown(cleanup);
  const path = join(dir, 'f.map');
  const map = await StateMap.create(path, { gmdName: 'fuzz', minor: 7, deviceSize: 3 * 1024 * 1024, regionSize: 4096 });
  await map.markStale(10, 20);
  await map.close();
  const good = readFileSync(path);
  let refused = 0, loaded = 0, other = 0;
  const seed = Date.now() & 0xffff;
  const rand = rng(seed);
  for (let i = 0; i < 300; i++) {
    writeFileSync(path, mutate(good, rand));
    try {
      const snap = await readStateMapFile(path);
      // Whatever loads must be self-consistent: defined cell values only, identity intact.
      if (snap.cells.some((v) => v > 7 && v !== CELL_STALE)) other++;
      if (snap.identity.gmdName !== 'fuzz' || snap.identity.minor !== 7) other++;
      const m = await StateMap.open(path);
      await m.close();
      loaded++;
    } catch (e) {
      if (e instanceof StateMapError && /CORRUPT/.test(e.code)) refused++;
      else { other++; t.comment(`seed ${seed} iteration ${i}: ${String(e)}`); }
    }
  }
  t.equal(other, 0, `seed ${seed}: no crash, no undefined cells, no foreign error (${loaded} loaded, ${refused} refused)`);
  t.ok(refused > 0 && loaded > 0, 'both outcomes seen');
});

t.test('dump parser: mutated dumps are parsed to the original or refused with StateMapError', async (t) => {
  const cells = new Uint8Array(500);
  cells.fill(CELL_STALE, 3, 40); cells[100] = 2; cells.fill(CELL_STALE, 400, 500);
  const src = { identity: { gmdName: 'fuzz', minor: 7, deviceSize: 500 * 4096, regionSize: 4096 }, generation: 99n, cells };
  const seed = Date.now() & 0xffff;
  const rand = rng(seed);
  let other = 0, refused = 0, same = 0;
  for (const format of ['text', 'json'] as const) {
    const good = Buffer.from(dumpStateMap(src, format));
    for (let i = 0; i < 500; i++) {
      const bad = mutate(good, rand).toString('latin1');
      try {
        const p = parseDump(bad);
        // The sha256 over all cells means a parse that succeeds yields exactly the original cells.
        if (Buffer.compare(Buffer.from(p.cells), Buffer.from(cells)) === 0) same++; else other++;
      } catch (e) {
        if (e instanceof StateMapError && e.code === 'STATEMAP_ERR_CORRUPT') refused++;
        else { other++; t.comment(`seed ${seed} ${format} ${i}: ${String(e)}`); }
      }
    }
  }
  t.equal(other, 0, `seed ${seed}: ${refused} refused, ${same} parsed to the original cells`);
});
