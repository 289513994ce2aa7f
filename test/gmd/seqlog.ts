import type { Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { open, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/env.js';

/**
 * The sequence-numbered block writer of the crash and lossy-link tests (fixtures/seqwriter.py, libnbd)
 * and the checks on what it logged: which writes were issued and acknowledged, in which order, and
 * what a volume must hold afterwards.
 */
export const BLOCKS = 1024;           // seq-writer area: first 4 MiB
const WRITER = join(ROOT, 'test', 'gmd', 'fixtures', 'seqwriter.py');
// Debian's python3 has the libnbd binding; a pyenv python on PATH may not.
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts the writer: `count` writes from h.nextSeq on, one at a time, logged to `log`. */
export function startWriter(uri: string, log: string, h: History, count: number, seed: number): ChildProcess {
  return spawn(PYTHON, [WRITER, uri, log, String(BLOCKS), String(h.nextSeq), String(count), String(seed)], { stdio: 'ignore' });
}

export function newHistory(): History { return { lastAcked: new Map(), issued: new Map(), writes: [], nextSeq: 1 }; }

export interface History { lastAcked: Map<number, number>; issued: Map<number, number>; writes: Array<[seq: number, block: number]>; nextSeq: number }

export async function readLog(path: string, h: History): Promise<void> {
  const text = await readFile(path, 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const [k, a, b] = line.split(' ');
    const seq = Number(a), block = Number(b);
    if (k === 'W') { h.issued.set(seq, block); h.writes.push([seq, block]); h.nextSeq = Math.max(h.nextSeq, seq + 1); }
    if (k === 'A') h.lastAcked.set(block, seq);
  }
}

/** How many lines of `kind` the writer's log holds: 'W' writes issued, 'A' writes acknowledged. */
export async function countLog(path: string, kind: 'W' | 'A'): Promise<number> {
  return (await readFile(path, 'utf8').catch(() => '')).split('\n').filter((l) => l.startsWith(`${kind} `)).length;
}

/** Waits (up to timeoutMs) until the writer's log holds `n` lines of `kind`; returns the count reached. */
export async function waitForLog(path: string, kind: 'W' | 'A', n: number, timeoutMs = 30000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const count = await countLog(path, kind);
    if (count >= n || Date.now() > deadline) return count;
    await sleep(50);
  }
}

/** Sequence number found in each block of the seq-writer area of a volume. */
export async function seqs(volume: string): Promise<number[]> {
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
export async function settledSeqs(volume: string): Promise<number[]> {
  let prev = await seqs(volume);
  for (let i = 0; i < 50; i++) {
    await sleep(200);
    const cur = await seqs(volume);
    if (cur.every((x, j) => x === prev[j])) return cur;
    prev = cur;
  }
  return prev;
}

export function checkAcked(t: Test, found: number[], h: History, what: string): void {
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

export function checkPrefix(t: Test, found: number[], h: History): void {
  const k = Math.max(0, ...found);
  const expect = new Array<number>(BLOCKS).fill(0);
  for (const [seq, block] of h.writes) if (seq <= k) expect[block] = seq;
  const bad: string[] = [];
  for (let b = 0; b < BLOCKS; b++) if (found[b] !== expect[b]) bad.push(`block ${b}: #${found[b]}, prefix says #${expect[b]}`);
  t.equal(bad.length, 0, `async: secondary holds exactly the prefix of the write order up to #${k}`);
  if (bad.length) t.comment(`not a prefix: ${bad.slice(0, 8).join('; ')}`);
}

