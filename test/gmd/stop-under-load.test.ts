import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { TestCluster, identical } from './cluster.js';
import { missingTools } from '../helpers/env.js';
import type { GmdMode } from '../../src/gmd/protocol.js';

/**
 * An orderly stop of the secondary while the primary writes at full rate: stopgmd then ucfggmd
 * (the volume is closed), and the process's own exit (SIGTERM: stop, then unconfigure). The
 * secondary refuses the primary's writes once its stop began and closes its volume only after the
 * writes it had taken were done; the primary marks what it could not mirror stale. After restart
 * and resync the volumes are identical, and no write of the secondary failed on a closed volume.
 */
const SIZE = 16 * 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function load(uri: string, seconds: number): ChildProcess {
  return spawn('fio', ['--name=stop', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
    '--time_based', `--runtime=${seconds}`, '--end_fsync=1', '--output=/dev/null'], { stdio: 'ignore' });
}

async function exitCode(p: ChildProcess): Promise<number | null> {
  if (p.exitCode !== null || p.signalCode !== null) return p.exitCode;
  const [code] = await once(p, 'exit') as [number | null];
  return code;
}

for (const mode of (process.env.GMD_MODES?.split(',') ?? ['sync', 'mwc', 'async']) as GmdMode[]) {
  t.test(`${mode}: the secondary stopped and unconfigured, then terminated, while the primary writes; identical after resync`, {
    skip: missingTools('fio', 'cmp'),
  }, async (t) => {
    const c = await TestCluster.create({ mode, size: SIZE, hwm: '1M' });
    t.teardown(() => c.cleanup());
    await c.up();
    await c.waitInSync();
    const fio = load(c.uri, 6);
    t.teardown(() => { if (fio.exitCode === null) fio.kill('SIGKILL'); });

    const t0 = Date.now();
    const at = (what: string) => t.comment(`${what} at ${Date.now() - t0} ms`);
    await sleep(1000);
    const busy = await c.status('beta');
    t.ok(busy.stats.incomingWrites > 0, `beta applying the primary's writes (${busy.stats.incomingWrites} so far)`);
    await c.ctl('beta', 'stop');
    at('stopped');
    await c.ctl('beta', 'unconfigure');
    at('unconfigured');
    t.equal((await c.status('beta')).state, 'DEFINED', 'beta stopped and its volume closed under load');
    const dropped = await c.waitFor('alpha', (s) => !s.peers[0]!.active && (s.map?.stale ?? 0) > 0, 'alpha marks stale without beta', 20000);
    t.equal(dropped.state, 'AVAILABLE', 'alpha kept serving its application');
    await c.start('beta');

    await sleep(1500);
    // The process exit path: stop, then the volume closed by unconfigure, with the writes still coming.
    at('terminating');
    await c.terminate('beta');
    at('terminated');
    await c.waitFor('alpha', (s) => !s.peers[0]!.active, 'alpha notices beta left', 20000);
    await c.run('beta');
    await c.start('beta');

    at('restarted');
    t.equal(await exitCode(fio), 0, 'fio wrote throughout without an error');
    const after = await c.waitFor('alpha', (s) => s.peers[0]!.active && !!s.resync?.complete, 'resync after the rejoin complete', 60000);
    t.comment(`alpha: ${after.stats.remoteFailures} remote writes failed (refused or unanswered), ${after.map!.stale} regions stale now`);
    // In async a write into a region still stale when it began keeps that region stale when its
    // remote copy lands; one landing after the resync's last pass gets a follow-up resync at once
    // (no rejoin needed): waitInSync below sees every region clean with the peer still attached.
    at('fio done');
    await c.waitInSync();
    at('in sync');
    await c.terminate('alpha');
    await c.terminate('beta');
    t.notMatch(await readFile(c.logs.beta!, 'utf8'), /EBADF|NBD_ERR_BACKEND_CLOSED/, 'no write on beta met a closed volume');
    const same = await identical(c.vol.alpha!, c.vol.beta!);
    t.ok(same.same, `volumes identical ${same.detail}`);
  });
}
