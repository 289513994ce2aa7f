/**
 * A running state map: the in-memory cells of one GMD's map with their counts, the write protocol
 * (beginWrite/endWrite and the cell changes of resync, dirty/clean, unify and load), and open/close.
 * Its parts: the activity log (activity-log.ts), the group-commit writer (writer.ts) and the file
 * operations (files.ts).
 */
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { releasePidLock } from '../util/pidlock.js';
import { ActivityLog } from './activity-log.js';
import { createMapFile, ioError, lockMap, readMap } from './files.js';
import {
  CELL_CLEAN, CELL_INFLIGHT_MAX, CELL_STALE, FLAG_OPEN, StateMapError, newGenerationId, type StateMapHeader, type StateMapIdentity,
} from './format.js';
import { CommitWriter, type Batch } from './writer.js';

export { readStateMapFile, resizeStateMap, type StateMapSnapshot } from './files.js';

export interface StateMapCounts { regions: number; clean: number; inconsistent: number; stale: number }

export interface StateMapOptions {
  /**
   * Activity-log capacity in regions: how many idle regions may stay marked on disk after their
   * writes completed, so a hot region costs one durable marking instead of one per write. It is
   * the bound on extra resync after a crash (see README.md). Default: the regions of 1 GiB
   * (32768 at 32 KiB), capped at the device's region count.
   */
  activityLogRegions?: number;
  /** An idle region leaves the activity log (is cleaned on disk) after this long. Default 5000 ms. */
  idleCleanMs?: number;
  /** Period of the background writer that persists lazy cleaning. Default 1000 ms. */
  lazyFlushMs?: number;
}

export interface StateMapStats {
  /** beginWrite calls that needed no disk write (regions already durably marked). */
  fastPath: number;
  /** Regions newly marked on disk. */
  marks: number;
  /** Durable commits (page writes + one fdatasync) and lazy (cleaning-only, no fdatasync) writes. */
  commits: number;
  lazyWrites: number;
  /** Regions cleaned on disk when they left the activity log. */
  evictions: number;
  /** Regions currently in the activity log (idle, marked on disk) and with writes in flight. */
  activityLog: number;
  inflightRegions: number;
}

const RESOLVED: Promise<void> = Promise.resolve();
/** Default activity log: 1 GiB of device (DRBD's default covers ≈ 4.8 GiB). */
const DEFAULT_AL_BYTES = 1024 ** 3;

/**
 * The state map of one GMD on one machine: a 4-bit cell per region saying whether the peer holds
 * the same data (0x0), a write is in flight (0x1–0x7, count of writes, saturating) or the peer
 * lacks data written here (0xf).
 *
 * Safety invariant (DESIGN §4.2): every region whose in-memory cell is not clean, or that has a
 * write in flight, is non-zero in the on-disk image *durably* before the write is issued.
 * beginWrite() resolves only once that holds for its regions. Regions go back to zero on disk only
 * lazily, when they are idle and clean in memory, so the disk never claims "clean" for a region
 * that might differ; at worst it claims "dirty" for a clean one, which costs a resync, never data.
 *
 * Cheap marking:
 *  - Activity log: a region marked on disk stays marked while it is hot (CLOCK ring of idle
 *    regions, capacity `activityLogRegions`), so repeated writes to hot regions need no disk access
 *    and no allocation (≈ 0.1 µs for beginWriteCb + endWrite).
 *  - Group commit: all marks requested while a commit is running are written together by the
 *    next one, with one fdatasync for all of them.
 *  - Lazy cleaning: regions evicted from the activity log are zeroed in the image and written by
 *    the next commit or the background writer, without an fdatasync of their own.
 *
 * All writes to the file go through one serial loop, so page images never race each other.
 */
export class StateMap {
  readonly path: string;
  readonly identity: StateMapIdentity;
  readonly regionCount: number;
  /** The last run did not close the map cleanly (crash, kill -9, power loss). */
  readonly crashed: boolean;

  private readonly fh: FileHandle;
  private readonly lockPath: string;
  private readonly mem: Uint8Array;
  /** The same cells as 32-bit words (whole words only), for fast scans. */
  private readonly words: Uint32Array;
  private nStale = 0;
  private nInconsistent = 0;
  /** In-flight counts and the activity log of idle regions still marked on disk. */
  private readonly al: ActivityLog;
  /** The disk image, header and group-commit writer. */
  private readonly w: CommitWriter;
  private readonly alCapacity: number;
  /** Cleaned-but-unwritten regions that trigger a write: max(64, activity log / 8). */
  private readonly cleanBatch: number;
  private closed = false;
  private readonly timer: NodeJS.Timeout;
  private readonly st = { fastPath: 0, marks: 0, commits: 0, lazyWrites: 0, evictions: 0 };

