import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { open, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { TestCluster, identical } from './cluster.js';
import { ROOT, missingTools } from '../helpers/env.js';
import type { GmdMode } from '../../src/gmd/protocol.js';
import { stopProcess } from '../../src/util/process.js';

/**
 * kill -9 of the primary, and separately of the secondary, at random moments under load: a
 * sequence-numbered block writer (libnbd) whose acknowledgements we log, plus fio with crc32c
 * verify on another part of the device. After restart and resync: volumes identical, every
 * acknowledged write present (sync, mwc); for async, the secondary right after the primary's
 * crash holds exactly a prefix of the write order.
 */
const BLOCKS = 1024;           // seq-writer area: first 4 MiB
const SIZE = 16 * 1024 * 1024;
const ITERATIONS = Number(process.env.GMD_CRASH_ITERATIONS ?? 4);
const WRITER = join(ROOT, 'test', 'gmd', 'fixtures', 'seqwriter.py');
// Debian's python3 has the libnbd binding; a pyenv python on PATH may not.
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface History { lastAcked: Map<number, number>; issued: Map<number, number>; writes: Array<[seq: number, block: number]>; nextSeq: number }

async function readLog(path: string, h: History): Promise<void> {
  const text = await readFile(path, 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const [k, a, b] = line.split(' ');
    const seq = Number(a), block = Number(b);
    if (k === 'W') { h.issued.set(seq, block); h.writes.push([seq, block]); h.nextSeq = Math.max(h.nextSeq, seq + 1); }
    if (k === 'A') h.lastAcked.set(block, seq);
  }
}

/** Sequence number found in each block of the seq-writer area of a volume. */
async function seqs(volume: string): Promise<number[]> {
  const fh = await open(volume, 'r');
  const buf = Buffer.alloc(BLOCKS * 4096);
  await fh.read(buf, 0, buf.length, 0);
  await fh.close();
  const out: number[] = [];
  for (let b = 0; b < BLOCKS; b++) out.push(Number(buf.readBigUInt64LE(b * 4096)));
  return out;
}

/**
 * The seq-writer area once the volume has stopped changing (two reads 200 ms apart agree, up to
 * 10 s): a read while the secondary still applies what it received is not a snapshot of one moment.
 */
async function settledSeqs(volume: string): Promise<number[]> {
  let prev = await seqs(volume);
  for (let i = 0; i < 50; i++) {
    await sleep(200);
    const cur = await seqs(volume);
    if (cur.every((x, j) => x === prev[j])) return cur;
    prev = cur;
  }
  return prev;
}

function checkAcked(t: Test, found: number[], h: History, what: string): void {
  let bad = 0;
  for (let b = 0; b < BLOCKS; b++) {
    const acked = h.lastAcked.get(b) ?? 0;
    const s = found[b]!;
    // Either the last acknowledged write, or a later write to the same block that was in flight.
    const ok = s === acked || (s > acked && h.issued.get(s) === b);
    if (!ok) bad++;
  }
  t.equal(bad, 0, `${what}: every acknowledged write present (${h.lastAcked.size} blocks checked)`);
}

function checkPrefix(t: Test, found: number[], h: History): void {
  const k = Math.max(0, ...found);
  const expect = new Array<number>(BLOCKS).fill(0);
  for (const [seq, block] of h.writes) if (seq <= k) expect[block] = seq;
  const bad: string[] = [];
  for (let b = 0; b < BLOCKS; b++) if (found[b] !== expect[b]) bad.push(`block ${b}: #${found[b]}, prefix says #${expect[b]}`);
  t.equal(bad.length, 0, `async: secondary holds exactly the prefix of the write order up to #${k}`);
  if (bad.length) t.comment(`not a prefix: ${bad.slice(0, 8).join('; ')}`);
}

function startLoad(c: TestCluster, log: string, h: History, seed: number): { writer: ChildProcess; fio: ChildProcess } {
  const writer = spawn(PYTHON, [WRITER, c.uri, log, String(BLOCKS), String(h.nextSeq), '1000000', String(seed)], { stdio: 'ignore' });
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
  const h: History = { lastAcked: new Map(), issued: new Map(), writes: [], nextSeq: 1 };
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
