import t from 'tap';
import { join } from 'node:path';
import { tempDir } from '../helpers/env.js';
import {
  StateMap, readStateMapFile, dumpStateMap, parseDump, formatShowState, showStateExitCode, divergence, unifyPreview,
  CELL_STALE,
} from '../../src/statemap/index.js';

const ID = { gmdName: 'test', minor: 3, deviceSize: 64 * 32768, regionSize: 32768 };

t.test('dump and load back (text and JSON) from a real map file', async (t) => {
  const { dir, cleanup } = tempDir('georm-dump-');
  t.teardown(cleanup);
  const map = await StateMap.create(join(dir, 'm.map'), ID);
  await map.markStale(5, 9);
  await map.beginWrite(30, 30);
  for (const format of ['text', 'json'] as const) {
    const text = dumpStateMap(map, format, { machine: 'black' });
    const back = parseDump(text);
    t.same(back.identity, ID, `${format}: identity`);
    t.equal(back.generation, map.generation, `${format}: generation`);
    t.equal(back.machine, 'black');
    t.same([...back.cells], [...map.cells()], `${format}: cells round trip`);
  }
  map.endWrite(30, 30, 'both');
  const copy = await StateMap.create(join(dir, 'copy.map'), ID);
  await copy.loadCells(parseDump(dumpStateMap(map, 'text')).cells);
  t.same(copy.dirtyRegions(), [5, 6, 7, 8, 9]);
  await t.rejects(copy.loadCells(new Uint8Array(3)), { code: 'STATEMAP_ERR_MISMATCH' });
  const bad = new Uint8Array(copy.regionCount); bad[1] = 0xb;
  await t.rejects(copy.loadCells(bad), { code: 'STATEMAP_ERR_INVALID' });
  await map.close();
  await copy.close();
  const snap = await readStateMapFile(join(dir, 'm.map'));
  t.same(parseDump(dumpStateMap(snap, 'text')).cells, snap.cells, 'a snapshot dumps too');
});

t.test('parseDump refuses damaged dumps with the line', async (t) => {
  const cells = new Uint8Array(64); cells.fill(CELL_STALE, 10, 20);
  const good = dumpStateMap({ identity: ID, generation: 7n, cells }, 'text');
  const cases: Array<[string, RegExp]> = [
    ['', /empty dump/],
    ['hello\n', /:1: not a georm state map dump/],
    [good.replace('georm-statemap-dump 1', 'georm-statemap-dump 2'), /:1: unsupported dump version/],
    [good.replace('\nend\n', '\n'), /truncated/],
    [good.replace('run 10 10 0xf', 'run 10 11 0xf'), /sha256 .* does not match/],
    [good.replace('run 10 10 0xf', 'run 10 10 0x9'), /:8: run value 0x9 is not a non-clean cell value/],
    [good.replace('run 10 10 0xf', 'run 10 10 15'), /:8: a run is/],
    [good.replace('run 10 10 0xf', 'run 10 10 0x0'), /not a non-clean cell value/],
    [good.replace('run 10 10 0xf', 'run 60 10 0xf'), /outside/],
    [good.replace('run 10 10 0xf', 'run 10 5 0xf\nrun 12 5 0xf'), /overlaps/],
    [good.replace('minor 3', 'minor 3\nminor 4'), /:4: "minor" given twice/],
    [good.replace('minor 3', 'minor x'), /whole number/],
    [good.replace('minor 3', 'colour blue'), /unknown item "colour"/],
    [good.replace('regions 64', 'regions 65'), /does not match device size/],
    [good.replace('regions 64', 'regions 99999999999'), /does not match device size/],
    [good.replace('region_size 32768', 'region_size 1000'), /power of two/],
    [good.replace(/generation \S+/, 'generation 12'), /bad "generation"/],
    [good.replace(/sha256 \S+\n/, ''), /missing "sha256"/],
    [`${good}run 1 1 0xf\n`, /text after "end"/],
    ['{', /not valid JSON/],
    ['{"format":"nope"}', /not a georm state map dump/],
    ['{"format":"georm-statemap-dump","version":9}', /unsupported dump version/],
    ['{"format":"georm-statemap-dump","version":1,"runs":{}}', /"runs" must be an array/],
    ['[1]', /not a georm state map dump/],
    ['{"format":"georm-statemap-dump","version":1,"runs":[],"gmd":"x","minor":1,"deviceSize":1,"regionSize":512,"regions":1,"generation":"0x1","sha256":"00"}', /bad "sha256"/],
  ];
  for (const [text, re] of cases) t.throws(() => parseDump(text, 'map.dump'), { code: 'STATEMAP_ERR_CORRUPT', message: re }, re.source);
  const json = JSON.parse(dumpStateMap({ identity: ID, generation: 7n, cells }, 'json')) as { runs: unknown[] };
  json.runs[0] = [1, 2];
  t.throws(() => parseDump(JSON.stringify(json)), { code: 'STATEMAP_ERR_CORRUPT', message: /runs\[0\]: a run is/ });
});

t.test('formatShowState: the seed display with * run-length', async (t) => {
  const all = new Uint8Array(1048576).fill(CELL_STALE);
  t.equal(formatShowState(all, { machine: 'alpha', gmdName: 'alpha20gmd', status: 'STOPPED' }), [
    'Point of View: Node alpha', '-----', 'Point of View GMD List:', '------', 'Name: alpha20gmd', 'Status: STOPPED',
    'State Map:', 'Cell     Value', '-------  -----', '0        0xf', '*', '1048576', ''].join('\n'));
  const m = new Uint8Array(10); m[4] = 0xf; m[5] = 0xf; m[9] = 0x2;
  t.equal(formatShowState(m), ['State Map:', 'Cell    Value', '------  -----', '0       0x0', '*', '4       0xf', '*',
    '6       0x0', '*', '9       0x2', '10', ''].join('\n'));
  const grouped = formatShowState(m, { cellsPerLine: 4 });
  t.match(grouped, /^0 +0x0 0x0 0x0 0x0$/m);
  t.match(grouped, /^8 +0x0 0x2$/m, 'a short last line');
  const other = new Uint8Array(10); other[0] = 0xf;
  const preview = formatShowState([m, other, unifyPreview(m, other)], { columns: ['black', 'blue', 'unified'] });
  t.match(preview, /^0 +0x0 +0xf +0xf$/m);
  t.match(preview, /^9 +0x2 +0x0 +0xf$/m);
  t.throws(() => formatShowState([m, new Uint8Array(3)]), RangeError);
  t.throws(() => unifyPreview(m, new Uint8Array(3)), RangeError);
  t.equal(formatShowState(new Uint8Array(0)).trim().split('\n').pop(), '0');
});

t.test('exit codes and divergence', async (t) => {
  const clean = new Uint8Array(8);
  const dirty = new Uint8Array(8); dirty[2] = 0xf;
  t.equal(showStateExitCode(clean), 0);
  t.equal(showStateExitCode(clean, dirty), 2, 'seed: 2 when a shown map is dirty');
  t.equal(divergence(clean, clean), 'clean');
  t.equal(divergence(dirty, clean), 'local-dirty');
  t.equal(divergence(clean, dirty), 'remote-dirty');
  t.equal(divergence(dirty, dirty), 'diverged');
});
