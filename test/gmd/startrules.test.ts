import t, { type Test } from 'tap';
import { truncate, rm } from 'node:fs/promises';
import { TestCluster } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { GEORM_BIN, missingTools } from '../helpers/env.js';

/** Expects start on machine m to be refused with `code`, and the message to match `re`. */
async function refused(t: Test, c: TestCluster, m: string, code: string, re: RegExp, down: string[] = []) {
  const err = await c.start(m, down).then(() => null, (e: unknown) => e as { code: string; message: string });
  t.ok(err, `start on ${m} refused (${code})`);
  t.equal(err?.code, `GMD_ERR_START_${code}`, `rule ${code}`);
  t.match(err?.message ?? '', re, `message for ${code} says what to do: ${err?.message}`);
}

t.test('start rules (two machines): each refusal with its own message', { skip: missingTools('qemu-io') }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: 8 * 1024 * 1024 });
  t.teardown(() => c.cleanup());
  await c.run('alpha');
  await refused(t, c, 'alpha', 'PEER_UNREACHABLE', /beta is not reachable.*gmddown/);
  await c.run('beta');
  await refused(t, c, 'alpha', 'PEER_NOT_AVAILABLE', /beta is up but its GMD is STOPPED, not AVAILABLE.*gmddown/);

  // Attributes change only in DEFINED; make beta primary to trigger "both primary".
  await t.rejects(c.ctl('alpha', 'set', { role: 'primary' }), { code: 'GMD_ERR_STATE', message: /only be changed in the DEFINED state/ });
  await c.ctl('beta', 'unconfigure');
  t.equal((await c.status('beta')).state, 'DEFINED');
  await c.ctl('beta', 'set', { role: 'primary' });
  await c.ctl('beta', 'configure');
  await c.start('beta', ['alpha']);
  await refused(t, c, 'alpha', 'BOTH_PRIMARY', /beta is also primary/);
  await c.ctl('beta', 'stop');
  await c.ctl('beta', 'unconfigure');
  await c.ctl('beta', 'set', { role: 'secondary' });
  await c.ctl('beta', 'configure');

  // Local staleness while the peer is AVAILABLE.
  await c.start('beta', ['alpha']);
  await c.ctl('alpha', 'dirty');
  await refused(t, c, 'alpha', 'LOCAL_STALE', /beta is AVAILABLE and the local state map has \d+ dirty region/);

  // Divergence: both maps dirty; show-state exits 2.
  await c.ctl('beta', 'stop');
  await c.ctl('beta', 'dirty');
  await refused(t, c, 'alpha', 'DIVERGENCE', /data divergence.*unify/);
  const show = await runCmd(process.execPath, [GEORM_BIN, 'show-state', c.gmd, '--config', c.cfgPath, '--machine', 'alpha']);
  t.equal(show.code, 2, 'show-state exits 2 when a map is dirty');
  t.match(show.stdout, /Point of View: Node alpha[\s\S]*Cell\s+alpha\s+beta[\s\S]*0\s+0xf\s+0xf\s*\n\*/, 'seed-like display with * run-length');
  await c.ctl('alpha', 'clean');
  await c.ctl('beta', 'clean');

  // Sizes differ.
  await c.kill9('beta');
  await truncate(c.vol.beta!, 4 * 1024 * 1024);
  await c.run('beta');
  // The existing state map no longer matches the volume: refused, never guessed at.
  t.equal((await c.status('beta')).state, 'DEFINED', 'map/volume mismatch keeps beta DEFINED');
  t.match((await c.status('beta')).events.map((e) => e.message).join('\n'), /configure failed/);
  await c.kill9('beta');
  await rm(c.map.beta!);
  await c.run('beta');
  await refused(t, c, 'alpha', 'MISMATCH', /size 8388608 here, 4194304 on beta/);
  await c.kill9('beta');
  await truncate(c.vol.beta!, 8 * 1024 * 1024);
  await rm(c.map.beta!);
  await c.run('beta');

  // Normal start; the secondary refuses application I/O with EPERM, not a hang.
  await c.start('alpha', ['beta']);
  const started = await c.start('beta');
  t.match(started.message, /started successfully, mirroring to alpha/);
  const io = await runCmd('qemu-io', ['-f', 'raw', '-c', 'read 0 4096', `nbd+unix:///${c.gmd}?socket=${c.nbdSock.beta}`]);
  t.match(io.stdout + io.stderr, /Operation not permitted/, 'secondary: EPERM');
  const w = await runCmd('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 65536', c.uri]);
  t.equal(w.code, 0, 'primary takes writes');

  // gmddown on a peer that is in fact AVAILABLE stops it.
  await c.ctl('alpha', 'stop');
  t.equal((await c.status('beta')).state, 'AVAILABLE');
  const d = await c.ctl('alpha', 'down', { peer: 'beta' }) as { stoppedRemote: boolean };
  t.ok(d.stoppedRemote, 'gmddown reports that the remote GMD was stopped');
  await c.waitFor('beta', (s) => s.state === 'STOPPED', 'beta stopped by gmddown', 10000);
  t.match((await c.status('beta')).events.map((e) => e.message).join('\n'), /declared this GMD down/);
});

t.test('start rules (three machines): more than one remote peer active; peer starting', async (t) => {
  const c = await TestCluster.create({ mode: 'sync', size: 4 * 1024 * 1024, extraWest: ['gamma'] });
  t.teardown(() => c.cleanup());
  await Promise.all(['alpha', 'beta', 'gamma'].map((m) => c.run(m)));
  await c.start('beta', ['alpha']);
  await c.start('gamma', ['alpha']);
  await refused(t, c, 'alpha', 'MULTIPLE_PEERS', /more than one remote peer is active \(beta, gamma\)/);
  await c.ctl('beta', 'stop');
  await c.kill9('gamma');
  // alpha's start waits for the unreachable gamma; meanwhile beta's start sees alpha STARTING.
  const alphaStart = c.start('alpha').catch((e: unknown) => e);
  await c.waitFor('alpha', (s) => s.state === 'STARTING', 'alpha starting', 5000);
  await refused(t, c, 'beta', 'PEER_STARTING', /alpha is in the process of starting/);
  const e = await alphaStart as { code: string };
  t.match(e.code, /GMD_ERR_START_PEER_(UNREACHABLE|NOT_AVAILABLE)/, 'alpha then refuses for its other peers');
});
