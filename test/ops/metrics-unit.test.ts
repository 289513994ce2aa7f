/**
 * georm-metrics.service as `georm install-units` writes it: systemd-analyze accepts it, and the
 * command line it runs serves the endpoint (run here for real on a loopback port).
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GEORM_BIN, missingTools, tempDir } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';
import { freePort, startGeormMetrics } from './prometheus.js';

t.test('install-units writes georm-metrics.service; systemd-analyze verify accepts it', { skip: missingTools('systemd-analyze') }, async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const r = await runCmd(process.execPath, [GEORM_BIN, 'install-units', '--prefix', dir, '--metrics-listen', '[::]:9947', '--run-dir', '/run/georm-test', '--json']);
  t.equal(r.code, 0, r.stderr);
  const unit = join(dir, 'etc/systemd/system/georm-metrics.service');
  t.ok((JSON.parse(r.stdout) as { files: string[] }).files.includes(unit), 'listed as installed');
  const text = readFileSync(unit, 'utf8');
  t.match(text, new RegExp(`^ExecStart=${process.execPath} \\S+/bin/georm\\.js metrics --listen \\[::\\]:9947 --run-dir /run/georm-test$`, 'm'));
  t.match(text, /^ReadWritePaths=\/run\/georm-test$/m);
  t.notMatch(text, /@[A-Z]+@/, 'every placeholder filled');
  const v = await runCmd('systemd-analyze', ['verify', '--man=no', unit], { timeoutMs: 60_000 });
  const problems = (v.stdout + v.stderr).split('\n').filter((l) => l.includes('georm-metrics') && !/Failed to .*(bus|connect)/i.test(l));
  t.same(problems, [], `systemd-analyze verify reports nothing:\n${v.stdout}${v.stderr}`);

  const bad = await runCmd(process.execPath, [GEORM_BIN, 'install-units', '--prefix', dir, '--metrics-listen', 'nonsense']);
  t.equal(bad.code, 1, 'a bad --metrics-listen is refused');
  t.match(bad.stderr, /--listen wants HOST:PORT/);
});

t.test('georm metrics: a GMD socket that does not answer is georm_gmd_up 0, never a failed scrape; bad switches refused', { skip: missingTools('python3') }, async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const empty = await startGeormMetrics(dir);
  const e = await fetch(`http://${empty.address}/metrics`);
  t.equal(e.status, 200, 'an empty run directory is a valid scrape');
  t.match(await e.text(), /^georm_metrics_gmds 0$/m);
  await empty.stop();

  // dead0gmd: the socket file a killed GMD leaves behind (bound, nobody listening: ECONNREFUSED).
  const py = await runCmd('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', join(dir, 'dead0gmd.sock')]);
  t.equal(py.code, 0, py.stderr);
  // silent0gmd: a hung GMD (accepts, never answers): reported after the probe timeout.
  const { createServer } = await import('node:net');
  const held: Array<import('node:net').Socket> = [];
  const silent = createServer((s) => { held.push(s); });
  await new Promise<void>((r) => silent.listen(join(dir, 'silent0gmd.sock'), () => r()));
  t.teardown(() => { for (const s of held) s.destroy(); silent.close(); });
  const m = await startGeormMetrics(dir);
  t.teardown(() => m.stop());
  const a = await fetch(`http://${m.address}/metrics`);
  t.equal(a.status, 200, 'scrape succeeds');
  const body = await a.text();
  t.match(body, /^georm_gmd_up\{gmd="dead0gmd",machine="testhost"\} 0$/m, 'dead GMD: up 0');
  t.match(body, /^georm_gmd_up\{gmd="silent0gmd",machine="testhost"\} 0$/m, 'hung GMD: up 0');
  t.match(body, /^georm_metrics_gmds 2$/m);
  t.notMatch(body, /georm_gmd_stale_bytes\{/, 'no made-up values for GMDs that did not answer');
  t.equal((await fetch(`http://${m.address}/nope`)).status, 404);

  const port = await freePort();
  const r = await runCmd(process.execPath, [GEORM_BIN, 'metrics', '--listen', `127.0.0.1:${port}`, '--probe-timeout', '-1']);
  t.equal(r.code, 1);
  t.match(r.stderr, /--probe-timeout must be a positive number/);
  const r2 = await runCmd(process.execPath, [GEORM_BIN, 'metrics', '--listen', 'localhost']);
  t.equal(r2.code, 1);
  t.match(r2.stderr, /--listen wants HOST:PORT/);
});
