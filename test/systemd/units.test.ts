import t from 'tap';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GEORM_BIN, missingTools, tempDir } from '../helpers/env.js';
import { Procs, runCmd, watchOutput } from '../helpers/proc.js';
import { renderUnit } from '../../src/cli/commands/install-units.js';
import { SystemdNotifier } from '../../src/native/systemd.js';

t.test('georm install-units --prefix writes a unit that systemd-analyze verify accepts', { skip: missingTools('systemd-analyze') }, async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const r = await runCmd(process.execPath, [GEORM_BIN, 'install-units', '--prefix', dir, '--config', '/etc/georm/test.toml', '--json']);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { files: string[]; unitDir: string };
  const unit = join(dir, 'etc/systemd/system/georm@.service');
  t.same(out.files, [unit, join(dir, 'etc/systemd/system/georm-metrics.service')], 'the GMD template and the metrics unit (test/ops/metrics-unit.test)');
  t.equal(statSync(unit).mode & 0o777, 0o644);
  const text = readFileSync(unit, 'utf8');
  t.match(text, /^Type=notify$/m);
  t.match(text, /^WatchdogSec=\d+$/m);
  t.match(text, /^After=network-online\.target/m);
  t.match(text, /^Wants=network-online\.target$/m);
  t.match(text, new RegExp(`^ExecStart=${process.execPath} \\S+/bin/georm\\.js gmd run %i --config /etc/georm/test\\.toml$`, 'm'));
  t.notMatch(text, /@[A-Z]+@/, 'every placeholder filled');

  // verify needs an instance name; it loads the template from the same directory.
  const v = await runCmd('systemd-analyze', ['verify', '--man=no', join(dir, 'etc/systemd/system/georm@data10gmd.service')], { timeoutMs: 60_000 });
  const problems = (v.stdout + v.stderr).split('\n').filter((l) => l.includes('georm@') && !/Failed to .*(bus|connect)/i.test(l));
  t.same(problems, [], `systemd-analyze verify reports nothing on the unit:\n${v.stdout}${v.stderr}`);
  t.equal(v.code, 0, `systemd-analyze verify exit code\n${v.stderr}`);

  const plain = await runCmd(process.execPath, [GEORM_BIN, 'install-units', '--prefix', dir]);
  t.match(plain.stdout, /installed .*georm@\.service/);
});

t.test('install-units refuses relative paths and reports unwritable directories', async (t) => {
  t.throws(() => renderUnit('x', { node: 'node', georm: '/g', config: '/c', stateDir: '/s', root: '/r' }), { code: 'GEORM_ERR_USAGE' });
  t.throws(() => renderUnit('x', { node: '/n', georm: '/g', config: '/c c', stateDir: '/s', root: '/r' }), { code: 'GEORM_ERR_USAGE' });
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const file = join(dir, 'a-file');
  writeFileSync(file, '');
  const r = await runCmd(process.execPath, [GEORM_BIN, 'install-units', '--prefix', file]);
  t.equal(r.code, 1);
  t.match(r.stderr, /cannot write units to .*a-file/);
});

t.test('SystemdNotifier: READY/STATUS/STOPPING/WATCHDOG messages, watchdog period, no-op outside systemd', async (t) => {
  const sent: string[] = [];
  const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: '200000', WATCHDOG_PID: String(process.pid) };
  const n = new SystemdNotifier({ env, send: (s) => { sent.push(s); return true; } });
  t.equal(n.enabled, true);
  t.equal(n.watchdogIntervalMs(), 100);
  n.ready('serving data10gmd\nprimary');
  n.status('resync 40%');
  await new Promise((r) => setTimeout(r, 250));
  n.stopping('stopping');
  const pings = sent.filter((s) => s === 'WATCHDOG=1').length;
  t.ok(pings >= 1, `watchdog pinged (${pings})`);
  t.same(sent.filter((s) => s !== 'WATCHDOG=1'), ['READY=1\nSTATUS=serving data10gmd primary', 'STATUS=resync 40%', 'STOPPING=1\nSTATUS=stopping']);
  const after = sent.length;
  await new Promise((r) => setTimeout(r, 150));
  t.equal(sent.length, after, 'no pings after STOPPING');
  n.reloading();
  n.watchdog();
  n.stopping();
  t.same(sent.slice(after), ['RELOADING=1', 'WATCHDOG=1', 'STOPPING=1']);

  t.equal(new SystemdNotifier({ env: { ...env, WATCHDOG_PID: '1' } }).watchdogIntervalMs(), null, 'watchdog for another pid');
  t.equal(new SystemdNotifier({ env: { NOTIFY_SOCKET: '/x' } }).watchdogIntervalMs(), null, 'no watchdog');
  const off: string[] = [];
  const quiet = new SystemdNotifier({ env: {}, send: (s) => { off.push(s); return true; } });
  quiet.ready();
  quiet.status('x');
  quiet.stopping();
  t.same(off, [], 'nothing sent outside systemd');
  const failing = new SystemdNotifier({ env, send: () => { throw new Error('gone'); } });
  failing.status('x'); // must not throw
  failing.stopping();
});

t.test('a running GMD speaks the notify protocol georm@.service expects (READY, WATCHDOG, STOPPING)', { skip: missingTools('python3') }, async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const procs = new Procs();
  t.teardown(() => procs.stopAll());
  const sock = join(dir, 'notify');
  // Plays systemd's side: a unix datagram socket (Node has none) printing each message on one line.
  const py = procs.spawn('python3', ['-u', '-c', `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])
print('bound', flush=True)
while True: print('MSG ' + s.recv(4096).decode().replace('\\n', '|'), flush=True)
`, sock]);
  const msgs = watchOutput(py);
  await msgs.wait(/bound/);
  // georm demo runs two `georm gmd run` processes, which inherit the notify environment.
  const demo = procs.spawn(process.execPath, [GEORM_BIN, 'demo', '--dir', join(dir, 'demo'), '--size', '1M'],
    { env: { ...process.env, NOTIFY_SOCKET: sock, WATCHDOG_USEC: '400000', GEORM_LOG_LEVEL: 'warn' } });
  const out = watchOutput(demo);
  await out.wait(/"uri"/, 60_000);
  await msgs.wait(/MSG READY=1\|STATUS=demo0gmd on alpha/, 30_000);
  await msgs.wait(/MSG WATCHDOG=1/, 30_000);
  await procs.stop(demo, 'SIGTERM', 30_000);
  await msgs.wait(/MSG STOPPING=1/, 30_000);
  t.pass('READY with STATUS, WATCHDOG pings and STOPPING received');
});
