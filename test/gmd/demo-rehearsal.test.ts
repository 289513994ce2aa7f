/**
 * The rehearsal demo driven as a script would: commands on a piped stdin and through
 * `georm demo ctl DIR CMD`, each command once, real `gmd run` processes, real NBD writes with
 * qemu-io, the lines the demo prints asserted, and the two volumes compared with cmp at the end.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { GEORM_BIN, missingTools, tempDir } from '../helpers/env.js';
import { runCmd, watchOutput } from '../helpers/proc.js';

const KiB = 1024;

t.test('georm demo rehearsal: kill, restart, cut, wan, restore, status, help; only stale regions travel; volumes identical', {
  skip: missingTools('qemu-io', 'cmp'),
}, async (t) => {
  const { dir, cleanup } = tempDir('georm-rehearsal-');
  t.teardown(cleanup);
  const child = spawn(process.execPath, [GEORM_BIN, 'demo', '--dir', dir, '--size', '32M', '--promote-failure-timeout', '2'],
    { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  const out = watchOutput(child, 'stdout');
  const err = watchOutput(child, 'stderr');
  const [first] = await out.wait(/^.*\n/, 30000);
  const info = JSON.parse(first!) as { unixUri: string; primaryVolume: string; secondaryVolume: string; dir: string };
  await err.wait(/ready for commands/, 10000);

  /** Waits for `re` in stderr after what has been seen so far (each event is asserted once, in order). */
  let mark = 0;
  const next = async (re: RegExp, what: string, ms = 20000, keepMark = false): Promise<RegExpMatchArray> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = err.text.slice(mark).match(re);
      if (m) {
        // keepMark: the next line may come before this one (two GMDs polled at once).
        if (!keepMark) mark += m.index! + m[0].length;
        t.pass(`${what}: ${m[0]}`);
        return m;
      }
      if (Date.now() > deadline || child.exitCode !== null) {
        t.fail(`${what}: ${re} not printed within ${ms} ms; stderr since the last match: ${err.text.slice(mark).slice(-3000)}`);
        throw new Error(`${what}: not printed`);
      }
      await sleep(100);
    }
  };
  const stdin = (line: string) => child.stdin!.write(`${line}\n`);
  const ctl = (...words: string[]) => runCmd(process.execPath, [GEORM_BIN, 'demo', 'ctl', dir, ...words], { timeoutMs: 60000 });
  const write = async (pattern: number, offset: string, length: string) => {
    const r = await runCmd('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${length}`, info.unixUri], { timeoutMs: 30000 });
    t.equal(r.code, 0, `qemu-io write ${length} at ${offset} through the NBD URI (${r.stderr.trim()})`);
  };

  stdin('help');
  await next(/demo> +kill secondary\|primary +SIGKILL/, 'help lists the commands');
  await write(0x11, '0', '1M');

  // The secondary dies: the demo goes on, the primary marks what it cannot mirror.
  const killed = await ctl('kill', 'secondary');
  t.equal(killed.code, 0, 'demo ctl kill secondary exits 0');
  t.match(killed.stdout, /^beta \(secondary, pid \d+\) killed \(SIGKILL\)$/m, 'demo ctl prints the answer');
  await next(/demo> beta \(secondary, pid \d+\) killed \(SIGKILL\)/, 'the demo shows the kill');
  await write(0x22, '4M', '512K');
  await next(/alpha: mirroring to beta stopped \(Promote Failure Timeout exceeded for beta[^\n]*/, 'peer down', 20000, true);
  const staleLine = await next(/alpha: (\d+) region\(s\) marked stale \((\d+) bytes to resynchronise\)/, 'stale marking');
  t.equal(Number(staleLine[2]), 512 * KiB, 'exactly the 512 KiB written while beta was dead are stale');

  stdin('status');
  await next(/demo> alpha \(primary, pid \d+\): AVAILABLE, peer beta down, map 16 stale, 0 in flight of 1024 regions/, 'status: primary');
  await next(/demo> beta \(secondary\): not running/, 'status: secondary');
  await next(/demo> geo1: up, no impairment/, 'status: geo1');

  // It comes back: only the stale regions travel.
  stdin('restart secondary');
  await next(/demo> beta \(secondary\) restarted \(pid \d+\) and AVAILABLE/, 'restart secondary');
  await next(/alpha: resync alpha -> beta started/, 'resync starts');
  const done = await next(/alpha: resync complete: (\d+) bytes/, 'resync ends');
  t.equal(Number(done[1]), 512 * KiB, 'the resync sent the stale 512 KiB, not the 32 MiB volume');
  await next(/alpha: state map clean: every region is mirrored/, 'map clean again');

  // A degraded WAN still mirrors (no stale region); one network cut, the other carries the data.
  stdin('wan delay=30 loss=1%');
  await next(/demo> wan: delay 30 ms, loss 1% on geo1 and geo2/, 'wan');
  await write(0x33, '8M', '256K');
  stdin('wan delay=0 loss=0');
  stdin('cut geo1');
  await next(/demo> geo1 cut \(both directions\)/, 'cut geo1');
  await write(0x44, '9M', '64K');
  const st = await ctl('status');
  t.match(st.stdout, /^alpha \(primary, pid \d+\): AVAILABLE, peer beta up, mirrored, map 0 stale, 0 in flight/m, 'with geo1 cut the mirror goes on over geo2');
  t.match(st.stdout, /^geo1: cut, no impairment$/m, 'status shows geo1 cut');

  // Both networks cut: a partition. The writes go on, marked stale; restore + restart secondary heals it.
  stdin('cut all');
  await next(/demo> geo1 and geo2 cut \(both directions\)/, 'cut all');
  await next(/alpha: mirroring to beta stopped[^\n]*/, 'partition: the primary gives beta down', 20000, true);
  await write(0x55, '10M', '128K');
  await next(/alpha: 4 region\(s\) marked stale \(131072 bytes to resynchronise\)/, 'writes during the partition are stale');
  stdin('restore');
  await next(/demo> networks restored/, 'restore');
  await next(/demo> the primary is not mirroring: after a partition the secondary must rejoin/, 'restore says how to rejoin');
  stdin('restart secondary');
  await next(/demo> beta \(secondary, pid \d+\) stopped cleanly/, 'a running secondary is stopped cleanly first');
  await next(/demo> beta \(secondary\) restarted/, 'and restarted');
  const healed = await next(/alpha: resync complete: (\d+) bytes/, 'resync after the partition');
  t.equal(Number(healed[1]), 128 * KiB, 'only the 128 KiB written during the partition travel');

  // The primary dies and comes back.
  stdin('kill primary');
  await next(/demo> alpha \(primary, pid \d+\) killed \(SIGKILL\)/, 'kill primary');
  stdin('restart primary');
  await next(/demo> alpha \(primary\) restarted \(pid \d+\) and AVAILABLE/, 'restart primary');
  await next(/alpha: mirroring to beta/, 'the primary mirrors again');
  await write(0x66, '12M', '64K');

  const bad = await ctl('cut', 'geo9');
  t.equal(bad.code, 1, 'a bad command exits 1');
  t.match(bad.stdout, /error: cut: expected geo1, geo2 or all, got 'geo9'/, 'and says what is expected');
  const st2 = await ctl('status');
  t.match(st2.stdout, /^alpha \(primary, pid \d+\): AVAILABLE, peer beta up, mirrored, map 0 stale/m, 'the bad command changed nothing');

  const exited = once(child, 'exit') as Promise<[number | null]>;
  child.kill('SIGTERM');
  const [code] = await exited;
  t.equal(code, 0, `the demo stops cleanly after the rehearsal (stderr tail: ${err.text.trim().split('\n').slice(-3).join(' | ')})`);
  t.equal(out.text.trim().split('\n').length, 1, 'stdout holds only the JSON line');
  t.equal((await runCmd('cmp', [info.primaryVolume, info.secondaryVolume])).code, 0, 'cmp: the volumes are identical');
});
