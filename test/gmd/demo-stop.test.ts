/**
 * `georm demo` must never exit while a `georm gmd run` process it started is alive, and its
 * processes must not outlive it when it is SIGKILLed. Real processes, one --dir reused across the
 * runs of each test (a reused dir was where the leak first showed: a leaked run also holds the
 * state map locks, so the next run fails). Children are found through /proc by their --config
 * path, so the test does not rely on the demo telling it their pids.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { GEORM_BIN, missingTools, nbdshEnv, tempDir } from '../helpers/env.js';
import { watchOutput } from '../helpers/proc.js';

/**
 * Pids of live (not zombie) processes whose command line names `config` or one of the per-machine
 * copies the demo writes beside it (alpha.toml, beta.toml: each sends to its peer through the
 * demo's WAN emulator).
 */
function gmdPids(config: string): number[] {
  const dir = dirname(config);
  const configs = [config, join(dir, 'alpha.toml'), join(dir, 'beta.toml')];
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const args = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (!configs.some((c) => args.includes(c)) || !args.includes('run')) continue;
      // Field 3 of stat is the state; a zombie has exited and only waits to be reaped.
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z') pids.push(Number(d));
    } catch { /* gone meanwhile */ }
  }
  return pids;
}

/** Polls until `f` is true or `ms` pass; returns the last value of `f`. */
async function until(f: () => boolean, ms: number, step = 20): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!f()) {
    if (Date.now() > deadline) return false;
    await sleep(step);
  }
  return true;
}

interface DemoRun { child: ChildProcess; out: ReturnType<typeof watchOutput>; err: ReturnType<typeof watchOutput>; config: string }

