import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { missingTools, tempDir } from '../helpers/env.js';
import { CELLS_OFFSET } from '../../src/statemap/format.js';
import { runCmd } from '../helpers/proc.js';
import { parseStrace, openedPath, positionedWrites, syncsOf } from '../helpers/strace.js';

const CHILD = fileURLToPath(new URL('./fixtures/sequential-writer.js', import.meta.url));

/**
 * SIGKILL keeps the page cache, so the crash test cannot tell a written mark from a durable one.
 * This test watches the system calls instead (strace -f): before every "issue", the page holding
 * the region's mark was written to the map file (pwrite64) and an fdatasync of that file began
 * after that write completed and finished before the issue — the power-loss half of DESIGN §4.2.
 * With 16 concurrent writers this also covers group commit with overlapping fdatasyncs.
 */
interface MarkWrite { done: number; offset: number; buf: Buffer }

/** The map's writes and syncs and the fixture's issues ("ISSUE <region>" on stdout), from the strace log. */
function parseTrace(text: string, mapPath: string) {
  const calls = parseStrace(text);
  const opened = calls.map(openedPath).filter((o) => o?.path === mapPath);
  const mapFd = opened.length ? opened[opened.length - 1]!.fd : -1;
  const writes: MarkWrite[] = positionedWrites(calls).filter((w) => w.fd === mapFd && w.ok && w.buf)
    .map((w) => ({ done: w.done, offset: w.offset, buf: w.buf! }));
  const syncs = syncsOf(calls, mapFd);
  const issues: Array<{ at: number; region: number }> = [];
  for (const c of calls) {
    const out = c.name === 'write' ? /^1, "((?:\\x[0-9a-f]{2})*)"/.exec(c.args) : null;
    const r = out ? /^ISSUE (\d+)/.exec(Buffer.from(out[1]!.replace(/\\x/g, ''), 'hex').toString()) : null;
    if (r) issues.push({ at: c.start, region: Number(r[1]) });
  }
  return { mapFd, writes, syncs, issues };
}

/** The mark of `region` is in a page written before `at`, and an fdatasync began after that write and ended before `at`. */
function durablyMarkedBefore(t: ReturnType<typeof parseTrace>, region: number, at: number): boolean {
  const pos = CELLS_OFFSET + (region >> 1);
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
    // strace present but not allowed to trace fails here: a check that did not run must not pass.
    t.equal(r.code, 0, `strace ran the fixture ${r.stderr}`);
    const trace = parseTrace(readFileSync(log, 'utf8'), map);
    t.ok(trace.mapFd >= 0, 'found the map file descriptor');
    t.equal(trace.issues.length, n, `saw all ${n} issues`);
    t.ok(trace.syncs.length < n + 5 || workers === 1, `${trace.syncs.length} fdatasyncs for ${n} markings`);
    const bad = trace.issues.filter((i) => !durablyMarkedBefore(trace, i.region, i.at));
    t.same(bad, [], 'each issue came after its mark was written and fdatasync\'ed');
  });
}
