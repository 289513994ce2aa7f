import t from 'tap';
import { TestCluster, identical } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { GEORM_BIN, missingTools } from '../helpers/env.js';
import { open } from 'node:fs/promises';

const qio = (uri: string, ...cmds: string[]) => runCmd('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri]);
const georm = (c: TestCluster, m: string, ...args: string[]) =>
  runCmd(process.execPath, [GEORM_BIN, ...args, '--config', c.cfgPath, '--machine', m]);

async function byteAt(path: string, off: number): Promise<number> {
  const fh = await open(path, 'r');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, off);
  await fh.close();
  return b[0]!;
}

t.test('divergence staged -> start refused -> unify preview -> unify -> resync -> identical', { skip: missingTools('qemu-io', 'cmp') }, async (t) => {
  // role none on both sides (sync/MWC under a cluster manager): either side may write.
  const c = await TestCluster.create({ mode: 'mwc', size: 8 * 1024 * 1024, roles: ['none', 'none'] });
  t.teardown(() => c.cleanup());
  await c.up();
  t.equal((await qio(c.uri, 'write -P 0x11 0 8M')).code, 0);
  await c.waitInSync();
  await c.terminate('alpha');
  await c.terminate('beta');

  // Each side runs alone (gmddown of the other) and is written independently.
  await c.run('alpha');
  await c.start('alpha', ['beta']);
  t.equal((await qio(c.uri, 'write -P 0xaa 320K 32K')).code, 0, 'alpha writes region 10 alone');
  await c.terminate('alpha');
  await c.run('beta');
  await c.start('beta', ['alpha']);
  t.equal((await qio(`nbd+unix:///${c.gmd}?socket=${c.nbdSock.beta}`, 'write -P 0xbb 640K 32K')).code, 0, 'beta writes region 20 alone');
  await c.terminate('beta');

  await c.run('alpha');
  await c.run('beta');
  const show = await georm(c, 'alpha', 'gmd_show_state', '-l', c.gmd);
  t.equal(show.code, 2, 'gmd_show_state exits 2');
  t.match(show.stdout, /10\s+0xf\s+0x0[\s\S]*20\s+0x0\s+0xf/, 'both maps shown, each dirty in its own region');
  const start = await c.start('alpha').then(() => null, (e: unknown) => e as { code: string });
  t.equal(start?.code, 'GMD_ERR_START_DIVERGENCE', 'start refused on divergence');
  const startB = await c.start('beta').then(() => null, (e: unknown) => e as { code: string });
  t.equal(startB?.code, 'GMD_ERR_START_DIVERGENCE', 'start refused on the other side too');

  const preview = await georm(c, 'beta', 'unify', c.gmd, '--master', 'alpha', '--preview', '--json');
  t.equal(preview.code, 2, 'preview exits 2 (the unified map is dirty)');
  const p = JSON.parse(preview.stdout) as { unified: { dirtyRegions: number[] } };
  t.same(p.unified.dirtyRegions, [10, 20], 'unified map = OR of both');
  t.equal((await c.status('beta')).map?.stale, 1, 'preview changed nothing');

  const unify = await georm(c, 'beta', 'gmd_update_state', '-U', '-d', 'alpha', '-l', c.gmd);
  t.equal(unify.code, 0, `unify applied: ${unify.stderr}`);
  t.match(unify.stdout, /Clearing test0gmd's state map on beta/);
  t.equal((await c.status('alpha')).map?.stale, 2, 'master holds the OR');
  t.equal((await c.status('beta')).map?.stale, 0, 'the other map is cleared');

  await c.start('alpha', ['beta']);
  await c.start('beta');
  await c.waitInSync(30000);
  const st = await c.status('alpha');
  t.equal(st.stats.resyncBytesSent, 2 * 32768, 'exactly the two unified regions travelled');
  await c.terminate('alpha');
  await c.terminate('beta');
  t.ok((await identical(c.vol.alpha!, c.vol.beta!)).same, 'volumes identical');
  t.equal(await byteAt(c.vol.beta!, 320 * 1024), 0xaa, "alpha's write kept");
  t.equal(await byteAt(c.vol.beta!, 640 * 1024), 0x11, "beta's divergent write replaced by the master's data");
});

t.test('local takeover: the failed machine\'s map is ORed in, then cleaned', async (t) => {
  const c = await TestCluster.create({ mode: 'sync', size: 4 * 1024 * 1024 });
  t.teardown(() => c.cleanup());
  await c.run('alpha');
  await c.ctl('alpha', 'dirty');
  await c.terminate('alpha');
  // "beta" plays the takeover machine here: it merges alpha's map file into its own.
  await c.run('beta');
  const r = await c.ctl('beta', 'takeover', { map: c.map.alpha }) as { map: { stale: number; regions: number } };
  t.equal(r.map.stale, r.map.regions, 'merged');
  await c.run('alpha');
  t.equal((await c.status('alpha')).map?.stale, 0, 'the failed machine\'s map was cleaned');
});
