import t from 'tap';
import { open } from 'node:fs/promises';
import { TestCluster, identical } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { missingTools, needsRoot } from '../helpers/env.js';

const qio = (uri: string, ...cmds: string[]) => runCmd('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { timeoutMs: 60000 });
const REGION = 32768;

t.test('network down between namespaces: Promote Failure Timeout -> gmddown, stale marked; back -> only stale regions travel', { skip: needsRoot() || missingTools('qemu-io', 'ip', 'cmp') }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: 8 * 1024 * 1024, netns: true, pft: 2 });
  t.teardown(() => c.cleanup());
  await c.up();
  t.equal((await qio(c.uri, 'write -P 0x11 0 8M')).code, 0);
  await c.waitInSync();
  for (const k of [0, 1]) await runCmd('ip', ['-n', c.ns.alpha!, 'link', 'set', `${c.veth.alpha!.slice(0, -1)}${k}`, 'down']);
  const blocks = [3, 17, 18, 100, 201];   // regions; 17 and 18 adjacent
  const w = await qio(c.uri, ...blocks.map((r) => `write -P 0x${(r % 200 + 20).toString(16)} ${r * REGION + 4096} 4096`));
  t.equal(w.code, 0, 'writes complete while the network is down (after the Promote Failure Timeout)');
  const s = await c.waitFor('alpha', (s) => s.map?.stale === blocks.length, 'stale regions');
  t.notOk(s.peers[0]!.active, 'not mirroring');
  t.match(s.events.map((e) => e.message).join('\n'), /Promote Failure Timeout exceeded for beta: gmddown/, 'PFT turned into gmddown, logged');
  for (const k of [0, 1]) await runCmd('ip', ['-n', c.ns.alpha!, 'link', 'set', `${c.veth.alpha!.slice(0, -1)}${k}`, 'up']);
  // As in the seed, mirroring resumes when the secondary GMD is restarted.
  await c.ctl('beta', 'stop');
  await c.start('beta');
  await c.waitInSync();
  const after = await c.waitFor('alpha', (s) => !!s.resync?.complete, 'resync reported complete', 30000);
  t.equal(after.stats.resyncBytesSent, blocks.length * REGION, `only the ${blocks.length} stale regions travelled (${after.stats.resyncBytesSent} bytes)`);
  t.equal(after.resync?.complete, true, 'resync reported complete');
  await c.terminate('alpha');
  await c.terminate('beta');
  t.ok((await identical(c.vol.alpha!, c.vol.beta!)).same, 'identical');
});

t.test('secondary down, stale regions; resync (rate limited) concurrent with application writes loses neither', { skip: missingTools('qemu-io', 'cmp') }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: 32 * 1024 * 1024, rateLimit: '2M', syncRate: '64K' });
  t.teardown(() => c.cleanup());
  await c.up();
  t.equal((await qio(c.uri, 'write -P 0x22 0 32M')).code, 0);
  await c.waitInSync();
  await c.terminate('beta');
  const regions = Array.from({ length: 200 }, (_, i) => i * 5);
  for (let i = 0; i < regions.length; i += 50) {
    t.equal((await qio(c.uri, ...regions.slice(i, i + 50).map((r) => `write -P 0x${(0x30 + (r % 64)).toString(16)} ${r * REGION} 8192`))).code, 0);
  }
  t.equal((await c.status('alpha')).map?.stale, regions.length, 'stale marked while the secondary is down');
  await c.run('beta');
  await c.start('beta');
  const mid = await c.waitFor('alpha', (s) => !!s.resync && s.resync.doneBytes > 0 && !s.resync.complete, 'resync under way', 20000);
  t.ok(mid.resync!.percent > 0 && mid.resync!.percent < 100 && mid.resync!.leftBytes > 0, `progress: ${mid.resync!.percent.toFixed(1)}% ETA ${mid.resync!.etaSec}s`);
  // Application writes during the resync, into stale regions (not yet copied) and clean ones.
  const w = await qio(c.uri, 'write -P 0xe1 ' + (995 * REGION) + ' 32768', 'write -P 0xe2 ' + (2 * REGION) + ' 4096', 'write -P 0xe3 ' + (990 * REGION + 100) + ' 1000');
  t.equal(w.code, 0);
  await c.waitInSync();
  const st = await c.status('alpha');
  t.equal(st.stats.resyncBytesSent, regions.length * REGION, 'exactly the stale regions travelled');
  await c.terminate('alpha');
  await c.terminate('beta');
  t.ok((await identical(c.vol.alpha!, c.vol.beta!)).same, 'identical');
  const fh = await open(c.vol.beta!, 'r');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, 995 * REGION + 10);
  t.equal(b[0], 0xe1, 'the application write made during the resync is on the secondary');
  await fh.close();
});

