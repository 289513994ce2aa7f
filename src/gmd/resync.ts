import type { Backend } from '../../nbd/backend.js';
import type { Logger } from '../util/log.js';
import type { MapPort, PeerTransport } from './ports.js';
import { SVC_FLUSH, SVC_READ, SVC_WRITE, SVC_ZERO, KIND_RESYNC, FLAG_TRIM, FLAG_NO_HOLE, encodeHeader, type ControlMessage } from './protocol.js';
import type { RangeLock } from './rangelock.js';
import { checkRuns, holesAllowed, sourceRuns, type ZeroRun } from './zero-runs.js';
import { CELL_CLEAN, CELL_STALE } from '../statemap/index.js';

/** Bytes copied to the peer per flush there before their regions are cleaned. */
const DURABLE_BATCH = 16 * 1024 * 1024;

const ZEROS = Buffer.alloc(64 * 1024);
/** Whether every byte of `b` is zero (memcmp against a zero page, 64 KiB at a time). */
export function allZero(b: Buffer): boolean {
  for (let at = 0; at < b.length; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, b.length - at);
    if (!b.subarray(at, at + n).equals(n === ZEROS.length ? ZEROS : ZEROS.subarray(0, n))) return false;
  }
  return true;
}

export interface ResyncProgress {
  direction: 'push' | 'pull';
  peer: string;
  totalBytes: number;
  doneBytes: number;
  leftBytes: number;
  percent: number;
  /** Recent rate, bytes per second. */
  rateBps: number;
  etaSec: number | null;
  elapsedSec: number;
  complete: boolean;
}

export interface ResyncOptions {
  direction: 'push' | 'pull';
  peer: string;
  net: PeerTransport;
  map: MapPort;
  local: Backend;
  lock: RangeLock;
  syncRate: number;
  regionSize: number;
  /** Bytes per second; 0 = unlimited. */
  rateLimit: number;
  /** Async GMDs send resync data on the ordered channel, behind queued application writes. */
  ordered: boolean;
  size: number;
  stats: { resyncBytesSent: number; resyncBytesReceived: number; resyncRegions: number };
  isActive: () => boolean;
  control: (msg: ControlMessage) => Promise<unknown>;
  logger: Logger;
}

/**
 * Copies dirty regions from the side whose map is dirty to the clean side (DESIGN §4 item 3).
 *
 * push: this side's map is dirty; each chunk is locked against application writes, read locally,
 *       written on the peer, then the regions are cleaned. The map is the progress record, so an
 *       interrupted resync resumes where it stopped. Only stale regions are copied: a marked region
 *       that is not stale is a mirrored write waiting for the clean gate (see push()). It is done
 *       when a pass finds nothing stale under the lock.
 * pull: the peer's map is dirty and applications write here. Each chunk is locked here, read from
 *       the peer, written locally, then the peer cleans the regions. Reads and writes that touch a
 *       region not yet pulled pull it first (pullOnDemand), so nothing stale is ever served.
 */
export class Resync {
  private readonly o: ResyncOptions;
  private stopped = false;
  running = false;
  /** pull mode: regions still to fetch from the peer (1 = pending). */
  private pending: Uint8Array | null = null;
  private pendingCount = 0;
  private toClean: number[] = [];
  private total = 0;
  private doneBytes = 0;
  private readonly started = Date.now();
  private samples: Array<[number, number]> = [];
  private finished: Promise<ResyncProgress> | null = null;
  /**
   * Set when the source's map had nothing left to copy while the peer was still active. Byte counts
   * alone cannot say this: an application write mirrored to both sides may clean a region before the
   * resync reaches it, so doneBytes can end below the total of a finished resync.
   */
  private finishedClean = false;

  constructor(o: ResyncOptions) { this.o = o; }

  get pulling(): boolean { return this.pendingCount > 0; }

