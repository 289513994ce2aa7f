/**
 * gmdsizing (seed 3.7.1) on Linux: samples the write activity of block devices (/proc/diskstats), of
 * a running GMD (its own statistics) or of the device holding a file, every interval; reports per
 * interval and in total (writes, KB written, peak and average KB/s) and what that means for georm:
 * the link each mode needs, the HWM that absorbs the observed peaks in async mode, and the backlog a
 * link of a given bandwidth would build up.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { callControl } from '../gmd/control.js';
import type { GmdStats } from '../gmd/device/index.js';
import { GeormError } from '../util/errors.js';
import { formatBits, formatRate, formatSeconds } from './units.js';

/** Cumulative counters of one monitored thing at one moment. */
export interface Counters { reads: number; readBytes: number; writes: number; writeBytes: number }
export interface Source { name: string; kind: 'disk' | 'gmd'; read(): Promise<Counters> }

/** Sectors in /proc/diskstats are always 512 bytes, whatever the device's block size. */
const SECTOR = 512;

async function diskstats(): Promise<Map<string, { major: number; minor: number; c: Counters }>> {
  const text = await readFile('/proc/diskstats', 'utf8');
  const out = new Map<string, { major: number; minor: number; c: Counters }>();
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    out.set(f[2]!, { major: Number(f[0]), minor: Number(f[1]), c: { reads: Number(f[3]), readBytes: Number(f[5]) * SECTOR, writes: Number(f[7]), writeBytes: Number(f[9]) * SECTOR } });
  }
  return out;
}