t.test('initial synchronisation from the secondary (dirty there): the primary pulls, serving reads and writes meanwhile', { skip: missingTools('qemu-io', 'cmp') }, async (t) => {
  const c = await TestCluster.create({ mode: 'async', size: 16 * 1024 * 1024, rateLimit: '4M' });
  t.teardown(() => c.cleanup());
  // The data lives on beta's volume; seed §7.4: dirty on the side holding the data, then start.
  const fh = await open(c.vol.beta!, 'r+');
  await fh.write(Buffer.alloc(16 * 1024 * 1024, 0x77), 0, 16 * 1024 * 1024, 0);
  await fh.close();
  await c.run('alpha');
  await c.run('beta');
  await c.ctl('beta', 'dirty');
  await c.start('beta', ['alpha']);
  await c.start('alpha');
  const r = await qio(c.uri, `read -P 0x77 ${15 * 1024 * 1024} 65536`, `write -P 0x99 ${14 * 1024 * 1024} 4096`, `read -P 0x99 ${14 * 1024 * 1024} 4096`);
  t.equal(r.code, 0, `reads of not-yet-pulled regions see the secondary's data; writes land (${r.stdout.trim().split('\n').slice(-2).join(' ')})`);
  t.notMatch(r.stdout, /Pattern verification failed/);
  const s = await c.status('alpha');
  t.equal(s.resync?.direction, 'pull');
  await c.waitFor('beta', (s) => s.map?.stale === 0, 'beta map clean after pull', 60000);
  await c.waitFor('alpha', (s) => !!s.resync?.complete, 'pull complete', 60000);
  await c.terminate('alpha');
  await c.terminate('beta');
  t.ok((await identical(c.vol.alpha!, c.vol.beta!)).same, 'identical');
});

t.test('an interrupted resync resumes from the state map', { skip: missingTools('qemu-io', 'cmp') }, async (t) => {
  const c = await TestCluster.create({ mode: 'sync', size: 8 * 1024 * 1024, rateLimit: '1M', syncRate: '32K' });
  t.teardown(() => c.cleanup());
  await c.up();
  await c.terminate('beta');
  t.equal((await qio(c.uri, 'write -P 0x61 0 4M')).code, 0);
  const stale = (await c.status('alpha')).map!.stale;
  t.equal(stale, 128, '4 MiB stale');
  await c.run('beta');
  await c.start('beta');
  // Regions are cleaned only once a flush on beta made them durable there (batched): wait for some.
  const mid = await c.waitFor('alpha', (s) => (s.resync?.doneBytes ?? 0) >= 1024 * 1024 && s.map!.stale < stale, 'a quarter copied and some of it durable', 20000);
  await c.kill9('beta');   // interrupted
  const left = await c.waitFor('alpha', (s) => !s.peers[0]!.active, 'peer dropped', 20000);
  t.ok(left.map!.stale < stale && left.map!.stale > 0, `map records what is left (${left.map!.stale} of ${stale} regions)`);
  const sentBefore = left.stats.resyncBytesSent;
  await c.run('beta');
  await c.start('beta');
  await c.waitInSync();
  const done = await c.waitFor('alpha', (s) => !!s.resync?.complete, 'complete', 30000);
  t.ok(done.stats.resyncBytesSent - sentBefore <= left.map!.stale * REGION + 8 * REGION,
    `second run copied only what was left (${done.stats.resyncBytesSent - sentBefore} bytes; first run ${sentBefore})`);
  t.ok(mid.resync!.etaSec !== null, 'ETA reported');
  await c.terminate('alpha');
  await c.terminate('beta');
  t.ok((await identical(c.vol.alpha!, c.vol.beta!)).same, 'identical');
});
