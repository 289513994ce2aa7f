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
 */
t.test('every issue is preceded by pwrite + fdatasync of the map (syscall order)', { skip: missingTools('strace') }, async (t) => {
  const { dir, cleanup } = tempDir('georm-sm-strace-');
  t.teardown(cleanup);
  const map = join(dir, 'order.map');
  const log = join(dir, 'strace.log');
  const n = 40;
  const r = await runCmd('strace', ['-f', '-qq', '-e', 'trace=openat,pwrite64,fdatasync,write', '-o', log, process.execPath, CHILD, map, String(n)], { timeoutMs: 60000 });
  if (r.code !== 0 && /ptrace|Operation not permitted/.test(r.stderr)) {
    t.plan(0, `strace cannot trace here: ${r.stderr.trim()}`);
    return;
  }
  t.equal(r.code, 0, r.stderr);

  let mapFd = -1;
  const pending = new Map<string, 'pwrite' | 'sync'>(); // tid → unfinished call on the map fd
  let seq = 0;
  let lastWriteDone = -1;        // event number of the last completed pwrite64 to the map since the last issue
  const syncs: Array<{ start: number; done: number }> = [];
  const syncStart = new Map<string, number>();
  let issues = 0;
  let bad = 0;
  for (const line of readFileSync(log, 'utf8').split('\n')) {
    const m = /^(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [, tid, call] = m as unknown as [string, string, string];
    seq++;
    const open = /^openat\(AT_FDCWD, "([^"]+)", O_RDWR[^)]*\) = (\d+)/.exec(call);
    if (open && open[1] === map) { mapFd = Number(open[2]); continue; }
    if (mapFd < 0) continue;
    if (call.startsWith(`pwrite64(${mapFd},`)) {
      if (call.includes('<unfinished')) pending.set(tid, 'pwrite'); else lastWriteDone = seq;
    } else if (call.startsWith(`fdatasync(${mapFd})`)) {
      if (call.includes('<unfinished')) { pending.set(tid, 'sync'); syncStart.set(tid, seq); } else syncs.push({ start: seq, done: seq });
    } else if (call.startsWith('<... pwrite64 resumed>') && pending.get(tid) === 'pwrite') {
      pending.delete(tid);
      lastWriteDone = seq;
    } else if (call.startsWith('<... fdatasync resumed>') && pending.get(tid) === 'sync') {
      pending.delete(tid);
      syncs.push({ start: syncStart.get(tid)!, done: seq });
    } else if (call.startsWith('write(1, "ISSUE ')) {
      issues++;
      const ok = lastWriteDone >= 0 && syncs.some((s) => s.start > lastWriteDone && s.done < seq);
      if (!ok) bad++;
      lastWriteDone = -1;
      syncs.length = 0;
    }
  }
  t.ok(mapFd >= 0, 'found the map file descriptor');
  t.equal(issues, n, `saw all ${n} issues`);
  t.equal(bad, 0, 'each issue came after its mark was written and fdatasync\'ed');
});
