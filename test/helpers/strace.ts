/**
 * Reading `strace -f -xx` logs for ordering checks: which write reached which file when, and which
 * fdatasync began and ended around it. Each call gets the log line number at which it began and the
 * one at which it ended (strace writes one line per event, in the order it saw them, so line
 * numbers order the events of all threads). A call split by another thread ("<unfinished ...>" …
 * "<... resumed>") ends on its resumed line. -xx prints every string byte as \xNN.
 */
export interface TracedCall {
  tid: number;
  name: string;
  /** The call's arguments as strace printed them (the text between the parentheses). */
  args: string;
  /** The return value text after " = " (e.g. "4096", "-1 EAGAIN (…)"). */
  result: string;
  start: number;
  done: number;
}

/** A pwrite64/pwritev/pwritev2 of `len` bytes at `offset` on `fd`; `buf` when strace printed the data whole. */
export interface TracedWrite { fd: number; offset: number; len: number; buf: Buffer | null; start: number; done: number; ok: boolean }

export function parseStrace(text: string): TracedCall[] {
  const calls: TracedCall[] = [];
  const pending = new Map<number, { name: string; head: string; start: number }>();
  let line = 0;
  for (const raw of text.split('\n')) {
    line++;
    const m = /^(\d+)\s+(.*)$/.exec(raw);
    if (!m) continue;
    const tid = Number(m[1]);
    const body = m[2]!;
    const resumed = /^<\.\.\. (\w+) resumed>(.*)$/.exec(body);
    if (resumed) {
      const p = pending.get(tid);
      if (!p || p.name !== resumed[1]) continue;
      pending.delete(tid);
      calls.push(finish(tid, p.name, p.head + resumed[2]!, p.start, line));
      continue;
    }
    const call = /^(\w+)\((.*)$/.exec(body);
    if (!call) continue; // signals, exits
    const rest = call[2]!;
    if (rest.endsWith('<unfinished ...>')) { pending.set(tid, { name: call[1]!, head: rest.slice(0, -'<unfinished ...>'.length).trimEnd(), start: line }); continue; }
    calls.push(finish(tid, call[1]!, rest, line, line));
  }
  return calls;
}

function finish(tid: number, name: string, text: string, start: number, done: number): TracedCall {
  // strace pads short calls to a column before " = result".
  const m = /\)\s*= ([^=]*)$/.exec(text);
  return m
    ? { tid, name, args: text.slice(0, m.index), result: m[1]!.trim(), start, done }
    : { tid, name, args: text, result: '', start, done };
}

const hex = (s: string): Buffer => Buffer.from(s.replace(/\\x/g, ''), 'hex');

/** The path an openat opened and the fd it got, or null. */
export function openedPath(c: TracedCall): { path: string; fd: number } | null {
  if (c.name !== 'openat') return null;
  const m = /^AT_FDCWD, "((?:\\x[0-9a-f]{2})*)"/.exec(c.args);
  const fd = Number.parseInt(c.result, 10);
  return m && fd >= 0 ? { path: hex(m[1]!).toString(), fd } : null;
}

/** The positioned writes in the trace (pwrite64, pwritev, pwritev2), with their data when printed whole. */
export function positionedWrites(calls: TracedCall[]): TracedWrite[] {
  const out: TracedWrite[] = [];
  for (const c of calls) {
    const ok = /^\d+/.test(c.result);
    if (c.name === 'pwrite64') {
      const m = /^(\d+), "((?:\\x[0-9a-f]{2})*)"(\.\.\.)?, (\d+), (\d+)$/.exec(c.args);
      if (m) out.push({ fd: Number(m[1]), offset: Number(m[5]), len: Number(m[4]), buf: m[3] ? null : hex(m[2]!), start: c.start, done: c.done, ok });
    } else if (c.name === 'pwritev' || c.name === 'pwritev2') {
      const fd = Number(/^(\d+),/.exec(c.args)?.[1] ?? -1);
      const lens = [...c.args.matchAll(/iov_len=(\d+)/g)].reduce((n, x) => n + Number(x[1]), 0);
      const tail = /\], \d+, (\d+)(?:, [^,]*)?$/.exec(c.args);
      if (fd >= 0 && tail) out.push({ fd, offset: Number(tail[1]), len: lens, buf: null, start: c.start, done: c.done, ok });
    }
  }
  return out;
}

/** The fdatasync/fsync calls on `fd` (the ones that succeeded). */
export function syncsOf(calls: TracedCall[], fd: number): Array<{ start: number; done: number }> {
  return calls.filter((c) => (c.name === 'fdatasync' || c.name === 'fsync') && c.args === String(fd) && c.result === '0')
    .map((c) => ({ start: c.start, done: c.done }));
}

