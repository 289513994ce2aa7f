import t, { type Test } from 'tap';
import { once } from 'node:events';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestCluster } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { missingTools, nbdshEnv } from '../helpers/env.js';
import { newHistory, readLog, seqs, checkAcked, startWriter, countLog, waitForLog } from './seqlog.js';
import { stopProcess } from '../../src/util/process.js';

/**
 * What the primary may credit a secondary with while that secondary cannot act: its `gmd run`
 * process is frozen with SIGSTOP, so it receives nothing, writes nothing and answers nothing, yet
 * the primary only learns it is gone after the Promote Failure Timeout. That makes the gap between
 * "sent to the peer" and "the peer has it" as wide as the test wants, instead of the microseconds a
 * kill -9 under load rarely lands in (a kill -9 keeps the page cache, so only the secondary's volume
 * can show a write the primary acknowledged too early).
 *
 *  - DESIGN §4 rule 1, sync/MWC: a write is acknowledged only once the peer has it. While the
 *    secondary is frozen no write is acknowledged, and after kill -9 of the primary the frozen
 *    secondary's volume, copied at that instant, holds every acknowledged write.
 *  - The clean gate under an application FLUSH (src/gmd/clean-gate.ts): regions are cleaned only
 *    when the FLUSH reached both volumes. A FLUSH the frozen peer never confirms cleans nothing; when
 *    the peer is then lost, those regions turn stale (they travel again on rejoin).
 */
process.env.GEORM_GMD_FLUSH_MS = '600000'; // the gate's own periodic flush stays out of the test's time

const REGION = 32768;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Freezes machine m's `gmd run` process; the teardown lets it run again so that cleanup can end it. */
function freeze(t: Test, c: TestCluster, m: string): void {
  const pid = c.procs.get(m)!.pid!;
  process.kill(pid, 'SIGSTOP');
  t.teardown(() => { try { process.kill(pid, 'SIGCONT'); } catch { /* already gone */ } });
}

const skip = missingTools('nbdsh', 'python3');

for (const mode of ['sync', 'mwc'] as const) {
  t.test(`${mode}: no write is acknowledged while the secondary is frozen; its volume at the primary's kill -9 holds every acknowledged write`, { skip }, async (t) => {
    // A long PFT: the frozen secondary stays the active peer for the whole test.
    const c = await TestCluster.create({ mode, size: 8 * 1024 * 1024, pft: 30 });
    t.teardown(() => c.cleanup());
    await c.up();
    await c.waitInSync();
    const h = newHistory();

    // Writes acknowledged while the secondary runs: a baseline that must be on its volume too.
    const log1 = join(c.dir, 'before.log');
    const w1 = startWriter(c.uri, log1, h, 200, 11);
    if (w1.exitCode === null && w1.signalCode === null) await once(w1, 'exit');
    await readLog(log1, h);
    t.equal(await countLog(log1, 'A'), 200, 'baseline: 200 writes acknowledged with the secondary running');

    freeze(t, c, 'beta');
    const log2 = join(c.dir, 'frozen.log');
    const before = h.writes.length;
    const w2 = startWriter(c.uri, log2, h, 1000000, 12);
    t.teardown(() => stopProcess(w2));
    // The first write is issued (the writer is connected and running); then give the primary time
    // to acknowledge writes it should not.
    await waitForLog(log2, 'W', 1);
    await sleep(2000);
    const issued = await countLog(log2, 'W');
    const acked = await countLog(log2, 'A');
    t.ok(issued >= 1, `the writer issued a write while the secondary was frozen (${issued})`);
    t.equal(acked, 0, `${mode}: no write acknowledged while the secondary was frozen (it cannot have any of them)`);

    // The primary dies; the secondary's volume is copied as it is at that instant, before it may
    // run again and apply anything still on its way.
    await c.kill9('alpha');
    await stopProcess(w2);
    await readLog(log2, h);
    const snapshot = join(c.dir, 'beta-at-crash.img');
    await copyFile(c.vol.beta!, snapshot);
    t.comment(`${h.writes.length - before} writes issued while frozen`);
    checkAcked(t, await seqs(snapshot), h, `${mode}: frozen secondary's volume at the primary's kill -9`);
  });
}

/** Plain NBD writes through libnbd (no FUA, no FLUSH: nbdsh sends none unless asked). */
const nbdWrites = (uri: string, regions: number[], fill: number) => runCmd('nbdsh', ['-u', uri, '-c',
  regions.map((r) => `h.pwrite(bytes([${fill}]) * 4096, ${r * REGION + 8192})`).join('\n')], { env: nbdshEnv(), timeoutMs: 60000 });

for (const mode of ['sync', 'mwc', 'async'] as const) {
  t.test(`${mode}: a FLUSH the frozen secondary never confirms cleans nothing; the regions turn stale when it is lost`, { skip }, async (t) => {
    const c = await TestCluster.create({ mode, size: 8 * 1024 * 1024, pft: 6 });
    t.teardown(() => c.cleanup());
    await c.up();
    await c.waitInSync();
    const written = [2, 9, 40];
    t.equal((await nbdWrites(c.uri, written, 0x3c)).code, 0, 'plain writes acknowledged');
    await c.waitFor('alpha', (s) => s.map?.inconsistent === written.length && s.stats.asyncInflightBytes === 0,
      'the writes done on both sides, not yet flushed', 20000);

    freeze(t, c, 'beta');
    // The FLUSH reaches the primary's volume at once; the frozen secondary can never answer it.
    const flush = runCmd('nbdsh', ['-u', c.uri, '-c', 'h.flush()'], { env: nbdshEnv(), timeoutMs: 60000 });
    // Give the local fdatasync ample time; any region cleaned meanwhile is the bug.
    let least = written.length;
    for (let i = 0; i < 30; i++) {
      await sleep(100);
      least = Math.min(least, (await c.status('alpha')).map!.inconsistent);
    }
    t.equal(least, written.length, `${mode}: the ${written.length} regions stay in flight (unclean) while the frozen secondary cannot confirm the FLUSH`);

    await c.kill9('beta');
    const lost = await c.waitFor('alpha', (s) => !s.peers.some((p) => p.active), 'the primary dropped the lost secondary', 30000);
    await c.waitFor('alpha', (s) => s.map!.inconsistent === 0, 'nothing left in flight', 10000).catch(() => undefined);
    const s = await c.status('alpha');
    t.equal(s.map!.stale, written.length, `${mode}: the regions written before the unconfirmed FLUSH are stale once the secondary is lost (at the drop: ${lost.map!.stale})`);
    t.equal(s.map!.inconsistent, 0, 'none left in flight');
    await flush;
  });
}
