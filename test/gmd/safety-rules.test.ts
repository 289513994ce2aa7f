/**
 * DESIGN §4 rules that had no test catching their violation (see docs/safety.md):
 * rule 3 push direction by content, rule 4 "modes / minors differ", rule 6 "an async GMD never
 * lets both sides write", rule 7 "unify previews before it changes" (map files byte-identical).
 */
import t from 'tap';
import { readFile, writeFile, rm, open } from 'node:fs/promises';
import { TestCluster, sha256File, identical } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { missingTools } from '../helpers/env.js';

const qio = (uri: string, ...cmds: string[]) => runCmd('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { timeoutMs: 30000 });
const REGION = 32768;

async function bytesAt(path: string, off: number, len: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try { const b = Buffer.alloc(len); await fh.read(b, 0, len, off); return b; } finally { await fh.close(); }
}

async function refusedCode(c: TestCluster, m: string): Promise<{ code?: string; message?: string } | null> {
  return c.start(m).then(() => null, (e: unknown) => e as { code: string; message: string });
}

t.test('rule 4: start refused when modes or minors differ', async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: 4 * 1024 * 1024 });
  t.teardown(() => c.cleanup());
  const base = await readFile(c.cfgPath, 'utf8');
  await c.run('alpha');
  // beta runs from its own copy of the file that says sync: definitions differ.
  const betaCfg = `${c.cfgPath}.beta.toml`;
  await writeFile(betaCfg, base.replace('mode = "mwc"', 'mode = "sync"'));
  await c.run('beta', ['--config', betaCfg]);
  t.equal((await c.status('beta')).mode, 'sync', 'beta really runs in sync mode');
  let e = await refusedCode(c, 'alpha');
  t.equal(e?.code, 'GMD_ERR_START_MISMATCH', 'modes differ: refused');
  t.match(e?.message ?? '', /mode mwc here, sync on beta.*identical/, `message: ${e?.message}`);
  t.equal((await c.status('alpha')).state, 'STOPPED', 'alpha stays STOPPED');

  // Minor 4 on beta; ports lowered by one so both files still give the same UDP ports (port + minor).
  await c.kill9('beta');
  await rm(c.map.beta!);
  await writeFile(betaCfg, base.replace('minor = 3', 'minor = 4').replace(/port = (\d+)/g, (_, p: string) => `port = ${Number(p) - 1}`));
  await c.run('beta', ['--config', betaCfg]);
  t.equal((await c.status('beta')).minor, 4);
  e = await refusedCode(c, 'alpha');
  t.equal(e?.code, 'GMD_ERR_START_MISMATCH', 'minors differ: refused');
  t.match(e?.message ?? '', /minor 3 here, 4 on beta/, `message: ${e?.message}`);
  // The other direction too: beta started alone, alpha (minor 3) is refused by beta's start check.
  e = await refusedCode(c, 'beta');
  t.equal(e?.code, 'GMD_ERR_START_MISMATCH', 'refused from the other side as well');
});

t.test('rule 4: a peer still DEFINED is not a mode mismatch (its attributes are not loaded yet)', async (t) => {
  // A DEFINED GMD answers hello with placeholder attributes (mode mwc); found by the VM power-loss
  // test, where the guest's primary is DEFINED for seconds while it opens its map.
  const c = await TestCluster.create({ mode: 'sync', size: 4 * 1024 * 1024 });
  t.teardown(() => c.cleanup());
  await c.run('alpha');
  await c.run('beta');
  await c.ctl('beta', 'unconfigure');
  t.equal((await c.status('beta')).state, 'DEFINED');
  const e = await refusedCode(c, 'alpha');
  t.not(e?.code, 'GMD_ERR_START_MISMATCH', `not refused as a mismatch (${e?.message})`);
  t.match(e?.code ?? '', /PEER_NOT_AVAILABLE/, 'refused because beta is not AVAILABLE, which is the real reason');
  await c.ctl('beta', 'configure');
  await c.start('alpha', ['beta']);
  t.equal((await c.status('alpha')).state, 'AVAILABLE', 'with beta down, alpha starts');
});

t.test('rule 3: after an outage, the stale (dirty) side\'s data reaches the clean side, never the reverse', { skip: missingTools('qemu-io', 'cmp') }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: 4 * 1024 * 1024 });
  t.teardown(() => c.cleanup());
  await c.up();
  t.equal((await qio(c.uri, 'write -P 0x11 0 4M')).code, 0);
  await c.waitInSync();
  await c.terminate('beta');
  t.equal((await qio(c.uri, `write -P 0xc3 ${5 * REGION} ${REGION}`, `write -P 0xc4 ${90 * REGION + 512} 512`)).code, 0);
  t.equal((await c.status('alpha')).map?.stale, 2, 'alpha (primary) is the dirty side');
  t.equal((await bytesAt(c.vol.beta!, 5 * REGION, 1))[0], 0x11, 'beta holds the old data');
  await c.run('beta');
  await c.start('beta');
  await c.waitInSync(30000);
  await c.terminate('alpha');
  await c.terminate('beta');
  // Content, not just equality: a pull from the clean side would make both 0x11.
  t.ok((await bytesAt(c.vol.beta!, 5 * REGION, REGION)).every((b) => b === 0xc3), 'new data arrived on the clean side');
  t.ok((await bytesAt(c.vol.alpha!, 5 * REGION, REGION)).every((b) => b === 0xc3), 'dirty side kept its data');
  t.equal((await bytesAt(c.vol.alpha!, 90 * REGION + 512, 1))[0], 0xc4);
  t.ok((await identical(c.vol.alpha!, c.vol.beta!)).same, 'identical');
});

