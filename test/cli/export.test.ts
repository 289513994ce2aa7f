/** `georm export`: startup line, clear errors, clean stop on signals. Runs the real CLI as a process. */
import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { writeFileSync, existsSync, statSync } from 'node:fs';
import { GEORM_BIN, tempDir, missingTools, nbdshEnv } from '../helpers/env.js';
import { Procs, runCmd, watchOutput } from '../helpers/proc.js';

const georm = (args: string[]) => runCmd(process.execPath, [GEORM_BIN, ...args], { timeoutMs: 30000 });

t.test('errors', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  let r = await georm(['export', join(dir, 'missing.img')]);
  t.equal(r.code, 1);
  t.match(r.stderr, /no such file or device/);
  r = await georm(['export', join(dir, 'new.img'), '--size', '12Q']);
  t.equal(r.code, 1);
  t.match(r.stderr, /invalid export size '12Q'/);
  writeFileSync(join(dir, 'empty.img'), '');
  r = await georm(['export', join(dir, 'empty.img')]);
  t.match(r.stderr, /is empty \(0 bytes\)/);
  writeFileSync(join(dir, 'small.img'), Buffer.alloc(4096));
  r = await georm(['export', join(dir, 'small.img'), '--size', '1M']);
  t.match(r.stderr, /exists with size 4 KiB, not 1 MiB/);
  r = await georm(['export', join(dir, 'small.img'), '--size', '0']);
  t.match(r.stderr, /greater than 0/);
  r = await georm(['export', dir]);
  t.equal(r.code, 1);
  t.match(r.stderr, /is a directory/);
  r = await georm(['export', join(dir, 'small.img'), '--listen', 'tcp://host:99999']);
  t.match(r.stderr, /cannot listen on tcp:\/\/host:99999/);

  const blocker = net.createServer();
  blocker.listen(0, '127.0.0.1');
  await once(blocker, 'listening');
  t.teardown(() => blocker.close());
  const port = (blocker.address() as net.AddressInfo).port;
  r = await georm(['export', join(dir, 'small.img'), '--listen', `tcp://127.0.0.1:${port}`]);
  t.equal(r.code, 1);
  t.match(r.stderr, /address already in use/);
  t.notMatch(r.stderr, /internal error/);

  r = await georm(['export', '--help']);
  t.equal(r.code, 0);
  t.match(r.stdout, /--read-only/);
});

t.test('serves, prints the URI, stops cleanly on SIGTERM and SIGINT', { skip: missingTools('nbdinfo') }, async (t) => {
  const { dir, cleanup } = tempDir();
  const procs = new Procs();
  t.teardown(async () => { await procs.stopAll(); cleanup(); });
  const img = join(dir, 'disk.img');
  const sock = join(dir, 's.sock');
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    const p = procs.spawn(process.execPath, [GEORM_BIN, 'export', img, '--size', '8M', '--listen', 'tcp://127.0.0.1:0', '--listen', `unix:${sock}`,
      '--name', 'demo', '--read-only', '--json', '--description', 'demo disk']);
    const out = watchOutput(p);
    const [line] = await out.wait(/\{.*\}\n/);
    const info = JSON.parse(line!) as { uri: string; uris: string[]; name: string; size: number; readOnly: boolean };
    t.match(info.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/demo$/);
    t.equal(info.uris.length, 2);
    t.same([info.name, info.size, info.readOnly], ['demo', 8 * 1024 * 1024, true]);
    t.equal(statSync(img).size, 8 * 1024 * 1024, 'created sparse');
    for (const uri of info.uris) {
      const r = await runCmd('nbdinfo', ['--json', uri], { timeoutMs: 20000 });
      t.equal(r.code, 0, r.stderr);
      const j = JSON.parse(r.stdout) as { exports: Array<{ is_read_only: boolean; description: string }> };
      t.equal(j.exports[0]!.is_read_only, true);
      t.equal(j.exports[0]!.description, 'demo disk');
    }
    const dflt = await runCmd('nbdinfo', ['--size', info.uri.replace(/demo$/, '')], { timeoutMs: 20000 });
    t.equal(dflt.stdout.trim(), String(8 * 1024 * 1024), 'also the default export ""');
    const code = await procs.stop(p, sig);
    t.equal(code, 0, `${sig}: exit 0`);
    t.notOk(existsSync(sock), 'unix socket removed');
  }
  const plain = procs.spawn(process.execPath, [GEORM_BIN, 'export', img, '--listen', `unix:${sock}`]);
  const [uri] = await watchOutput(plain).wait(/nbd\+unix:\S+/);
  t.equal(uri, `nbd+unix:///disk.img?socket=${sock}`, 'plain URI line, name defaults to the file name');
  // The file is sparse: with the native addon (SEEK_DATA) the map shows holes, otherwise all data.
  const w = await runCmd('nbdsh', ['-u', uri!, '-c', "h.pwrite(b'x' * 65536, 1048576)"], { env: nbdshEnv(), timeoutMs: 20000 });
  t.equal(w.code, 0, w.stderr);
  const map = await runCmd('nbdinfo', ['--map', '--json', uri!], { timeoutMs: 20000 });
  const ext = JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>;
  const { nativeAvailable } = await import('../../src/native/index.js');
  if (nativeAvailable) {
    t.ok(ext.some((e) => e.type === 3), 'holes reported (SEEK_HOLE through the addon)');
    t.ok(ext.some((e) => e.type === 0 && e.offset <= 1048576 && e.offset + e.length >= 1048576 + 65536), 'written range is data');
  } else {
    t.ok(ext.every((e) => e.type === 0), 'without the addon everything is reported as data');
  }
  t.equal(await procs.stop(plain), 0);
});
