/**
 * DESIGN §4 rule 9 for the command line: bad sizes, unknown GMDs, peers and machines are clear
 * errors (no stack trace) and change no data on a running GMD.
 */
import t, { type Test } from 'tap';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { TestCluster, sha256File } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { GEORM_BIN, missingTools, tempDir } from '../helpers/env.js';

const qio = (uri: string, ...cmds: string[]) => runCmd('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { timeoutMs: 30000 });

/** alpha AVAILABLE alone (gmddown beta) with data and stale regions. */
async function aloneWithData(t: Test): Promise<{ c: TestCluster; sums: () => Promise<string[]>; before: string[] }> {
  const c = await TestCluster.create({ mode: 'mwc', size: 4 * 1024 * 1024 });
  t.teardown(() => c.cleanup());
  await c.run('alpha');
  await c.start('alpha', ['beta']);
  t.equal((await qio(c.uri, 'write -P 0x5c 0 1M')).code, 0);
  const sums = async () => [await sha256File(c.vol.alpha!), String((await c.status('alpha')).map?.stale)];
  return { c, sums, before: await sums() };
}

t.test('CLI: bad sizes, unknown GMDs and unknown machines are clear errors that change nothing', { skip: missingTools('qemu-io') }, async (t) => {
  const { c, sums, before } = await aloneWithData(t);
  const georm = (...args: string[]) => runCmd(process.execPath, [GEORM_BIN, ...args], { timeoutMs: 30000 });
  const { dir, cleanup } = tempDir('georm-safety-cli-');
  t.teardown(cleanup);
  for (const size of ['12Q', '-5M', 'abc', '0', '1.5.2G']) {
    const r = await georm('demo', '--dir', join(dir, 'd'), '--size', size);
    t.not(r.code, 0, `demo --size ${size} refused (${r.stderr.trim().split('\n').pop()?.slice(0, 120)})`);
    t.notMatch(r.stderr, /at .*\.js:\d+/, 'no stack trace');
  }
  t.same((await readdir(dir)).filter((f) => f !== 'd'), [], 'nothing created next to the demo dir');
  const d = await readdir(join(dir, 'd')).catch(() => [] as string[]);
  t.notOk(d.some((f) => f.endsWith('.img') || f.endsWith('.map')), `no volume or map created (${d.join(',')})`);
  for (const args of [['start', 'nosuchgmd'], ['unify', 'nosuchgmd', '--master', 'alpha'], ['dirty', 'nosuchgmd'], ['down', 'nosuchgmd', 'beta']]) {
    const r = await georm(...args, '--config', c.cfgPath, '--machine', 'alpha');
    t.not(r.code, 0, `${args.join(' ')} refused`);
    t.match(r.stderr, /no GMD named 'nosuchgmd'/, 'says which GMD is unknown');
  }
  const r1 = await georm('down', c.gmd, 'nosuchpeer', '--config', c.cfgPath, '--machine', 'alpha');
  t.not(r1.code, 0);
  t.match(r1.stderr, /nosuchpeer is not a remote peer/);
  const r2 = await georm('status', c.gmd, '--config', c.cfgPath, '--machine', 'nosuchmachine');
  t.not(r2.code, 0, 'unknown machine refused');
  const r3 = await georm('unify', c.gmd, '--master', 'nosuch', '--config', c.cfgPath, '--machine', 'alpha');
  t.not(r3.code, 0, 'unify with an unknown master refused');
  const r4 = await georm('clean', c.gmd, '--config', c.cfgPath, '--machine', 'alpha');
  t.not(r4.code, 0, 'clean of an AVAILABLE GMD refused');
  t.equal((await c.status('alpha')).state, 'AVAILABLE');
  t.same(await sums(), before, 'volume checksum and stale count unchanged');
});