t.test('rule 6: async GMD: the secondary refuses application writes (EPERM) and its volume is unchanged', { skip: missingTools('qemu-io') }, async (t) => {
  const c = await TestCluster.create({ mode: 'async', size: 4 * 1024 * 1024 });
  t.teardown(() => c.cleanup());
  await c.up();
  t.equal((await qio(c.uri, 'write -P 0x21 0 1M')).code, 0, 'primary takes writes');
  await c.waitInSync();
  const before = await sha256File(c.vol.beta!);
  const secUri = `nbd+unix:///${c.gmd}?socket=${c.nbdSock.beta}`;
  for (const cmd of ['write -P 0x66 0 4096', 'write -z 65536 4096', 'discard 131072 65536']) {
    const w = await qio(secUri, cmd);
    t.match(w.stdout + w.stderr, /Operation not permitted/, `secondary refuses '${cmd}'`);
  }
  t.ok((await c.status('beta')).stats.rejectedIo >= 3, 'counted as rejected I/O');
  t.equal(await sha256File(c.vol.beta!), before, 'secondary volume unchanged');
  // Roles of an async GMD change only in DEFINED, and a second primary is refused at start.
  await t.rejects(c.ctl('beta', 'set', { role: 'primary' }), { code: 'GMD_ERR_STATE' });
  // Role none (either side may write) is refused for async, also when set at run time in DEFINED.
  await c.terminate('beta');
  await c.run('beta');
  await c.ctl('beta', 'unconfigure');
  await c.ctl('beta', 'set', { role: 'none' });
  await t.rejects(c.ctl('beta', 'configure'), { code: 'GMD_ERR_BAD_REQUEST', message: /async GMD needs role primary or secondary/ });
  t.equal((await c.status('beta')).state, 'DEFINED', 'stays DEFINED');
  await c.ctl('beta', 'set', { role: 'secondary' });
  await c.ctl('beta', 'configure');
  t.equal((await c.status('beta')).state, 'STOPPED', 'configures again with a valid role (map file released on the refusal)');
});

t.test('rule 7: unify --preview leaves both state map files byte-identical', async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: 4 * 1024 * 1024, roles: ['none', 'none'] });
  t.teardown(() => c.cleanup());
  await c.run('alpha');
  await c.run('beta');
  await c.ctl('alpha', 'dirty');
  await c.ctl('beta', 'dirty');
  t.equal((await refusedCode(c, 'alpha'))?.code, 'GMD_ERR_START_DIVERGENCE', 'divergence detected at start');
  const before = [await sha256File(c.map.alpha!), await sha256File(c.map.beta!)];
  for (const [m, master] of [['alpha', 'alpha'], ['alpha', 'beta'], ['beta', 'alpha'], ['beta', 'beta']] as const) {
    const p = await c.ctl(m, 'unify', { master, preview: true }) as { cleared: string | null };
    t.equal(p.cleared, null, `preview on ${m} (master ${master}) clears nothing`);
  }
  // Give the maps' lazy flush timers a chance to write anything they (wrongly) would.
  await new Promise((r) => setTimeout(r, 1500));
  t.same([await sha256File(c.map.alpha!), await sha256File(c.map.beta!)], before, 'both map files byte-identical after previews');
  t.equal((await c.status('alpha')).map?.stale, (await c.status('alpha')).map?.regions);
  t.equal((await refusedCode(c, 'beta'))?.code, 'GMD_ERR_START_DIVERGENCE', 'still divergent: never resolved silently');
});

t.test('rule 1 (async): the data in flight to the secondary stays within HWM (+ the writes already admitted)', { skip: missingTools('fio', 'cmp') }, async (t) => {
  const HWM = 64 * 1024, BS = 64 * 1024, DEPTH = 8;
  const c = await TestCluster.create({ mode: 'async', size: 16 * 1024 * 1024, hwm: '64K' });
  t.teardown(() => c.cleanup());
  await c.up();
  const r = await runCmd('fio', ['--name=hwm', '--ioengine=nbd', `--uri=${c.uri}`, '--rw=write', `--bs=${BS}`, `--iodepth=${DEPTH}`,
    '--size=16M', '--loops=2', '--output-format=terse'], { timeoutMs: 60000 });
  t.equal(r.code, 0, `fio ${r.stderr.slice(-300)}`);
  const s = (await c.status('alpha')).stats;
  // Each of the DEPTH admitted requests may add BS before it sees the mark and waits like MWC.
  t.ok(s.hwmFallbacks > 0, `the bound was exercised (${s.hwmFallbacks} fallbacks to MWC behaviour, ${s.hwmWaits} waits)`);
  t.ok(s.asyncInflightMax <= HWM + DEPTH * BS, `max in flight ${s.asyncInflightMax} <= HWM ${HWM} + ${DEPTH} x ${BS}`);
  await c.waitInSync();
  await c.terminate('alpha');
  await c.terminate('beta');
  t.ok((await identical(c.vol.alpha!, c.vol.beta!)).same, 'identical');
});