export async function diskSource(name: string): Promise<Source> {
  const dev = name.replace(/^\/dev\//, '');
  if (!(await diskstats()).has(dev)) throw new GeormError('GEORM_ERR_USAGE', `-p ${name}: no block device '${dev}' in /proc/diskstats (see lsblk)`);
  return {
    name: dev, kind: 'disk',
    async read() {
      const d = (await diskstats()).get(dev);
      if (!d) throw new GeormError('GEORM_ERR_IO', `block device ${dev} disappeared while sampling`);
      return d.c;
    },
  };
}

/** The block device holding a file (or the device itself, for a device node). */
export async function fileSource(path: string): Promise<Source> {
  const st = await stat(path, { bigint: true }).catch((e: Error) => { throw new GeormError('GEORM_ERR_USAGE', `--file ${path}: ${e.message}`); });
  const dev = st.isBlockDevice() ? st.rdev : st.dev;
  // Linux's dev_t layout (glibc major()/minor()): 12 bits of major in the middle, minor around it.
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  for (const [name, d] of await diskstats()) if (d.major === major && d.minor === minor) return diskSource(name);
  throw new GeormError('GEORM_ERR_USAGE', `--file ${path}: its device ${major}:${minor} is not a block device in /proc/diskstats (a network or virtual filesystem?); monitor the GMD or disk instead`);
}

/** A running GMD: what the application wrote to it (before mirroring), from its control socket. */
export async function gmdSource(runDir: string, gmd: string): Promise<Source> {
  const sock = join(runDir, `${gmd}.sock`);
  const read = async (): Promise<Counters> => {
    const r = await callControl(sock, 'stat', {}, 5000) as { stats: GmdStats };
    return { reads: r.stats.reads, readBytes: r.stats.readBytes, writes: r.stats.localWrites, writeBytes: r.stats.localWriteBytes };
  };
  await read();
  return { name: gmd, kind: 'gmd', read };
}

export interface Interval { start: number; seconds: number; reads: number; readBytes: number; writes: number; writeBytes: number; writeRate: number }
export interface SourceSamples { name: string; kind: Source['kind']; intervals: Interval[] }

/** Samples every source each interval until `count` intervals are taken or `stop` resolves. */
export async function sample(sources: Source[], intervalSec: number, count: number, stop: Promise<void>, onStart?: () => void): Promise<SourceSamples[]> {
  const out: SourceSamples[] = sources.map((s) => ({ name: s.name, kind: s.kind, intervals: [] }));
  let before = await Promise.all(sources.map((s) => s.read()));
  onStart?.();
  let t0 = performance.now();
  const start = t0;
  let stopped = false;
  void stop.then(() => { stopped = true; });
  for (let i = 0; i < count && !stopped; i++) {
    // Sleep to the interval's planned end so that sampling does not drift over long runs.
    const due = start + (i + 1) * intervalSec * 1000;
    await Promise.race([new Promise((r) => setTimeout(r, Math.max(0, due - performance.now()))), stop]);
    const now = await Promise.all(sources.map((s) => s.read()));
    const t1 = performance.now();
    const seconds = (t1 - t0) / 1000;
    if (seconds <= 0) break;
    now.forEach((c, k) => {
      const b = before[k]!;
      const writeBytes = c.writeBytes - b.writeBytes;
      out[k]!.intervals.push({ start: (t0 - start) / 1000, seconds, reads: c.reads - b.reads, readBytes: c.readBytes - b.readBytes, writes: c.writes - b.writes, writeBytes, writeRate: writeBytes / seconds });
    });
    before = now;
    t0 = t1;
  }
  return out;
}

export interface SizingSummary {
  name: string;
  seconds: number;
  reads: number; readBytes: number; writes: number; writeBytes: number;
  averageWriteRate: number; peakWriteRate: number; minimumWriteRate: number;
  /** Share of bytes that were writes (only writes cross the link). */
  writeShare: number;
}

export function summarize(name: string, iv: Interval[]): SizingSummary {
  const seconds = iv.reduce((a, i) => a + i.seconds, 0);
  const sum = (k: 'reads' | 'readBytes' | 'writes' | 'writeBytes') => iv.reduce((a, i) => a + i[k], 0);
  const writeBytes = sum('writeBytes'), readBytes = sum('readBytes');
  return {
    name, seconds, reads: sum('reads'), readBytes, writes: sum('writes'), writeBytes,
    averageWriteRate: seconds > 0 ? writeBytes / seconds : 0,
    peakWriteRate: Math.max(0, ...iv.map((i) => i.writeRate)),
    minimumWriteRate: iv.length ? Math.min(...iv.map((i) => i.writeRate)) : 0,
    writeShare: readBytes + writeBytes > 0 ? writeBytes / (readBytes + writeBytes) : 0,
  };
}

/** All sources added up, interval by interval (the seed's system-wide line). */
export function combine(all: SourceSamples[]): Interval[] {
  const n = Math.min(...all.map((s) => s.intervals.length));
  return Array.from({ length: n }, (_, i) => {
    const parts = all.map((s) => s.intervals[i]!);
    const seconds = parts[0]!.seconds;
    const writeBytes = parts.reduce((a, p) => a + p.writeBytes, 0);
    return { start: parts[0]!.start, seconds, reads: parts.reduce((a, p) => a + p.reads, 0), readBytes: parts.reduce((a, p) => a + p.readBytes, 0), writes: parts.reduce((a, p) => a + p.writes, 0), writeBytes, writeRate: writeBytes / seconds };
  });
}

/**
 * A link carrying `linkRate` payload bytes per second behind writes arriving as `iv`: the most bytes
 * waiting at any interval's end (what an async HWM must hold so no write waits), how many are still
 * waiting at the end, and how long the worst backlog takes to drain.
 */
export function backlog(iv: Interval[], linkRate: number): { maxBytes: number; endBytes: number; drainSeconds: number } {
  let q = 0, max = 0;
  for (const i of iv) { q = Math.max(0, q + i.writeBytes - linkRate * i.seconds); max = Math.max(max, q); }
  return { maxBytes: max, endBytes: q, drainSeconds: linkRate > 0 ? max / linkRate : Infinity };
}

export interface GeormAdvice {
  efficiency: number;
  /** Raw link bandwidth (bytes/s) each mode needs: sync and mwc carry every write as it happens, so
   * the peak; async may lag, so the average (plus the HWM below to absorb the peaks). */
  syncMwcLink: number;
  asyncLink: number;
  /** The async HWM that would have kept every write from waiting on a link of exactly `asyncLink`. */
  hwmForAsyncLink: number;
  link?: { bandwidth: number; payload: number; enoughForSyncMwc: boolean; enoughForAsync: boolean; maxBacklogBytes: number; endBacklogBytes: number; drainSeconds: number };
}

export function advise(iv: Interval[], s: SizingSummary, efficiency: number, bandwidth?: number): GeormAdvice {
  const a: GeormAdvice = {
    efficiency,
    syncMwcLink: s.peakWriteRate / efficiency,
    asyncLink: s.averageWriteRate / efficiency,
    hwmForAsyncLink: backlog(iv, s.averageWriteRate).maxBytes,
  };
  if (bandwidth !== undefined) {
    const payload = bandwidth * efficiency;
    const b = backlog(iv, payload);
    a.link = { bandwidth, payload, enoughForSyncMwc: payload >= s.peakWriteRate, enoughForAsync: payload >= s.averageWriteRate, maxBacklogBytes: b.maxBytes, endBacklogBytes: b.endBytes, drainSeconds: b.drainSeconds };
  }
  return a;
}

const kb = (b: number) => (b / 1024).toFixed(1);
const pad = (v: string | number, w: number) => String(v).padStart(w);

/** The seed's report: one block per source and interval, a total line, and (verbose) the advice. */
export function formatReport(all: SourceSamples[], summaries: SizingSummary[], total: SizingSummary, adv: GeormAdvice, verbose: boolean): string {
  const lines: string[] = [];
  for (const s of all) {
    lines.push(`${s.kind === 'gmd' ? 'GMD' : 'Disk'} ${s.name}`);
    lines.push(`${pad('time(s)', 8)} ${pad('Reads', 9)} ${pad('Writes', 9)} ${pad('KB read', 12)} ${pad('KB written', 12)} ${pad('KB/s written', 13)}`);
    for (const i of s.intervals) lines.push(`${pad(i.start.toFixed(1), 8)} ${pad(i.reads, 9)} ${pad(i.writes, 9)} ${pad(kb(i.readBytes), 12)} ${pad(kb(i.writeBytes), 12)} ${pad(kb(i.writeRate), 13)}`);
    lines.push('');
  }
  lines.push(`${pad('', 12)} ${pad('seconds', 8)} ${pad('reads', 9)} ${pad('writes', 9)} ${pad('KB written', 12)} ${pad('avg KB/s', 10)} ${pad('peak KB/s', 10)} ${pad('min KB/s', 10)}`);
  for (const s of [...summaries, ...(summaries.length > 1 ? [total] : [])]) {
    lines.push(`${pad(s.name.slice(0, 12), 12)} ${pad(s.seconds.toFixed(1), 8)} ${pad(s.reads, 9)} ${pad(s.writes, 9)} ${pad(kb(s.writeBytes), 12)} ${pad(kb(s.averageWriteRate), 10)} ${pad(kb(s.peakWriteRate), 10)} ${pad(kb(s.minimumWriteRate), 10)}`);
  }
  if (!verbose) return lines.join('\n');
  lines.push('', `What this means for georm (GeoMessage carries ${(adv.efficiency * 100).toFixed(0)}% of a link's bandwidth as payload; only writes cross the link, ${(total.writeShare * 100).toFixed(0)}% of the bytes here):`);
  lines.push(`  sync / mwc : every write waits for the peer -> the link must carry the peak: ${formatBits(adv.syncMwcLink)} (${formatRate(total.peakWriteRate)} of writes)`);
  lines.push(`  async      : the peer may lag -> the link must carry the average: ${formatBits(adv.asyncLink)} (${formatRate(total.averageWriteRate)} of writes),`);
  lines.push(`               with an HWM of at least ${kb(adv.hwmForAsyncLink)} KB to absorb the observed peaks on such a link`);
  if (total.averageWriteRate > 0) lines.push(`  peak / average = ${(total.peakWriteRate / total.averageWriteRate).toFixed(1)} (the seed calls 7-10x uneven: async with a large HWM, or a link for the peak)`);
  if (adv.link) {
    const l = adv.link;
    lines.push(`  on a ${formatBits(l.bandwidth)} link (${formatRate(l.payload)} of payload): sync/mwc ${l.enoughForSyncMwc ? 'keep up' : 'would slow the application to the link'}; async ${l.enoughForAsync ? 'keeps up on average' : 'falls behind for good (stale regions grow)'}`);
    lines.push(`    backlog: at most ${kb(l.maxBacklogBytes)} KB (an async HWM this large lets no write wait), ${kb(l.endBacklogBytes)} KB left at the end, worst backlog drains in ${formatSeconds(l.drainSeconds)}`);
  }
  return lines.join('\n');
}