  private constructor(path: string, fh: FileHandle, lockPath: string, header: StateMapHeader, slot: 0 | 1, disk: Buffer,
    mem: Uint8Array, opts: StateMapOptions) {
    this.path = path;
    this.fh = fh;
    this.lockPath = lockPath;
    this.identity = Object.freeze({ gmdName: header.gmdName, minor: header.minor, deviceSize: header.deviceSize, regionSize: header.regionSize });
    this.regionCount = header.regionCount;
    this.crashed = (header.flags & FLAG_OPEN) !== 0;
    this.mem = mem;
    this.words = new Uint32Array(mem.buffer, mem.byteOffset, mem.length >> 2);
    this.recount();
    this.alCapacity = Math.max(0, Math.floor(opts.activityLogRegions ?? Math.min(header.regionCount, Math.ceil(DEFAULT_AL_BYTES / header.regionSize))));
    this.cleanBatch = Math.max(64, Math.ceil(this.alCapacity / 8));
    const tickMs = Math.max(10, opts.lazyFlushMs ?? 1000);
    const idleTicks = Math.max(1, Math.ceil((opts.idleCleanMs ?? 5000) / tickMs));
    this.w = new CommitWriter(path, fh, header, slot, disk, this.alCapacity, this.st);
    this.al = new ActivityLog(mem, idleTicks, {
      markingUnsynced: (r) => this.w.unsynced.has(r),
      cleanOnDisk: (r) => {
        this.w.setNib(r, CELL_CLEAN);
        this.st.evictions++;
        this.w.pendingCleans++;
      },
    });
    this.timer = setInterval(() => this.tick(), tickMs);
    this.timer.unref();
  }

  /** Creates a new, all-clean map file (refuses to overwrite one: STATEMAP_ERR_EXISTS) and opens it. */
  static async create(path: string, id: StateMapIdentity, opts: StateMapOptions = {}): Promise<StateMap> {
    await createMapFile(path, id);
    return StateMap.open(path, id, opts);
  }

  /**
   * Opens a map for read and write, taking its lock (`<path>.lock`). Refuses a corrupt file
   * (STATEMAP_ERR_CORRUPT) and one whose identity differs from `expect` (STATEMAP_ERR_MISMATCH).
   * Regions found in flight (0x1–0x7) after a crash are treated as stale: their write may have
   * reached one side only.
   */
  static async open(path: string, expect?: Partial<StateMapIdentity>, opts: StateMapOptions = {}): Promise<StateMap> {
    const lockPath = await lockMap(path);
    let fh: FileHandle | undefined;
    try {
      try {
        fh = await openFile(path, 'r+');
      } catch (e) {
        throw ioError(e, path, 'open');
      }
      const { header, slot, packed, cells } = await readMap(path, fh, expect);
      for (let r = 0; r < cells.length; r++) {
        const v = cells[r]!;
        if (v !== CELL_CLEAN && v !== CELL_STALE) cells[r] = CELL_STALE;
      }
      const map = new StateMap(path, fh, lockPath, header, slot, packed, cells, opts);
      map.w.setHeader({ ...header, flags: header.flags | FLAG_OPEN });
      try {
        await map.durable();
      } catch (e) {
        clearInterval(map.timer);
        throw e;
      }
      return map;
    } catch (e) {
      await fh?.close().catch(() => undefined);
      await releasePidLock(lockPath);
      throw e;
    }
  }

  get generation(): bigint { return this.w.header.generation; }

  /** First and last region (inclusive) touched by a byte range. */
  regionRange(offset: number, length: number): [first: number, last: number] {
    if (!(offset >= 0) || !(length >= 0) || offset + length > this.identity.deviceSize) {
      throw new StateMapError('STATEMAP_ERR_INVALID', `byte range ${offset}+${length} outside the device (${this.identity.deviceSize} bytes)`);
    }
    const rs = this.identity.regionSize;
    const first = Math.floor(offset / rs);
    const last = length === 0 ? first : Math.floor((offset + length - 1) / rs);
    return [Math.min(first, this.regionCount - 1), last];
  }

