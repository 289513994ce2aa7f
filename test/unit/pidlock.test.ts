/** The pid lock file (src/util/pidlock.ts) on a real directory: taken, refused while its owner lives, taken over after it died. */
import t from 'tap';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { acquirePidLock, releasePidLock } from '../../src/util/pidlock.js';
import { tempDir } from '../helpers/env.js';

t.test('pid lock: taken once, refused to a second taker while the owner lives, released', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const lock = join(dir, 'x.lock');
  t.same(await acquirePidLock(lock), { taken: true });
  t.match(readFileSync(lock, 'utf8'), new RegExp(`^${process.pid} \\d+\\n$`), 'holds our pid and start time');
  t.same(await acquirePidLock(lock), { taken: false, heldBy: process.pid }, 'a live owner keeps it');
  await releasePidLock(lock);
  t.notOk(existsSync(lock), 'released');
  await releasePidLock(lock); // releasing twice is no error
  t.same(await acquirePidLock(lock), { taken: true }, 'free again');
});

t.test('pid lock: a dead owner\'s or a reused pid\'s lock is taken over', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const lock = join(dir, 'x.lock');
  writeFileSync(lock, '4194303 12345\n'); // above pid_max: no such process
  t.same(await acquirePidLock(lock), { taken: true }, 'dead owner');
  writeFileSync(lock, `${process.pid} 1\n`); // our pid, another start time: the pid was reused
  t.same(await acquirePidLock(lock), { taken: true }, 'reused pid');
  t.match(readFileSync(lock, 'utf8'), new RegExp(`^${process.pid} \\d+\\n$`));
  writeFileSync(lock, 'garbage\n');
  t.same(await acquirePidLock(lock), { taken: true }, 'unreadable content');
});

t.test('pid lock: a missing directory is the file system\'s error', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  await t.rejects(acquirePidLock(join(dir, 'missing', 'x.lock')), { code: 'ENOENT' });
});
