/**
 * `georm demo` used as a person would: in a terminal (a tmux pane on a private tmux server),
 * commands typed at the keyboard (send-keys), what the screen shows read back (capture-pane),
 * Ctrl-C to end it. Writes go through the NBD URI with qemu-io; the volumes are compared at the end.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { GEORM_BIN, missingTools, tempDir } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';

/** Pids of live processes whose command line mentions `needle` (the demo's dir). */
function pidsMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (!readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').some((a) => a.includes(needle))) continue;
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z') pids.push(Number(d));
    } catch { /* gone meanwhile */ }
  }
  return pids;
}

t.test('georm demo in a terminal: typed commands, live events, Ctrl-C', { skip: missingTools('tmux', 'qemu-io', 'cmp') }, async (t) => {
  const { dir, cleanup } = tempDir('georm-demotmux-');
  // A private tmux server: nothing shared with anyone else's tmux.
  const server = `georm-demo-test-${process.pid}-${randomBytes(3).toString('hex')}`;
  const tmux = (...args: string[]) => runCmd('tmux', ['-L', server, '-f', '/dev/null', ...args], { timeoutMs: 10000 });
  t.teardown(async () => {
    await tmux('kill-server');
    // The demo's processes stop by themselves once the demo is gone; anything left is killed by pid.
    for (let i = 0; i < 50 && pidsMentioning(dir).length; i++) await sleep(100);
    for (const pid of pidsMentioning(dir)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    cleanup();
  });
  // `trap : INT` keeps the pane's shell alive through Ctrl-C (the demo still gets it) to show the exit code.
  const cmd = `trap : INT; ${JSON.stringify(process.execPath)} ${JSON.stringify(GEORM_BIN)} demo --dir ${JSON.stringify(dir)} --size 32M ` +
    `--promote-failure-timeout 2; echo "DEMO-EXIT=$?"; sleep 120`;
  const made = await tmux('new-session', '-d', '-s', 'demo', '-x', '200', '-y', '100', cmd);
  t.equal(made.code, 0, `tmux session started ${made.stderr}`);

  const screen = async () => (await tmux('capture-pane', '-p', '-J', '-S', '-2000', '-t', 'demo')).stdout;
  let mark = 0;
  /** Waits until the screen shows `re` below what was already matched. */
  const shows = async (re: RegExp, what: string, ms = 20000): Promise<RegExpMatchArray> => {
    const deadline = Date.now() + ms;
    let last = '';
    for (;;) {
      last = await screen();
      const m = last.slice(mark).match(re);
      if (m) { mark += m.index! + m[0].length; t.pass(`${what}: ${m[0]}`); return m; }
      if (Date.now() > deadline) { t.fail(`${what}: ${re} not on the screen within ${ms} ms:\n${last.slice(-3000)}`); throw new Error(what); }
      await sleep(200);
    }
  };
  const type = async (line: string) => { await tmux('send-keys', '-t', 'demo', line, 'Enter'); };
  const uri = `nbd+unix:///demo0gmd?socket=${join(dir, 'run', 'alpha', 'demo0gmd.nbd')}`;
  const write = async (pattern: number, offset: string, length: string) => {
    const r = await runCmd('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${length}`, uri], { timeoutMs: 30000 });
    t.equal(r.code, 0, `qemu-io write ${length} at ${offset} (${r.stderr.trim()})`);
  };

  await shows(/^\{"uri":"nbd:\/\/127\.0\.0\.1:\d+\/demo0gmd","unixUri":"nbd\+unix:\/\/\/demo0gmd\?socket=[^"]+"/m, 'the JSON line comes first', 30000);
  await shows(/ready for commands on stdin/, 'ready');
  await type('help');
  await shows(/demo> +restart secondary\|primary/, 'help');
  await write(0x5a, '0', '1M');

  await type('kill secondary');
  await shows(/demo> beta \(secondary, pid \d+\) killed \(SIGKILL\)/, 'kill secondary');
  await write(0x6b, '4M', '256K');
  await shows(/alpha: 8 region\(s\) marked stale \(262144 bytes to resynchronise\)/, 'the screen shows the stale marking');
  await type('restart secondary');
  await shows(/alpha: resync alpha -> beta started/, 'resync starts');
  await shows(/alpha: resync complete: 262144 bytes/, 'only the stale 256 KiB travel');
  await type('status');
  await shows(/demo> alpha \(primary, pid \d+\): AVAILABLE, peer beta up, mirrored, map 0 stale/, 'status');
  await type('oops');
  await shows(/demo> error: unknown command 'oops'/, 'a typo is answered, nothing else happens');

  await tmux('send-keys', '-t', 'demo', 'C-c');
  await shows(/demo: SIGINT: stopping \(primary first\)/, 'Ctrl-C stops the demo, primary first');
  await shows(/demo: stopped/, 'cleanly');
  await shows(/DEMO-EXIT=0/, 'exit code 0');
  t.equal((await runCmd('cmp', [join(dir, 'alpha.img'), join(dir, 'beta.img')])).code, 0, 'cmp: the volumes are identical');
});
