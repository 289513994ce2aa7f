import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { TestCluster, identical } from './cluster.js';
import { missingTools } from '../helpers/env.js';
import { type History, newHistory, readLog, seqs, settledSeqs, checkAcked, checkPrefix, startWriter } from './seqlog.js';
import type { GmdMode } from '../../src/gmd/protocol.js';
import { stopProcess } from '../../src/util/process.js';

/**
 * kill -9 of the primary, and separately of the secondary, at random moments under load: a
 * sequence-numbered block writer (libnbd) whose acknowledgements we log, plus fio with crc32c
 * verify on another part of the device. After restart and resync: volumes identical, every
 * acknowledged write present (sync, mwc); for async, the secondary right after the primary's
 * crash holds exactly a prefix of the write order.
 */
const SIZE = 16 * 1024 * 1024;
const ITERATIONS = Number(process.env.GMD_CRASH_ITERATIONS ?? 4);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function startLoad(c: TestCluster, log: string, h: History, seed: number): { writer: ChildProcess; fio: ChildProcess } {
  const writer = startWriter(c.uri, log, h, 1000000, seed);
  const fio = spawn('fio', ['--name=verify', '--verify_state_save=0', '--ioengine=nbd', `--uri=${c.uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=8',
    `--offset=${8 * 1024 * 1024}`, `--size=${4 * 1024 * 1024}`, '--verify=crc32c', '--verify_fatal=1', '--loops=2', '--output=/dev/null'], { stdio: 'ignore' });
  return { writer, fio };
}

async function exited(p: ChildProcess): Promise<number | null> {
  if (p.exitCode !== null || p.signalCode !== null) return p.exitCode;
  const [code] = await once(p, 'exit') as [number | null];
  return code;
}

async function crashMode(t: Test, mode: GmdMode): Promise<void> {
  const c = await TestCluster.create({ mode, size: SIZE, pft: 2 });
  t.teardown(() => c.cleanup());
  await c.up();
  const h = newHistory();
  for (let i = 0; i < ITERATIONS; i++) {
    const victim = i % 2 === 0 ? 'alpha' : 'beta';
    const log = join(c.dir, `writer${i}.log`);
    const { writer, fio } = startLoad(c, log, h, 1000 + i);
    await sleep(1000 + Math.floor(Math.random() * 1500));
    await c.kill9(victim);
    if (victim === 'alpha') {
      await Promise.all([exited(writer), stopProcess(fio)]);
      await readLog(log, h);
      if (mode === 'async') {
        checkPrefix(t, await settledSeqs(c.vol.beta!), h); // once the secondary has applied what it received
      }
      await c.run('alpha');
      // The secondary is still AVAILABLE: gmddown stops it, the primary starts, then it rejoins.
      await c.start('alpha', ['beta']);
      await c.start('beta');
    } else {
      await sleep(1000);
      await c.run('beta');
      await c.start('beta');
      const fioCode = await exited(fio);
      t.equal(fioCode, 0, 'fio crc32c verify passed across the secondary crash');
      await stopProcess(writer);
      await readLog(log, h);
    }
    await c.waitInSync(60000);
    const a = await seqs(c.vol.alpha!);
    if (mode !== 'async') checkAcked(t, a, h, `${mode} after killing ${victim} (iteration ${i + 1})`);
    else checkAcked(t, a, h, `async primary volume after killing ${victim} (iteration ${i + 1})`);
    const same = await identical(c.vol.alpha!, c.vol.beta!);
    t.ok(same.same, `iteration ${i + 1} (kill -9 ${victim}): volumes identical after restart and resync ${same.detail}`);
  }
  await c.terminate('alpha');
  await c.terminate('beta');
  t.ok((await identical(c.vol.alpha!, c.vol.beta!)).same, 'identical after stop');
}

const skip = missingTools('fio', 'python3', 'cmp');
for (const mode of (process.env.GMD_MODES?.split(',') ?? ['sync', 'mwc', 'async']) as GmdMode[]) {
  t.test(`${mode}: kill -9 of primary and of secondary under load, ${ITERATIONS} iterations`, { skip }, (t) => crashMode(t, mode));
}
