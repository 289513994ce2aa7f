import t from 'tap';
import { open } from 'node:fs/promises';
import { TestCluster, identical } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { missingTools, nbdshEnv } from '../helpers/env.js';

/**
 * Flush-gated cleaning (src/gmd/clean-gate.ts, DESIGN §4 rules 1-2 under power loss). A write both
 * sides acknowledged may still be only in the secondary's page cache; a power cut there would lose
 * it. So the primary cleans a region only after both volumes were flushed following its writes,
 * and a secondary that drops before that gets the writes again on rejoin.
 *
 * A kill -9 keeps the page cache, so it cannot lose data here; what this test checks is the
 * bookkeeping that protects against the power cut: which regions the primary still counts as
 * unconfirmed, and which travel again. The gate's own periodic flush is pushed out of the test's
 * time (GEORM_GMD_FLUSH_MS) so that only application flushes count. (test/vm/ power-cuts a real
 * machine.)
 */
process.env.GEORM_GMD_FLUSH_MS = '600000';

const REGION = 32768;
/** Plain NBD writes through libnbd: no FUA, and no FLUSH before disconnecting (qemu-io would send one). */
const nbdWrites = (uri: string, blocks: number[], fill: number, thenFlush = false) => runCmd('nbdsh', ['-u', uri, '-c',
  blocks.map((r) => `h.pwrite(bytes([${fill}]) * 4096, ${r * REGION + 8192})`).join('\n') + (thenFlush ? '\nh.flush()' : '')],
  { env: nbdshEnv(), timeoutMs: 60000 });

for (const mode of ['mwc', 'sync', 'async'] as const) {
  t.test(`${mode}: writes the secondary acknowledged but never flushed travel again when it drops; a FLUSH makes them clean`, {
    skip: missingTools('nbdsh', 'cmp'),
  }, async (t) => {
    const c = await TestCluster.create({ mode, size: 8 * 1024 * 1024 });
    t.teardown(() => c.cleanup());
    await c.up();
    await c.waitInSync();
    const unflushed = [2, 9, 10, 40, 200];
    t.equal((await nbdWrites(c.uri, unflushed, 0x5a)).code, 0, 'plain writes acknowledged');
    // Done on both sides (async: the secondary has answered), but no flush yet: not clean.
    const s1 = await c.waitFor('alpha', (s) => s.map?.inconsistent === unflushed.length && (mode !== 'async' || s.stats.asyncInflightBytes === 0),
      'writes done, regions still unconfirmed', 20000);
    t.equal(s1.map!.stale, 0, 'nothing stale while the peer is up');

    const flushed = [100, 101, 150];
    t.equal((await nbdWrites(c.uri, flushed, 0x6b)).code, 0, 'more plain writes');
    // A FLUSH covers writes done on both sides before it; in async the remote copies finish later,
    // so wait for them (a write whose copy is still travelling waits for the next flush).
    await c.waitFor('alpha', (s) => s.map?.inconsistent === unflushed.length + flushed.length && s.stats.asyncInflightBytes === 0,
      'remote copies done', 20000);
    t.equal((await nbdWrites(c.uri, [], 0, true)).code, 0, 'FLUSH acknowledged');
    const s2 = await c.waitFor('alpha', (s) => s.map?.inconsistent === 0, 'the FLUSH reached both volumes: every region clean', 20000);
    t.equal(s2.map!.stale, 0);

    const more = [3, 4, 120];
    t.equal((await nbdWrites(c.uri, more, 0x7c)).code, 0, 'more plain writes');
    await c.waitFor('alpha', (s) => s.map?.inconsistent === more.length && (mode !== 'async' || s.stats.asyncInflightBytes === 0), 'unconfirmed again', 20000);
    // The secondary dies before anything flushed its volume: those regions must become stale.
    await c.kill9('beta');
    const s3 = await c.waitFor('alpha', (s) => s.map?.stale === more.length, 'unconfirmed regions marked stale when the peer went', 30000);
    t.equal(s3.map!.inconsistent, 0, 'none left in flight');
    await c.run('beta');
    await c.start('beta');
    await c.waitInSync();
    const after = await c.waitFor('alpha', (s) => !!s.resync?.complete, 'resync complete', 30000);
    t.equal(after.stats.resyncBytesSent, more.length * REGION, `exactly the ${more.length} unconfirmed regions travelled again`);
    await c.terminate('alpha');
    await c.terminate('beta');
    t.ok((await identical(c.vol.alpha!, c.vol.beta!)).same, 'volumes identical');
    const fh = await open(c.vol.beta!, 'r');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, more[0]! * REGION + 8192);
    await fh.close();
    t.equal(b[0], 0x7c, 'the secondary holds the re-sent write');
  });
}
