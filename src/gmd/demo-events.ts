/**
 * The demo's running commentary: polls both GMDs' status over their control sockets once a second
 * and turns what changed into one readable line per event — the GMD's own events (peer lost and
 * back, stale marking, resync start/end, stop), the count of stale regions, resync progress, and a
 * process that stopped answering. The GMDs keep no event stream; their status holds the last events.
 */
import { callControl } from './control.js';
import type { DemoRehearsal, DemoSide } from './demo.js';
import type { GmdStatus } from './device/index.js';

interface Seen {
  pid: number | null;
  /** Events already shown, by time and text (the status keeps the last 50). */
  events: Set<string>;
  stale: number | null;
  resyncPercent: number | null;
  /** Answered its control socket before / said it stopped answering. */
  answered: boolean;
  silent: boolean;
}

function clock(): string {
  return new Date().toISOString().slice(11, 19);
}

/** Starts the commentary; the returned function stops it. */
export function watchDemo(r: DemoRehearsal, say: (line: string) => void, intervalMs = 1000): () => void {
  const seen = new Map<DemoSide, Seen>();
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const line = (machine: string, text: string) => say(`[${clock()}] ${machine}: ${text}`);

  const pollSide = async (s: DemoSide, firstRound: boolean): Promise<void> => {
    const { machine, pid, socket } = r.side(s);
    let w = seen.get(s);
    if (!w || w.pid !== pid) {
      // A new process (or none): its events start afresh.
      w = { pid, events: new Set(), stale: null, resyncPercent: null, answered: false, silent: false };
      seen.set(s, w);
    }
    if (pid === null) return;
    let st: GmdStatus;
    try {
      st = await callControl(socket, 'status', {}, 3000) as GmdStatus;
    } catch {
      // A process still starting has no socket yet; one that answered and no longer does is news.
      if (w.answered && !w.silent && r.side(s).pid === pid) line(machine, 'not answering on its control socket');
      w.silent = w.answered;
      return;
    }
    if (w.silent) line(machine, 'answering again');
    w.answered = true;
    w.silent = false;
    for (const e of st.events) {
      const key = `${e.time} ${e.message}`;
      if (w.events.has(key)) continue;
      w.events.add(key);
      // The events from before the demo was up were already summed up by its start-up lines.
      if (!firstRound) line(machine, e.message);
    }
    // Only stale regions: inconsistent ones are writes in flight, there and gone within a poll.
    const stale = st.map ? st.map.stale : null;
    if (stale !== null && stale !== w.stale && !(w.stale === null && stale === 0)) {
      const size = st.attrs?.regionSize ?? 0;
      line(machine, stale === 0 ? 'state map clean: every region is mirrored'
        : `${stale} region(s) marked stale (${stale * size} bytes to resynchronise)`);
    }
    w.stale = stale;
    const rs = st.resync;
    if (rs && !rs.complete) {
      const pct = Math.floor(rs.percent);
      if (pct !== w.resyncPercent) {
        line(machine, `resync ${rs.direction === 'push' ? `${machine} -> ${rs.peer}` : `${rs.peer} -> ${machine}`}: ${pct}% (${rs.doneBytes} of ${rs.totalBytes} bytes)`);
        w.resyncPercent = pct;
      }
    } else w.resyncPercent = null;
  };

  const round = async (first: boolean) => {
    await Promise.all((['primary', 'secondary'] as const).map((s) => pollSide(s, first).catch(() => undefined)));
    if (!stopped) timer = setTimeout(() => void round(false), intervalMs);
  };
  void round(true);
  return () => { stopped = true; if (timer) clearTimeout(timer); };
}