/** Everything each test started, killed by pid in its teardown. */
function tracker(t: Test, dir: string) {
  const config = join(dir, 'georm.toml');
  const demos: ChildProcess[] = [];
  t.teardown(async () => {
    for (const d of demos) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
    for (const pid of gmdPids(config)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    await until(() => gmdPids(config).length === 0, 5000);
  });
  return {
    config,
    start(extra: string[] = []): DemoRun {
      const child = spawn(process.execPath, [GEORM_BIN, 'demo', '--dir', dir, '--size', '32M', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
      demos.push(child);
      return { child, out: watchOutput(child, 'stdout'), err: watchOutput(child, 'stderr'), config };
    },
  };
}

/** Waits (bounded) for the demo to exit; then no GMD process of its dir may be alive. */
async function exitsClean(t: Test, run: DemoRun, what: string): Promise<number | null> {
  const exited = once(run.child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  const timer = setTimeout(() => run.child.kill('SIGKILL'), 40000);
  const [code, signal] = await exited;
  clearTimeout(timer);
  const alive = gmdPids(run.config);
  t.same(alive, [], `${what}: no gmd run process alive when the demo exited (code ${code}, signal ${signal}; stderr: ${run.err.text.trim().split('\n').slice(-3).join(' | ')})`);
  // Whatever happened, the next run must not inherit them.
  for (const pid of alive) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  await until(() => gmdPids(run.config).length === 0, 5000);
  return code;
}

/** The next run in the same dir comes up (no stale lock, socket or process left behind), then stops. */
async function reusable(t: Test, tr: ReturnType<typeof tracker>, what: string): Promise<void> {
  const run = tr.start();
  await run.out.wait(/\n/, 30000).then(() => t.pass(`${what}: the next run in the same dir comes up`),
    (e: Error) => t.fail(`${what}: the next run in the same dir comes up: ${e.message}`));
  run.child.kill('SIGTERM');
  t.equal(await exitsClean(t, run, `${what} (next run)`), 0, `${what}: next run exits 0 on SIGTERM`);
}

t.test('signal during start-up (reused dir): the demo stops the processes it started, then exits', async (t) => {
  const { dir, cleanup } = tempDir('georm-demostop-');
  t.teardown(cleanup);
  const tr = tracker(t, dir);
  // From "both processes spawned" until the JSON line takes some hundred ms; spread the signal over it.
  const delays = [0, 40, 100, 180, 0, 60, 250, 120];
  for (const [i, delay] of delays.entries()) {
    const sig: NodeJS.Signals = i % 2 ? 'SIGTERM' : 'SIGINT';
    const run = tr.start();
    await until(() => gmdPids(tr.config).length === 2 || run.child.exitCode !== null, 20000, 5);
    await sleep(delay);
    run.child.kill(sig);
    const code = await exitsClean(t, run, `run ${i}: ${sig} ${delay} ms after spawn`);
    // Before the JSON line a signal is a requested stop; if the demo was already up it is the usual stop.
    t.equal(code, 0, `run ${i}: exit code 0 (stderr: ${run.err.text.trim().split('\n').slice(-2).join(' | ')})`);
  }
  await reusable(t, tr, 'after the start-up signals');
});

t.test('a second signal (reused dir): the processes are killed, waited for, and the demo exits 1', async (t) => {
  const { dir, cleanup } = tempDir('georm-demostop-');
  t.teardown(cleanup);
  const tr = tracker(t, dir);
  // A different second signal right after the first cannot be a duplicate delivery: it escalates.
  for (const [i, when] of (['start-up', 'running', 'start-up', 'running'] as const).entries()) {
    const run = tr.start();
    if (when === 'running') await run.out.wait(/\n/, 30000);
    else await until(() => gmdPids(tr.config).length === 2, 20000, 5);
    run.child.kill('SIGINT');
    run.child.kill('SIGTERM');
    const code = await exitsClean(t, run, `run ${i}: SIGINT+SIGTERM while ${when}`);
    t.equal(code, 1, `run ${i}: the demo exits 1 by itself (processes were killed, not stopped cleanly)`);
    t.match(run.err.text, /killed \(SIGKILL\)/, `run ${i}: stderr says the processes were killed`);
  }
  // The same signal twice in a row, as timeout(1) delivers it (to the pid, then to its group).
  for (let i = 0; i < 3; i++) {
    const run = tr.start();
    await run.out.wait(/\n/, 30000);
    run.child.kill('SIGINT');
    run.child.kill('SIGINT');
    await exitsClean(t, run, `SIGINT twice at once, run ${i}`);
  }
  await reusable(t, tr, 'after the double signals');
});

t.test('SIGINT while a client writes through the unix NBD URI', { skip: missingTools('nbdsh') }, async (t) => {
  const { dir, cleanup } = tempDir('georm-demostop-');
  t.teardown(cleanup);
  const tr = tracker(t, dir);
  for (let i = 0; i < 2; i++) {
    const run = tr.start(['--mode', i ? 'sync' : 'mwc']);
    const [line] = await run.out.wait(/^.*\n/, 30000);
    const { unixUri } = JSON.parse(line!) as { unixUri: string };
    const writer = spawn('nbdsh', ['-u', unixUri, '-c', 'import os\nfor i in range(4000): h.pwrite(os.urandom(65536), (i * 65536) % (32 << 20))'],
      { stdio: 'ignore', env: nbdshEnv() });
    t.teardown(() => { if (writer.exitCode === null) writer.kill('SIGKILL'); });
    await sleep(300);
    run.child.kill('SIGINT');
    t.equal(await exitsClean(t, run, `writes in flight, run ${i}`), 0, `writes in flight, run ${i}: exit 0`);
    if (writer.exitCode === null) writer.kill('SIGKILL');
  }
  await reusable(t, tr, 'after stops under writes');
});

t.test('demo SIGKILLed: its gmd run processes notice and stop by themselves', async (t) => {
  const { dir, cleanup } = tempDir('georm-demostop-');
  t.teardown(cleanup);
  const tr = tracker(t, dir);
  for (const when of ['running', 'start-up'] as const) {
    const run = tr.start();
    if (when === 'running') await run.out.wait(/\n/, 30000);
    else await until(() => gmdPids(tr.config).length === 2, 20000, 5);
    const pids = gmdPids(tr.config);
    t.equal(pids.length, 2, `${when}: two gmd run processes`);
    run.child.kill('SIGKILL');
    await once(run.child, 'exit');
    t.ok(await until(() => gmdPids(tr.config).length === 0, 20000, 50), `${when}: the gmd run processes ${pids.join(', ')} stopped after their parent died`);
    for (const pid of gmdPids(tr.config)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    await until(() => gmdPids(tr.config).length === 0, 5000);
  }
  await reusable(t, tr, 'after the SIGKILLs');
});

t.test('a second demo on a dir in use is refused before it touches anything; the first runs on', async (t) => {
  const { dir, cleanup } = tempDir('georm-demostop-');
  t.teardown(cleanup);
  const tr = tracker(t, dir);
  const first = tr.start();
  await first.out.wait(/\n/, 30000);
  const pids = gmdPids(tr.config);
  const key = readFileSync(join(dir, 'cluster.key'), 'utf8');
  const second = tr.start();
  t.equal(await exitsClean(t, { ...second, config: '/nonexistent' }, 'second demo'), 1, 'the second demo exits 1');
  t.match(second.err.text, /is in use: a GMD process answers/, 'and says why');
  t.equal(second.out.text, '', 'it printed no JSON line');
  t.equal(readFileSync(join(dir, 'cluster.key'), 'utf8'), key, 'the cluster key was not rewritten');
  t.same(gmdPids(tr.config).sort(), pids.sort(), 'the first demo\'s processes still run');
  first.child.kill('SIGTERM');
  t.equal(await exitsClean(t, first, 'first demo'), 0, 'the first demo stops cleanly');
});
