import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { missingTools, tempDir } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';

const CHILD = fileURLToPath(new URL('./fixtures/sequential-writer.js', import.meta.url));

/**
 * SIGKILL keeps the page cache, so the crash test cannot tell a written mark from a durable one.
 * This test watches the system calls instead (strace -f): before every "issue", the page holding
 * the region's mark was written to the map file (pwrite64) and an fdatasync of that file began
 * after that write completed and finished before the issue — the power-loss half of DESIGN §4.2.
 * With 16 concurrent writers this also covers group commit with overlapping fdatasyncs.
 */
interface PwriteRec { done: number; offset: number; buf: Buffer }

/** Parses the strace log into map writes, syncs and issues, in completion order. */
function parseTrace(text: string, mapPath: string) {
  let mapFd = -1;
  let seq = 0;
  const pending = new Map<string, { kind: 'pwrite' | 'sync'; start: number; head: string }>();
  const writes: PwriteRec[] = [];
  const syncs: Array<{ start: number; done: number }> = [];
  const issues: Array<{ at: number; region: number }> = [];
  const pwriteArgs = (head: string): { offset: number; buf: Buffer } | null => {
    const m = /^pwrite64\(\d+, "((?:\\x[0-9a-f]{2})*)"(?:\.\.\.)?, (\d+), (\d+)\)/.exec(head);
    if (!m) return null;
    return { buf: Buffer.from(m[1]!.replace(/\\x/g, ''), 'hex'), offset: Number(m[3]) };
  };
  for (const line of text.split('\n')) {
    const m = /^(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const tid = m[1]!;
    const call = m[2]!;
    seq++;
    // -xx prints every string byte as \xNN, the path too.
    const open = /^openat\(AT_FDCWD, "((?:\\x[0-9a-f]{2})*)", O_RDWR[^)]*\) = (\d+)/.exec(call);
    if (open && Buffer.from(open[1]!.replace(/\\x/g, ''), 'hex').toString() === mapPath) { mapFd = Number(open[2]); continue; }
    if (mapFd < 0) continue;
    if (call.startsWith(`pwrite64(${mapFd},`) || call.startsWith(`fdatasync(${mapFd})`)) {
      const kind = call.startsWith('pwrite64') ? 'pwrite' : 'sync';
      if (call.includes('<unfinished')) { pending.set(tid, { kind, start: seq, head: call }); continue; }
      if (kind === 'sync') syncs.push({ start: seq, done: seq });
      else { const a = pwriteArgs(call); if (a) writes.push({ done: seq, ...a }); }
    } else if (/^<\.\.\. (pwrite64|fdatasync) resumed>/.test(call) && pending.has(tid)) {
      const p = pending.get(tid)!;
      pending.delete(tid);
      if (p.kind === 'sync') syncs.push({ start: p.start, done: seq });
      else { const a = pwriteArgs(p.head); if (a) writes.push({ done: seq, ...a }); }
    } else {
      const iss = /^write\(1, "((?:\\x[0-9a-f]{2})*)"/.exec(call);
      if (iss) {
        const text = Buffer.from(iss[1]!.replace(/\\x/g, ''), 'hex').toString();
        const r = /^ISSUE (\d+)/.exec(text);
        if (r) issues.push({ at: seq, region: Number(r[1]) });
      }
    }
  }
  return { mapFd, writes, syncs, issues };
}

/** The mark of `region` is in a page written before `at`, and an fdatasync began after that write and ended before `at`. */
function durablyMarkedBefore(t: ReturnType<typeof parseTrace>, region: number, at: number): boolean {
  const pos = 8192 + (region >> 1);
  return t.writes.some((w) => w.done < at && pos >= w.offset && pos < w.offset + w.buf.length
    && ((w.buf[pos - w.offset]! >> ((region & 1) * 4)) & 0xf) !== 0
    && t.syncs.some((s) => s.start > w.done && s.done < at));
}

for (const workers of [1, 16]) {
  t.test(`${workers} writer(s): every issue follows a pwrite of its mark and an fdatasync after it (strace)`, { skip: missingTools('strace') }, async (t) => {
    const { dir, cleanup } = tempDir('georm-sm-strace-');
    t.teardown(cleanup);
    const map = join(dir, 'order.map');
    const log = join(dir, 'strace.log');
    const n = workers === 1 ? 40 : 300;
    const r = await runCmd('strace', ['-f', '-qq', '-xx', '-s', '70000', '-e', 'trace=openat,pwrite64,fdatasync,write', '-o', log,
      process.execPath, CHILD, map, String(n), String(workers)], { timeoutMs: 60000 });
    if (r.code !== 0 && /ptrace|Operation not permitted/.test(r.stderr)) {
      t.plan(0, `strace cannot trace here: ${r.stderr.trim()}`);
      return;
    }
    t.equal(r.code, 0, r.stderr);
    const trace = parseTrace(readFileSync(log, 'utf8'), map);
    t.ok(trace.mapFd >= 0, 'found the map file descriptor');
    t.equal(trace.issues.length, n, `saw all ${n} issues`);
    t.ok(trace.syncs.length < n + 5 || workers === 1, `${trace.syncs.length} fdatasyncs for ${n} markings`);
    const bad = trace.issues.filter((i) => !durablyMarkedBefore(trace, i.region, i.at));
    t.same(bad, [], 'each issue came after its mark was written and fdatasync\'ed');
  });
}