  run(): Promise<ResyncProgress> {
    this.running = true;
    this.finished = (this.o.direction === 'push' ? this.push() : this.pull())
      .finally(() => { this.running = false; })
      .then(() => this.progress());
    return this.finished;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.finished) await this.finished.catch(() => undefined);
  }

  progress(): ResyncProgress {
    const now = Date.now();
    this.samples = this.samples.filter(([t]) => now - t <= 5000);
    const first = this.samples[0];
    const last = this.samples[this.samples.length - 1];
    const rate = first && last && last[0] > first[0] ? (last[1] - first[1]) * 1000 / (last[0] - first[0])
      : this.doneBytes * 1000 / Math.max(1, now - this.started);
    const left = this.finishedClean ? 0 : Math.max(0, this.total - this.doneBytes);
    return {
      direction: this.o.direction, peer: this.o.peer, totalBytes: this.total, doneBytes: this.doneBytes, leftBytes: left,
      percent: this.finishedClean || !this.total ? 100 : Math.min(100, this.doneBytes * 100 / this.total),
      rateBps: Math.round(rate), etaSec: rate > 0 ? Math.round(left / rate) : null,
      elapsedSec: (now - this.started) / 1000, complete: !this.running && left === 0 && !this.stopped,
    };
  }

  private active(): boolean { return !this.stopped && this.o.isActive(); }

  /** Contiguous dirty regions grouped into chunks of about the sync rate. */
  private chunks(regions: number[]): Array<[first: number, last: number]> {
    const per = Math.max(1, Math.floor(this.o.syncRate / this.o.regionSize));
    const out: Array<[number, number]> = [];
    let i = 0;
    while (i < regions.length) {
      const first = regions[i]!;
      let last = first;
      i++;
      while (i < regions.length && regions[i] === last + 1 && last - first + 1 < per) { last = regions[i]!; i++; }
      out.push([first, last]);
    }
    return out;
  }

  private byteRange(first: number, last: number): [number, number] {
    const start = first * this.o.regionSize;
    return [start, Math.min(this.o.size, (last + 1) * this.o.regionSize)];
  }

  /** Up to `window` chunks in flight; `op` resolves when one chunk is done. */
  private async pipeline(chunks: Array<[number, number]>, op: (c: [number, number]) => Promise<void>): Promise<void> {
    const window = Math.max(2, Math.min(64, Math.floor(8 * 1024 * 1024 / Math.max(this.o.syncRate, this.o.regionSize))));
    let next = 0;
    let failure: unknown = null;
    const worker = async () => {
      while (next < chunks.length && this.active() && failure === null) {
        const c = chunks[next++]!;
        try { await op(c); } catch (e) { failure = e; }
        await this.throttle();
      }
    };
    await Promise.all(Array.from({ length: Math.min(window, chunks.length) }, worker));
    if (failure !== null) throw failure as Error;
  }

  private async throttle(): Promise<void> {
    const limit = this.o.rateLimit;
    if (!limit) return;
    const ahead = this.doneBytes * 1000 / limit - (Date.now() - this.started);
    if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
  }

  private account(bytes: number, regions: number): void {
    this.doneBytes += bytes;
    this.o.stats.resyncRegions += regions;
    this.samples.push([Date.now(), this.doneBytes]);
    if (this.samples.length > 200) this.samples.splice(0, 100);
  }

  /**
   * push: regions copied to the peer but not yet known durable there. They are cleaned only after a
   * flush on the peer (fdatasync of its volume) that was issued after every one of their writes was
   * acknowledged — one flush per DURABLE_BATCH bytes instead of one per region (DESIGN §4 item 2:
   * a region left marked costs a resync, never data).
   */
  private copied: number[] = [];
  private copiedBytes = 0;
  private flushing: Promise<void> | null = null;
  private lastDurable = Date.now();

  /** Rate-limited resyncs record progress about four times a second, so an interruption loses little. */
  private durableBatch(): number {
    const { rateLimit, syncRate } = this.o;
    return rateLimit ? Math.max(syncRate, Math.min(DURABLE_BATCH, Math.floor(rateLimit / 4))) : DURABLE_BATCH;
  }

  private async makeDurable(all: boolean): Promise<void> {
    if (!all && (this.flushing || (this.copiedBytes < this.durableBatch() && Date.now() - this.lastDurable < 500))) return;
    while (this.flushing) await this.flushing.catch(() => undefined);
    if (this.copied.length === 0) return;
    const regions = this.copied;
    this.copied = [];
    this.copiedBytes = 0;
    this.lastDurable = Date.now();
    this.flushing = (async () => {
      await this.o.net.request(this.o.peer, SVC_FLUSH, Buffer.alloc(0), { ordered: this.o.ordered });
      // A peer dropped meanwhile stops this engine: its regions stay marked for the next resync.
      if (!this.active()) return;
      for (const r of regions) this.o.map.cleanRegion(r);
    })();
    try { await this.flushing; } finally { this.flushing = null; }
  }

  private async push(): Promise<void> {
    const { map, lock, local, net, peer } = this.o;
    this.total = map.dirtyRegions().length * this.o.regionSize;
    let idlePasses = 0;
    while (this.active()) {
      const dirty = map.dirtyRegions();
      if (dirty.length === 0) { this.finishedClean = true; break; }
      const before = this.doneBytes;
      await this.pipeline(this.chunks(dirty), async ([first, last]) => {
        const [start, end] = this.byteRange(first, last);
        await lock.lock(start, end);
        try {
          // Only stale regions travel. A region marked but not stale has a live reference in this
          // process: never a write still running here (that holds the range lock we now hold, and a
          // write started before the join ends stale, which the lock wait lets us see), so either a
          // write done on both sides that waits for the clean gate's flush, or an async write already
          // queued to this peer (a failure drops the peer and stops us). The peer has, or will get,
          // that data; copying it again is wasted and, since cleanRegion cannot clean a region the
          // gate holds, every later pass would copy it again until the gate's next flush (up to 30 s,
          // or never under steady writes without flushes). After a restart no such references exist:
          // the map loads every marked cell as stale.
          let any = false;
          for (let r = first; r <= last; r++) if (map.cell(r) === CELL_STALE) { any = true; break; }
          if (!any) return;
          const data = await local.read(start, end - start);
          if (allZero(data)) await this.pushZeros(start, data.length);
          else await net.request(peer, SVC_WRITE, [encodeHeader(KIND_RESYNC, 0, start, data.length), data], { ordered: this.o.ordered });
          for (let r = first; r <= last; r++) this.copied.push(r);
          this.copiedBytes += data.length;
          this.o.stats.resyncBytesSent += data.length;
          this.account(data.length, last - first + 1);
        } finally { lock.release(start, end); }
        // Other chunks keep travelling while one worker waits for the peer's flush.
        await this.makeDurable(false);
      });
      await this.makeDurable(true);
      if (this.doneBytes === before) {
        // A pass that copied nothing saw every marked region under its lock and none was stale: what
        // is left are the gate's and the async queue's references (above). Done, unless a region
        // turned stale after we looked at it: then go round again.
        if (this.active() && map.counts().stale === 0) { this.finishedClean = true; break; }
        if (++idlePasses > 500) break;
        await new Promise((r) => setTimeout(r, 10));
      } else idlePasses = 0;
      if (this.doneBytes > this.total) this.total = this.doneBytes + map.dirtyRegions().length * this.o.regionSize;
    }
    await map.flush();
    if (this.active()) await this.o.control({ op: 'resync-done' }).catch(() => undefined);
  }

  /**
   * A chunk that reads as zeros travels as zeros (16 bytes, not the data), one message per run of
   * the source's layout: holes allowed where this volume has a hole (the peer punches where it can
   * and stays sparse), NO_HOLE where it has the range allocated (the peer keeps or makes it
   * allocated, so a thick copy stays thick). Called with the chunk's range lock held, so the layout
   * is the one the zeros were read from.
   */
  private async pushZeros(start: number, length: number): Promise<void> {
    const { net, peer, local, ordered } = this.o;
    const runs = await sourceRuns(local, start, length) ?? holesAllowed(start, length);
    await Promise.all(runs.map((r) =>
      net.request(peer, SVC_ZERO, encodeHeader(KIND_RESYNC, r.hole ? FLAG_TRIM : FLAG_NO_HOLE, r.offset, r.length), { ordered })));
  }

  private async pull(): Promise<void> {
    const { lock } = this.o;
    const reply = await this.o.control({ op: 'cells' }) as { cells: string };
    const cells = Buffer.from(reply.cells, 'base64');
    this.pending = new Uint8Array(cells.length);
    const regions: number[] = [];
    for (let r = 0; r < cells.length; r++) if (cells[r] !== CELL_CLEAN) { this.pending[r] = 1; regions.push(r); }
    this.pendingCount = regions.length;
    this.total = regions.length * this.o.regionSize;
    await this.pipeline(this.chunks(regions), async ([first, last]) => {
      const [start, end] = this.byteRange(first, last);
      await lock.lock(start, end);
      try { await this.pullRange(first, last); } finally { lock.release(start, end); }
      await this.flushCleaned(false);
    });
    await this.flushCleaned(true);
    if (this.pendingCount === 0) {
      this.finishedClean = this.active();
      await this.o.control({ op: 'resync-done' }).catch(() => undefined);
    } else this.pendingCount = 0; // interrupted: the peer's map still records what is left
  }

  /** Called with the range lock held by the caller. */
  async pullOnDemand(first: number, last: number): Promise<void> {
    if (!this.pending || this.pendingCount === 0) return;
    await this.pullRange(first, last);
  }

  private async pullRange(first: number, last: number): Promise<void> {
    const p = this.pending!;
    let r = first;
    while (r <= last) {
      if (!p[r]) { r++; continue; }
      let e = r;
      while (e + 1 <= last && p[e + 1]) e++;
      const [start, end] = this.byteRange(r, e);
      const data = await this.o.net.request(this.o.peer, SVC_READ, encodeHeader(KIND_RESYNC, 0, start, end - start));
      if (data.length !== end - start) throw new Error(`resync read returned ${data.length} bytes, expected ${end - start}`);
      if (allZero(data)) await this.pullZeros(start, data.length);
      else await this.o.local.write(start, data, { fua: false });
      for (let i = r; i <= e; i++) { if (p[i]) { p[i] = 0; this.pendingCount--; this.toClean.push(i); } }
      this.o.stats.resyncBytesReceived += data.length;
      this.account(data.length, e - r + 1);
      r = e + 1;
    }
  }

  /**
   * A pulled range that reads as zeros is zeroed here after the peer's layout, as pushZeros does on
   * the peer. SVC_READ carries bytes only, so the layout is asked for separately ('zero-runs', one
   * round trip per all-zero chunk); the range lock held by the caller keeps mirrored writes off the
   * range meanwhile, so it is the layout the zeros were read from.
   */
  private async pullZeros(start: number, length: number): Promise<void> {
    const runs = await this.peerRuns(start, length) ?? holesAllowed(start, length);
    for (const r of runs) {
      await this.o.local.zero(r.offset, r.length, { fua: false, noHole: !r.hole, fastZero: false, deallocate: r.hole });
    }
  }

  /** The peer's runs, or null when it cannot tell (no extents) or does not know 'zero-runs'. */
  private async peerRuns(start: number, length: number): Promise<ZeroRun[] | null> {
    let reply: { runs?: unknown } | null;
    try {
      reply = await this.o.control({ op: 'zero-runs', offset: start, length }) as { runs?: unknown } | null;
    } catch (e) {
      // A peer from before 'zero-runs' refuses the operation: zero as resync always did. A lost
      // link lands here too, harmlessly: the bytes are right either way, and the clean-regions
      // request that follows fails on its own.
      this.o.logger.debug({ err: (e as Error).message }, 'resync: peer gave no zero-runs; holes allowed');
      return null;
    }
    return checkRuns(reply?.runs, start, length);
  }

  private async flushCleaned(all: boolean): Promise<void> {
    if (this.toClean.length === 0 || (!all && this.toClean.length < 256)) return;
    const regions = this.toClean.splice(0);
    await this.o.local.flush();
    await this.o.control({ op: 'clean-regions', regions });
  }
}
