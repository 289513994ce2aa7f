import { formatSize } from '../util/size.js';
import type { GmdStats, GmdStatus } from './device/index.js';
import type { ResyncProgress } from './resync.js';

/** "0:01:05" */
export function formatDuration(sec: number | null): string {
  if (sec === null || !Number.isFinite(sec)) return '--:--';
  const s = Math.round(sec);
  return `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

export function formatResync(p: ResyncProgress): string {
  const dir = p.direction === 'push' ? `to ${p.peer}` : `from ${p.peer}`;
  if (p.complete) return `resync ${dir}: complete, ${formatSize(p.doneBytes)} in ${p.elapsedSec.toFixed(1)} s`;
  return `resync ${dir}: ${p.percent.toFixed(1)}% done, ${formatSize(p.leftBytes)} left, `
    + `${(p.rateBps / 1e6).toFixed(1)} MB/s, eta ${formatDuration(p.etaSec)}`;
}

/** `georm status`: one block per GMD, in the spirit of `drbdadm status`. */
export function formatStatus(s: GmdStatus): string {
  const lines: string[] = [];
  lines.push(`${s.name} role:${s.role ?? '-'} state:${s.state} mode:${s.mode ?? '-'} minor:${s.minor} size:${formatSize(s.size)} machine:${s.machine}`);
  if (s.map) {
    lines.push(`  state-map: regions:${s.map.regions} clean:${s.map.clean} inconsistent:${s.map.inconsistent} stale:${s.map.stale}${s.map.crashed ? ' crashed:yes' : ''}`);
  }
  for (const p of s.peers) {
    const what = p.active ? 'mirroring' : p.downGiven ? 'down (gmddown)' : 'not mirroring';
    lines.push(`  ${p.machine} link:${p.link} ${what}`);
  }
  if (s.resync) lines.push(`    ${formatResync(s.resync)}`);
  const st = s.stats;
  lines.push(`  written:${formatSize(st.localWriteBytes)} mirrored:${formatSize(st.remoteWriteBytes)} received:${formatSize(st.incomingWriteBytes)}`
    + ` resync-sent:${formatSize(st.resyncBytesSent)} resync-received:${formatSize(st.resyncBytesReceived)}`
    + (st.unflushedRegions ? ` unflushed:${st.unflushedRegions}` : '')
    + (s.mode === 'async' ? ` hwm-fallbacks:${st.hwmFallbacks} hwm-waits:${st.hwmWaits} catch-ups:${st.hwmCatchUps} in-flight:${formatSize(st.asyncInflightBytes)}` : ''));
  return lines.join('\n');
}

/** One gmdstat sample: counters now, counters at the start of the interval, interval seconds. */
export interface StatSample { name: string; peer: string | null; now: GmdStats; before: GmdStats | null; seconds: number }

const kb = (b: number) => (b / 1024).toFixed(1);

/** The seed's gmdstat layout (Figure "Sample output for the gmdstat command"). */
export function formatGmdstat(samples: StatSample[], summary: boolean): string {
  const out: string[] = [];
  out.push('GMDs                       Device Statistics');
  out.push(`${'name'.padEnd(14)}${['lx', 'lx/s', 'lw', 'lw/s', 'rx', 'rw'].map((h) => h.padStart(11)).join('')}`);
  const rate = (s: StatSample, f: (x: GmdStats) => number) => {
    const d = f(s.now) - (s.before ? f(s.before) : 0);
    return s.seconds > 0 ? d / s.seconds : 0;
  };
  for (const s of samples) {
    const lx = (x: GmdStats) => x.readBytes + x.localWriteBytes;
    out.push(`${s.name.padEnd(14)}${[kb(lx(s.now)), kb(rate(s, lx)), kb(s.now.localWriteBytes), kb(rate(s, (x) => x.localWriteBytes)),
      String(s.now.incomingWrites), kb(s.now.incomingWriteBytes)].map((v) => v.padStart(11)).join('')}`);
  }
  if (!summary) {
    out.push('Hosts                      GeoMessage Statistics');
    out.push(`${'peer'.padEnd(14)}${['xm', 'xm/s', 'rt', 'rp', 'kw', 'kw/s', 'kr'].map((h) => h.padStart(11)).join('')}`);
    for (const s of samples) {
      if (!s.peer) continue;
      out.push(`${s.peer.padEnd(14)}${[String(s.now.remoteWrites), rate(s, (x) => x.remoteWrites).toFixed(2), String(s.now.remoteFailures),
        String(s.now.remoteWrites - s.now.remoteFailures), kb(s.now.remoteWriteBytes + s.now.resyncBytesSent),
        kb(rate(s, (x) => x.remoteWriteBytes + x.resyncBytesSent)), kb(s.now.resyncBytesReceived)].map((v) => v.padStart(11)).join('')}`);
    }
    out.push('lx = local transfers (kb), lx/s = local transfers (kb)/sec, lw = local writes (kb), lw/s = local writes (kb)/sec,');
    out.push('rx = remote transfers, rw = remote writes (kb), xm = transmits, xm/s = transmits/sec, rt = failures,');
    out.push('rp = replies, kw = kb written to the peer, kw/s = kb/sec written to the peer, kr = kb read from the peer');
  }
  return out.join('\n');
}