  cell(region: number): number {
    this.checkRegion(region, region);
    return this.mem[region]!;
  }

  counts(): StateMapCounts {
    const n = this.mem.length;
    return { regions: n, clean: n - this.nStale - this.nInconsistent, inconsistent: this.nInconsistent, stale: this.nStale };
  }

  isClean(): boolean {
    return this.nStale + this.nInconsistent === 0;
  }

  /** Before a write is issued: resolves once regions first..last are durably marked on disk. */
  beginWrite(first: number, last: number): Promise<void> {
    let wait: Batch | null;
    try {
      wait = this.mark(first, last);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return wait === null ? RESOLVED : wait.promise;
  }

  /**
   * Callback form of beginWrite for the I/O path: returns true when the regions were already
   * durably marked (the write may be issued now; `cb` is not called), false when `cb` will be
   * called once they are (with an error if the map cannot be written).
   */
  beginWriteCb(first: number, last: number, cb: (err?: Error) => void): boolean {
    let wait: Batch | null;
    try {
      wait = this.mark(first, last);
    } catch (e) {
      process.nextTick(cb, e as Error);
      return false;
    }
    if (wait === null) return true;
    wait.callbacks.push(cb);
    return false;
  }

  /** After the write completed: 'both' sides → clean (lazily on disk); 'local-only' → stale (0xf). */
  endWrite(first: number, last: number, outcome: 'both' | 'local-only'): void {
    this.checkRegion(first, last);
    const mem = this.mem;
    for (let r = first; r <= last; r++) {
      const n = this.al.decInflight(r);
      if (outcome === 'local-only') {
        this.setMem(r, CELL_STALE);
        if (this.w.nib(r) !== CELL_STALE) this.w.setNib(r, CELL_STALE);
      } else if (mem[r] !== CELL_STALE) {
        if (n > 0) this.setMem(r, n > CELL_INFLIGHT_MAX ? CELL_INFLIGHT_MAX : n);
        else {
          this.setMem(r, CELL_CLEAN);
          this.al.add(r);
        }
      }
    }
    if (this.al.length > this.alCapacity) this.evict(this.alCapacity);
  }

  /** Marks regions stale (peer lacks them), durably. */
  async markStale(first: number, last: number): Promise<void> {
    this.checkUsable();
    this.checkRegion(first, last);
    for (let r = first; r <= last; r++) {
      this.setMem(r, CELL_STALE);
      if (this.w.nib(r) !== CELL_STALE) this.w.setNib(r, CELL_STALE);
    }
    await this.durable();
  }

  /** Non-clean regions (stale, or inconsistent), ascending. */
  dirtyRegions(): number[] {
    const out: number[] = [];
    for (let r = this.nextDirty(0); r >= 0; r = this.nextDirty(r + 1)) out.push(r);
    return out;
  }

  /** The first non-clean region at or after `from`, or -1: lets resync walk a huge map without an array. */
  nextDirty(from = 0): number {
    if (this.nStale + this.nInconsistent === 0) return -1;
    const m = this.mem;
    let r = Math.max(0, from);
    // Skip clean stretches four cells at a time.
    while (r < m.length && (r & 3) !== 0) { if (m[r] !== CELL_CLEAN) return r; r++; }
    const words = this.words;
    for (let w = r >> 2; w < words.length; w++) {
      if (words[w] === 0) continue;
      for (let k = w << 2; k < (w << 2) + 4; k++) if (m[k] !== CELL_CLEAN) return k;
    }
    for (let k = words.length << 2; k < m.length; k++) if (k >= r && m[k] !== CELL_CLEAN) return k;
    return -1;
  }

  /** After resync copied the region to the peer: clean in memory now, on disk lazily. */
  cleanRegion(region: number): void {
    this.checkRegion(region, region);
    if (this.mem[region] === CELL_CLEAN) return;
    const n = this.al.inflightOf(region);
    if (n > 0) {
      this.setMem(region, n > CELL_INFLIGHT_MAX ? CELL_INFLIGHT_MAX : n);
    } else {
      this.setMem(region, CELL_CLEAN);
      if (this.w.nib(region) !== CELL_CLEAN) this.al.add(region);
    }
    if (this.al.length > this.alCapacity) this.evict(this.alCapacity);
  }

  /** gmddirty (0xf) / gmdclean (0x0): every cell, durably. Refused while writes are in flight. */
  async setAll(cell: number): Promise<void> {
    this.checkUsable();
    if (cell !== CELL_CLEAN && cell !== CELL_STALE) {
      throw new StateMapError('STATEMAP_ERR_INVALID', `setAll accepts 0x0 (clean) or 0xf (stale), not 0x${cell.toString(16)}`);
    }
    if (this.al.inflightRegions > 0) {
      throw new StateMapError('STATEMAP_ERR_BUSY', `state map ${this.path}: ${this.al.inflightRegions} regions have writes in flight; stop the GMD first`);
    }
    this.mem.fill(cell);
    this.recount();
    this.w.fill(cell, this.regionCount);
    this.al.clear();
    await this.durable();
  }

  /**
   * Unify / local takeover: every region non-clean in `other` becomes stale here, durably.
   * (The seed ORs the cells; an in-flight level from another map means "may differ" here, which is
   * what stale means, so the result is the OR's non-clean set with one value.)
   */
  async orWith(other: StateMap | Uint8Array): Promise<void> {
    this.checkUsable();
    let cells: Uint8Array;
    if (other instanceof StateMap) {
      if (other.identity.regionSize !== this.identity.regionSize || other.identity.deviceSize !== this.identity.deviceSize) {
        throw new StateMapError('STATEMAP_ERR_MISMATCH',
          `cannot merge state map ${other.path} (${other.identity.deviceSize} B, ${other.identity.regionSize} B regions) into ${this.path} (${this.identity.deviceSize} B, ${this.identity.regionSize} B regions)`);
      }
      cells = other.mem;
    } else {
      cells = other;
    }
    if (cells.length !== this.regionCount) {
      throw new StateMapError('STATEMAP_ERR_MISMATCH', `cannot merge ${cells.length} cells into state map ${this.path} of ${this.regionCount} regions`);
    }
    for (let r = 0; r < cells.length; r++) {
      const v = cells[r]!;
      if (v === CELL_CLEAN) continue;
      if (v > CELL_INFLIGHT_MAX && v !== CELL_STALE) {
        throw new StateMapError('STATEMAP_ERR_INVALID', `cannot merge: region ${r} has undefined cell value 0x${v.toString(16)}`);
      }
    }
    for (let r = 0; r < cells.length; r++) {
      if (cells[r] === CELL_CLEAN) continue;
      this.setMem(r, CELL_STALE);
      if (this.w.nib(r) !== CELL_STALE) this.w.setNib(r, CELL_STALE);
    }
    await this.durable();
  }

  /**
   * Replaces every cell, durably (loading a dump back, `gmd_update_state`). In-flight levels
   * become stale. Refused while writes are in flight.
   */
  async loadCells(cells: Uint8Array): Promise<void> {
    this.checkUsable();
    if (cells.length !== this.regionCount) {
      throw new StateMapError('STATEMAP_ERR_MISMATCH', `cannot load ${cells.length} cells into state map ${this.path} of ${this.regionCount} regions`);
    }
    if (this.al.inflightRegions > 0) {
      throw new StateMapError('STATEMAP_ERR_BUSY', `state map ${this.path}: ${this.al.inflightRegions} regions have writes in flight; stop the GMD first`);
    }
    for (let r = 0; r < cells.length; r++) {
      const v = cells[r]!;
      if (v > CELL_INFLIGHT_MAX && v !== CELL_STALE) {
        throw new StateMapError('STATEMAP_ERR_INVALID', `cannot load: region ${r} has undefined cell value 0x${v.toString(16)}`);
      }
    }
    this.al.clear();
    for (let r = 0; r < cells.length; r++) {
      const v = cells[r] === CELL_CLEAN ? CELL_CLEAN : CELL_STALE;
      this.setMem(r, v);
      if (this.w.nib(r) !== v) this.w.setNib(r, v);
    }
    await this.durable();
  }

  /** Snapshot of the in-memory cells, one byte per region. */
  cells(): Uint8Array {
    return this.mem.slice();
  }

  /** Starts a new generation (epoch) id, durably; returns it. */
  async newGeneration(): Promise<bigint> {
    this.checkUsable();
    this.w.setHeader({ ...this.w.header, generation: newGenerationId() });
    await this.durable();
    return this.w.header.generation;
  }

  /** Persists lazy cleaning now: idle regions leave the activity log, the file matches memory. */
  async flush(): Promise<void> {
    this.checkUsable();
    this.evict(0);
    await this.durable();
  }

  /** Flush, mark the file cleanly closed, release the lock. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.w.failed) {
        this.evict(0);
        await this.durable();
        this.w.setHeader({ ...this.w.header, flags: this.w.header.flags & ~FLAG_OPEN });
        await this.durable();
      }
    } finally {
      this.closed = true;
      clearInterval(this.timer);
      await this.fh.close().catch(() => undefined);
      await releasePidLock(this.lockPath);
    }
  }

  stats(): StateMapStats {
    return { ...this.st, activityLog: this.al.length, inflightRegions: this.al.inflightRegions };
  }

  // ---- internals ---------------------------------------------------------------------------

  /** Counts the write in and marks cold regions; returns the batch to wait for, or null if durable now. */
  private mark(first: number, last: number): Batch | null {
    this.checkUsable();
    this.checkRegion(first, last);
    let wait: Batch | null = null;
    const mem = this.mem;
    for (let r = first; r <= last; r++) {
      const n = this.al.incInflight(r);
      if (mem[r] !== CELL_STALE) this.setMem(r, n > CELL_INFLIGHT_MAX ? CELL_INFLIGHT_MAX : n);
      if (this.w.nib(r) === CELL_CLEAN) {
        this.w.setNib(r, 0x1);
        const b = this.w.collecting();
        b.regions.push(r);
        this.w.unsynced.set(r, b);
        this.st.marks++;
        wait = b;
      } else {
        const u = this.w.unsynced.get(r);
        if (u !== undefined && (wait === null || u.id > wait.id)) wait = u;
      }
    }
    if (wait === null) this.st.fastPath++;
    return wait;
  }

  /** Every change of an in-memory cell goes through here, so counts() and isClean() are O(1). */
  private setMem(r: number, v: number): void {
    const o = this.mem[r]!;
    if (o === v) return;
    if (o === CELL_STALE) this.nStale--; else if (o !== CELL_CLEAN) this.nInconsistent--;
    if (v === CELL_STALE) this.nStale++; else if (v !== CELL_CLEAN) this.nInconsistent++;
    this.mem[r] = v;
  }

  private recount(): void {
    let stale = 0, clean = 0;
    const m = this.mem;
    for (let r = 0; r < m.length; r++) {
      const v = m[r]!;
      if (v === CELL_CLEAN) clean++; else if (v === CELL_STALE) stale++;
    }
    this.nStale = stale;
    this.nInconsistent = m.length - clean - stale;
  }

  /** Cleans idle activity-log regions on disk (lazily) until at most `keep` remain. */
  private evict(keep: number): void {
    this.al.evict(keep);
    // Bound the regions cleaned in memory but still marked on disk: write them out soon.
    if (this.w.pendingCleans > this.cleanBatch && !this.w.failed && !this.closed) this.w.lazyWrite();
  }

  private tick(): void {
    // Regions idle for a while leave the activity log: a quiet device converges to a truthful map.
    this.al.tick();
    if (this.w.hasDirtyPages && !this.w.failed && !this.closed) this.w.lazyWrite();
  }

  /** A durable commit of everything pending (cells and header). */
  private durable(): Promise<void> {
    return this.w.durable();
  }

  private checkUsable(): void {
    if (this.w.failed) throw this.w.failed;
    if (this.closed) throw new StateMapError('STATEMAP_ERR_CLOSED', `state map ${this.path} is closed`);
  }

  private checkRegion(first: number, last: number): void {
    if (!(Number.isInteger(first) && Number.isInteger(last) && first >= 0 && first <= last && last < this.regionCount)) {
      throw new StateMapError('STATEMAP_ERR_INVALID', `region range ${first}..${last} outside the map (0..${this.regionCount - 1})`);
    }
  }
}

/**
 * Unify (seed §8.3.5, `gmd_update_state -U`) and local takeover (seed §2.2) when both maps are on
 * this machine: `into` gets every region non-clean in `from` as stale (durably, first), then `from`
 * is cleared. Data must then flow from `into`'s side.
 */
export async function mergeAndClear(into: StateMap, from: StateMap): Promise<void> {
  await into.orWith(from);
  await from.setAll(CELL_CLEAN);
}
