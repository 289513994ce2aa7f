import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { endProcess, exitWithin, isAlive } from '../../src/util/process.js';

/** A node child that has installed its signal handlers (it says so on stdout). */
async function child(code: string) {
  const c = spawn(process.execPath, ['-e', `${code}; console.log('up'); setInterval(() => {}, 1000)`], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => { if (isAlive(c)) c.kill('SIGKILL'); });
  await once(c.stdout!, 'data');
  return c;
}

t.test('endProcess: SIGTERM suffices for a well-behaved child', async (t) => {
  const c = await child('');
  t.ok(isAlive(c));
  t.equal(await endProcess(c, 'SIGTERM', 5000, 5000), 'exited');
  t.notOk(isAlive(c));
  t.equal(await endProcess(c), 'exited', 'an exited child is left alone');
});

t.test('endProcess: a child ignoring SIGTERM is SIGKILLed after the grace period', async (t) => {
  const c = await child(`process.on('SIGTERM', () => {})`);
  t.equal(await exitWithin(c, 100), false, 'still running');
  t.equal(await endProcess(c, 'SIGTERM', 200, 5000), 'killed');
  t.equal(c.signalCode, 'SIGKILL');
  t.equal(await exitWithin(c, 100), true);
});

t.test('endProcess: SIGKILL at once', async (t) => {
  const c = await child(`process.on('SIGTERM', () => {})`);
  t.equal(await endProcess(c, 'SIGKILL', 60000, 5000), 'exited');
  t.equal(c.signalCode, 'SIGKILL');
});
