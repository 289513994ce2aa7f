import { open as openFile, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { openSync, closeSync, readFileSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import {
  CELLS_OFFSET, CELL_BITS, CELL_CLEAN, CELL_INFLIGHT_MAX, CELL_STALE, FLAG_OPEN, FORMAT_VERSION, PAGE_SIZE, SLOT_SIZE,
  StateMapError, cellBytesFor, checkIdentity, encodeHeader, newGenerationId, packCells, pickHeader, regionCountFor, unpackCells,
  validateIdentity, type StateMapHeader, type StateMapIdentity,
} from './format.js';

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

interface Batch {
  id: number;
  regions: number[];
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: Error) => void;
  callbacks: Array<(err?: Error) => void>;
}

const RESOLVED: Promise<void> = Promise.resolve();
/** Default activity log: 1 GiB of device (DRBD's default covers ≈ 4.8 GiB). */
const DEFAULT_AL_BYTES = 1024 ** 3;
/** meta bits: in-flight count (6 bits; all ones = see overflow), in activity log, referenced. */
const INFLIGHT_MASK = 0x3f;
const IN_AL = 0x40;
const REF = 0x80;
/** fdatasyncs allowed in flight at once (each on a thread-pool thread). */
const MAX_SYNCS = 2;

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

  private header: StateMapHeader;
  private slot: 0 | 1;
  private readonly fh: FileHandle;
  private readonly lockPath: string;
  private readonly mem: Uint8Array;
  /** The same cells as 32-bit words (whole words only), for fast scans. */
  private readonly words: Uint32Array;
  private nStale = 0;
  private nInconsistent = 0;
  private readonly disk: Buffer;
  /**
   * Per region: bits 0–5 writes in flight (63 = the count is in `overflow`), bit 6 in the activity
   * log, bit 7 referenced since the clock hand or the idle timer last passed. Typed arrays instead
   * of Maps keep the per-write path free of allocation.
   */
  private readonly meta: Uint8Array;
  private readonly overflow = new Map<number, number>();
  private inflightRegions = 0;
  /**
   * Activity log as a CLOCK ring (an LRU approximation): regions marked on disk that went idle.
   * Entries that became active or stale are dropped lazily when the hand or the timer meets them.
   */
  private ring: Int32Array;
  private ringAge: Uint16Array;
  private ringLen = 0;
  private hand = 0;
  private readonly unsynced = new Map<number, Batch>();
  private readonly dirtyPages = new Set<number>();
  private readonly alCapacity: number;
  /** Cleaned-but-unwritten regions that trigger a write: max(64, activity log / 8). */
  private readonly cleanBatch: number;
  private readonly idleTicks: number;
  private next: Batch | null = null;
  private batchIds = 0;
  private committing = false;
  private scheduled = false;
  private lazyWanted = false;
  private headerDirty = false;
  private failed: StateMapError | null = null;
  private syncTail: Promise<void> = RESOLVED;
  private syncsInFlight = 0;
  private closed = false;
  /** Regions zeroed in the image whose page has not been written since: bounded (see evict). */
  private pendingCleans = 0;
  private readonly timer: NodeJS.Timeout;
  private readonly st = { fastPath: 0, marks: 0, commits: 0, lazyWrites: 0, evictions: 0 };

  private constructor(path: string, fh: FileHandle, lockPath: string, header: StateMapHeader, slot: 0 | 1, disk: Buffer,
    mem: Uint8Array, opts: StateMapOptions) {
    this.path = path;
    this.fh = fh;
    this.lockPath = lockPath;
    this.header = header;
    this.slot = slot;
    this.identity = Object.freeze({ gmdName: header.gmdName, minor: header.minor, deviceSize: header.deviceSize, regionSize: header.regionSize });
    this.regionCount = header.regionCount;
    this.crashed = (header.flags & FLAG_OPEN) !== 0;
    this.disk = disk;
    this.mem = mem;
    this.words = new Uint32Array(mem.buffer, mem.byteOffset, mem.length >> 2);
    this.meta = new Uint8Array(mem.length);
    this.ring = new Int32Array(Math.min(mem.length, 1024));
    this.ringAge = new Uint16Array(this.ring.length);
    this.recount();
    this.alCapacity = Math.max(0, Math.floor(opts.activityLogRegions ?? Math.min(header.regionCount, Math.ceil(DEFAULT_AL_BYTES / header.regionSize))));
    this.cleanBatch = Math.max(64, Math.ceil(this.alCapacity / 8));
    const tickMs = Math.max(10, opts.lazyFlushMs ?? 1000);
    this.idleTicks = Math.max(1, Math.ceil((opts.idleCleanMs ?? 5000) / tickMs));
    this.timer = setInterval(() => this.tick(), tickMs);
    this.timer.unref();
  }

  /** Creates a new, all-clean map file (refuses to overwrite one: STATEMAP_ERR_EXISTS) and opens it. */
  static async create(path: string, id: StateMapIdentity, opts: StateMapOptions = {}): Promise<StateMap> {
    validateIdentity(id);
    const regionCount = regionCountFor(id.deviceSize, id.regionSize);
    let fh: FileHandle;
    try {
      fh = await openFile(path, 'wx', 0o600);
    } catch (e) {
      throw ioError(e, path, 'create');
    }
    try {
      const now = Date.now();
      const header: StateMapHeader = {
        gmdName: id.gmdName, minor: id.minor, deviceSize: id.deviceSize, regionSize: id.regionSize,
        version: FORMAT_VERSION, cellBits: CELL_BITS, flags: 0, seq: 1n, generation: newGenerationId(), regionCount,
        cellsOffset: CELLS_OFFSET, alCapacity: 0, createdMs: now, updatedMs: now,
      };
      await fh.truncate(CELLS_OFFSET + cellBytesFor(regionCount));
      await fh.write(encodeHeader(header), 0, SLOT_SIZE, 0);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await syncDir(dirname(path));
    return StateMap.open(path, id, opts);
  }

  /**
   * Opens a map for read and write, taking its lock (`<path>.lock`). Refuses a corrupt file
   * (STATEMAP_ERR_CORRUPT) and one whose identity differs from `expect` (STATEMAP_ERR_MISMATCH).
   * Regions found in flight (0x1–0x7) after a crash are treated as stale: their write may have
   * reached one side only.
   */
  static async open(path: string, expect?: Partial<StateMapIdentity>, opts: StateMapOptions = {}): Promise<StateMap> {
    const lockPath = `${path}.lock`;
    await acquireLock(path, lockPath);
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
      map.header = { ...header, flags: header.flags | FLAG_OPEN };
      map.headerDirty = true;
      try {
        await map.durable();
      } catch (e) {
        clearInterval(map.timer);
        throw e;
      }
      return map;
    } catch (e) {
      await fh?.close().catch(() => undefined);
      await unlink(lockPath).catch(() => undefined);
      throw e;
    }
  }

  get generation(): bigint { return this.header.generation; }

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
      const n = this.decInflight(r);
      if (outcome === 'local-only') {
        this.setMem(r, CELL_STALE);
        if (this.nib(r) !== CELL_STALE) this.setNib(r, CELL_STALE);
      } else if (mem[r] !== CELL_STALE) {
        if (n > 0) this.setMem(r, n > CELL_INFLIGHT_MAX ? CELL_INFLIGHT_MAX : n);
        else {
          this.setMem(r, CELL_CLEAN);
          this.alAdd(r);
        }
      }
    }
    if (this.ringLen > this.alCapacity) this.evict(this.alCapacity);
  }

  /** Marks regions stale (peer lacks them), durably. */
  async markStale(first: number, last: number): Promise<void> {
    this.checkUsable();
    this.checkRegion(first, last);
    for (let r = first; r <= last; r++) {
      this.setMem(r, CELL_STALE);
      if (this.nib(r) !== CELL_STALE) this.setNib(r, CELL_STALE);
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
    const n = this.inflightOf(region);
    if (n > 0) {
      this.setMem(region, n > CELL_INFLIGHT_MAX ? CELL_INFLIGHT_MAX : n);
    } else {
      this.setMem(region, CELL_CLEAN);
      if (this.nib(region) !== CELL_CLEAN) this.alAdd(region);
    }
    if (this.ringLen > this.alCapacity) this.evict(this.alCapacity);
  }

  /** gmddirty (0xf) / gmdclean (0x0): every cell, durably. Refused while writes are in flight. */
  async setAll(cell: number): Promise<void> {
    this.checkUsable();
    if (cell !== CELL_CLEAN && cell !== CELL_STALE) {
      throw new StateMapError('STATEMAP_ERR_INVALID', `setAll accepts 0x0 (clean) or 0xf (stale), not 0x${cell.toString(16)}`);
    }
    if (this.inflightRegions > 0) {
      throw new StateMapError('STATEMAP_ERR_BUSY', `state map ${this.path}: ${this.inflightRegions} regions have writes in flight; stop the GMD first`);
    }
    this.mem.fill(cell);
    this.recount();
    this.disk.fill(cell | (cell << 4));
    if (this.regionCount & 1) this.disk[this.disk.length - 1] = cell;
    this.alClear();
    for (let p = 0; p * PAGE_SIZE < this.disk.length; p++) this.dirtyPages.add(p);
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
      if (this.nib(r) !== CELL_STALE) this.setNib(r, CELL_STALE);
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
    if (this.inflightRegions > 0) {
      throw new StateMapError('STATEMAP_ERR_BUSY', `state map ${this.path}: ${this.inflightRegions} regions have writes in flight; stop the GMD first`);
    }
    for (let r = 0; r < cells.length; r++) {
      const v = cells[r]!;
      if (v > CELL_INFLIGHT_MAX && v !== CELL_STALE) {
        throw new StateMapError('STATEMAP_ERR_INVALID', `cannot load: region ${r} has undefined cell value 0x${v.toString(16)}`);
      }
    }
    this.alClear();
    for (let r = 0; r < cells.length; r++) {
      const v = cells[r] === CELL_CLEAN ? CELL_CLEAN : CELL_STALE;
      this.setMem(r, v);
      if (this.nib(r) !== v) this.setNib(r, v);
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
    this.header = { ...this.header, generation: newGenerationId() };
    this.headerDirty = true;
    await this.durable();
    return this.header.generation;
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
      if (!this.failed) {
        this.evict(0);
        await this.durable();
        this.header = { ...this.header, flags: this.header.flags & ~FLAG_OPEN };
        this.headerDirty = true;
        await this.durable();
      }
    } finally {
      this.closed = true;
      clearInterval(this.timer);
      await this.fh.close().catch(() => undefined);
      await unlink(this.lockPath).catch(() => undefined);
    }
  }

  stats(): StateMapStats {
    return { ...this.st, activityLog: this.ringLen, inflightRegions: this.inflightRegions };
  }

  // ---- internals ---------------------------------------------------------------------------

  /** Counts the write in and marks cold regions; returns the batch to wait for, or null if durable now. */
  private mark(first: number, last: number): Batch | null {
    this.checkUsable();
    this.checkRegion(first, last);
    let wait: Batch | null = null;
    const mem = this.mem;
    for (let r = first; r <= last; r++) {
      const n = this.incInflight(r);
      if (mem[r] !== CELL_STALE) this.setMem(r, n > CELL_INFLIGHT_MAX ? CELL_INFLIGHT_MAX : n);
      if (this.nib(r) === CELL_CLEAN) {
        this.setNib(r, 0x1);
        const b = this.collecting();
        b.regions.push(r);
        this.unsynced.set(r, b);
        this.st.marks++;
        wait = b;
      } else {
        const u = this.unsynced.get(r);
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

  private nib(r: number): number {
    const b = this.disk[r >> 1]!;
    return r & 1 ? b >> 4 : b & 0xf;
  }

  private setNib(r: number, v: number): void {
    const i = r >> 1;
    const b = this.disk[i]!;
    this.disk[i] = r & 1 ? (b & 0x0f) | (v << 4) : (b & 0xf0) | v;
    this.dirtyPages.add((i / PAGE_SIZE) | 0);
  }

  // ---- in-flight counts and the activity log ---------------------------------------------------

  private incInflight(r: number): number {
    const m = this.meta[r]!;
    const c = m & INFLIGHT_MASK;
    if (c === 0) this.inflightRegions++;
    if (c < INFLIGHT_MASK - 1) { this.meta[r] = m + 1; return c + 1; }
    if (c === INFLIGHT_MASK - 1) { this.meta[r] = m + 1; this.overflow.set(r, INFLIGHT_MASK); return INFLIGHT_MASK; }
    const n = this.overflow.get(r)! + 1;
    this.overflow.set(r, n);
    return n;
  }

  /** One write of region r ended; returns the writes still in flight (0 if none were counted). */
  private decInflight(r: number): number {
    const m = this.meta[r]!;
    const c = m & INFLIGHT_MASK;
    if (c === 0) return 0;
    if (c === INFLIGHT_MASK) {
      const n = this.overflow.get(r)! - 1;
      if (n >= INFLIGHT_MASK) { this.overflow.set(r, n); return n; }
      this.overflow.delete(r);
      this.meta[r] = m - 1;
      return n;
    }
    this.meta[r] = m - 1;
    if (c === 1) this.inflightRegions--;
    return c - 1;
  }

  private inflightOf(r: number): number {
    const c = this.meta[r]! & INFLIGHT_MASK;
    return c === INFLIGHT_MASK ? this.overflow.get(r)! : c;
  }

  /** Region r went idle, clean in memory and still marked on disk: (re)enter the activity log. */
  private alAdd(r: number): void {
    const m = this.meta[r]!;
    if (m & IN_AL) { this.meta[r] = m | REF; return; }
    if (this.ringLen === this.ring.length) {
      const size = Math.min(this.mem.length, this.ring.length * 2);
      const ring = new Int32Array(size); ring.set(this.ring);
      const age = new Uint16Array(size); age.set(this.ringAge);
      this.ring = ring;
      this.ringAge = age;
    }
    this.meta[r] = m | IN_AL | REF;
    this.ring[this.ringLen] = r;
    this.ringAge[this.ringLen] = 0;
    this.ringLen++;
  }

  private alRemoveAt(i: number): void {
    const r = this.ring[i]!;
    this.meta[r] = this.meta[r]! & ~(IN_AL | REF);
    this.ringLen--;
    if (i !== this.ringLen) {
      this.ring[i] = this.ring[this.ringLen]!;
      this.ringAge[i] = this.ringAge[this.ringLen]!;
    }
  }

  private alClear(): void {
    for (let i = 0; i < this.ringLen; i++) this.meta[this.ring[i]!] = this.meta[this.ring[i]!]! & ~(IN_AL | REF);
    this.ringLen = 0;
    this.hand = 0;
  }

  /**
   * What to do with ring entry i whose region has no second chance left: 'drop' it (became active or
   * stale: its mark is needed, it re-enters when idle again), 'keep' it (its marking is still being
   * committed), or clean it on disk (lazily) and remove it.
   */
  private retire(i: number): 'dropped' | 'kept' | 'cleaned' {
    const r = this.ring[i]!;
    if (this.mem[r] !== CELL_CLEAN || (this.meta[r]! & INFLIGHT_MASK) !== 0) { this.alRemoveAt(i); return 'dropped'; }
    if (this.unsynced.has(r)) return 'kept';
    this.alRemoveAt(i);
    this.setNib(r, CELL_CLEAN);
    this.st.evictions++;
    this.pendingCleans++;
    return 'cleaned';
  }

  /** Cleans idle activity-log regions on disk (lazily), CLOCK order, until at most `keep` remain. */
  private evict(keep: number): void {
    // Two passes clear every second chance; a third finds victims (or only unevictable entries remain).
    for (let budget = 3 * this.ringLen; this.ringLen > keep && budget > 0; budget--) {
      if (this.hand >= this.ringLen) this.hand = 0;
      const r = this.ring[this.hand]!;
      const m = this.meta[r]!;
      if (keep > 0 && (m & REF) && this.mem[r] === CELL_CLEAN) {
        this.meta[r] = m & ~REF;
        this.hand++;
        continue;
      }
      if (this.retire(this.hand) === 'kept') this.hand++;
    }
    // Bound the regions cleaned in memory but still marked on disk: write them out soon.
    if (this.pendingCleans > this.cleanBatch && !this.failed && !this.closed) {
      this.lazyWanted = true;
      this.kick();
    }
  }

  private tick(): void {
    // Regions idle for idleTicks leave the activity log: a quiet device converges to a truthful map.
    for (let i = 0; i < this.ringLen;) {
      const r = this.ring[i]!;
      const m = this.meta[r]!;
      if (m & REF) {
        this.meta[r] = m & ~REF;
        this.ringAge[i] = 0;
        i++;
        continue;
      }
      const age = this.ringAge[i]! + 1;
      this.ringAge[i] = Math.min(age, 0xffff);
      if (age < this.idleTicks) { i++; continue; }
      // retire() swaps the last entry into i, which is then looked at in turn.
      if (this.retire(i) === 'kept') i++;
    }
    if (this.dirtyPages.size > 0 && !this.failed && !this.closed) {
      this.lazyWanted = true;
      this.kick();
    }
  }

  private collecting(): Batch {
    if (this.next) return this.next;
    let resolve!: () => void;
    let reject!: (err: Error) => void;
    const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
    promise.catch(() => undefined); // waiters may all be callbacks; the rejection is still delivered to them
    const b: Batch = { id: ++this.batchIds, regions: [], promise, resolve, reject, callbacks: [] };
    this.next = b;
    this.kick();
    return b;
  }

  /** A durable commit of everything pending (cells and header). */
  private durable(): Promise<void> {
    return this.collecting().promise;
  }

  private kick(): void {
    if (this.committing || this.scheduled) return;
    this.scheduled = true;
    // setImmediate: every request that arrived in the same I/O phase joins this commit.
    setImmediate(() => { this.scheduled = false; void this.commitLoop(); });
  }

  /**
   * The single writer. Page and header writes are strictly serial (so images of one page never race);
   * the fdatasync of a batch runs in the background while the next batch's pages are written, up to
   * MAX_SYNCS at once, and batches are resolved strictly in order (a batch is durable only when every
   * earlier one is).
   */
  private async commitLoop(): Promise<void> {
    if (this.committing) return;
    this.committing = true;
    let batch: Batch | null = null;
    try {
      while (this.next !== null || this.lazyWanted) {
        if (this.syncsInFlight >= MAX_SYNCS) {
          await this.syncTail;
          continue;
        }
        batch = this.next;
        this.next = null;
        this.lazyWanted = false;
        await this.writePages();
        if (batch !== null) {
          if (this.headerDirty) {
            this.headerDirty = false;
            const seq = this.header.seq + 1n;
            const slot: 0 | 1 = this.slot === 0 ? 1 : 0;
            this.header = { ...this.header, seq, updatedMs: Date.now(), alCapacity: this.alCapacity };
            await this.fh.write(encodeHeader(this.header), 0, SLOT_SIZE, slot * SLOT_SIZE);
            this.slot = slot;
          }
          const b = batch;
          batch = null;
          this.startSync(b);
        } else {
          this.st.lazyWrites++;
        }
      }
    } catch (e) {
      this.fail(e, batch);
    } finally {
      this.committing = false;
    }
  }

  private startSync(b: Batch): void {
    const prev = this.syncTail;
    this.syncsInFlight++;
    this.syncTail = this.fh.datasync().then(() => prev).then(() => {
      this.syncsInFlight--;
      if (this.failed) {
        b.reject(this.failed);
        for (const cb of b.callbacks) cb(this.failed);
        return;
      }
      this.st.commits++;
      for (const r of b.regions) if (this.unsynced.get(r) === b) this.unsynced.delete(r);
      b.resolve();
      for (const cb of b.callbacks) cb();
    }, (e: unknown) => {
      this.syncsInFlight--;
      this.fail(e, b);
    });
  }

  /** Writes every dirty page, adjacent pages coalesced, from a copy taken now (memory keeps changing). */
  private async writePages(): Promise<void> {
    if (this.dirtyPages.size === 0) return;
    const pages = [...this.dirtyPages].sort((a, b) => a - b);
    this.dirtyPages.clear();
    this.pendingCleans = 0;
    const runs: Array<{ pos: number; buf: Buffer }> = [];
    for (let i = 0; i < pages.length;) {
      let j = i;
      while (j + 1 < pages.length && pages[j + 1] === pages[j]! + 1) j++;
      const start = pages[i]! * PAGE_SIZE;
      const end = Math.min(this.disk.length, (pages[j]! + 1) * PAGE_SIZE);
      runs.push({ pos: CELLS_OFFSET + start, buf: Buffer.from(this.disk.subarray(start, end)) });
      i = j + 1;
    }
    for (const { pos, buf } of runs) {
      let done = 0;
      while (done < buf.length) {
        const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, pos + done);
        done += bytesWritten;
      }
    }
  }

  private fail(e: unknown, inFlight: Batch | null): void {
    const err = new StateMapError('STATEMAP_ERR_IO', `state map ${this.path} cannot be written: ${(e as Error).message}; the GMD must stop (writes are refused)`, { cause: e });
    if (this.failed) return;
    this.failed = err;
    for (const b of [inFlight, this.next]) {
      if (!b) continue;
      b.reject(err);
      for (const cb of b.callbacks) cb(err);
    }
    this.next = null;
  }

  private checkUsable(): void {
    if (this.failed) throw this.failed;
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

/**
 * Size follows the device: rewrites a closed map for a new device size (seed §6.5.4, growing a
 * volume). Existing cells keep their values; regions beyond the old end get `newRegions` — 'stale'
 * on the side whose data the other must receive (the primary), 'clean' on the other side, or the
 * two maps diverge. Shrinking drops the cells past the new end. The file is replaced atomically
 * (write beside, fsync, rename), under the map's lock.
 */
export async function resizeStateMap(path: string, deviceSize: number, newRegions: 'stale' | 'clean'): Promise<void> {
  const lockPath = `${path}.lock`;
  await acquireLock(path, lockPath);
  try {
    let fh: FileHandle;
    try {
      fh = await openFile(path, 'r');
    } catch (e) {
      throw ioError(e, path, 'open');
    }
    let header: StateMapHeader;
    let cells: Uint8Array;
    try {
      ({ header, cells } = await readMap(path, fh, undefined));
    } finally {
      await fh.close();
    }
    const id = { gmdName: header.gmdName, minor: header.minor, regionSize: header.regionSize, deviceSize };
    validateIdentity(id);
    const count = regionCountFor(deviceSize, header.regionSize);
    const next = new Uint8Array(count).fill(newRegions === 'stale' ? CELL_STALE : CELL_CLEAN, Math.min(count, cells.length));
    next.set(cells.subarray(0, Math.min(count, cells.length)));
    // The old last region may have been partial; if it grew, its new part is as unknown as the rest.
    if (count > cells.length && header.deviceSize % header.regionSize !== 0 && newRegions === 'stale') next[cells.length - 1] = CELL_STALE;
    const out: StateMapHeader = { ...header, deviceSize, regionCount: count, seq: header.seq + 1n, updatedMs: Date.now() };
    const tmp = `${path}.resize`;
    const w = await openFile(tmp, 'w', 0o600);
    try {
      await w.write(encodeHeader(out), 0, SLOT_SIZE, 0);
      await w.write(Buffer.alloc(SLOT_SIZE), 0, SLOT_SIZE, SLOT_SIZE);
      const packed = packCells(next);
      await w.write(packed, 0, packed.length, CELLS_OFFSET);
      await w.truncate(CELLS_OFFSET + packed.length);
      await w.datasync();
    } finally {
      await w.close();
    }
    await rename(tmp, path);
    await syncDir(dirname(path));
  } finally {
    await unlink(lockPath).catch(() => undefined);
  }
}

/** A read-only view of a map file (for show-state / dump while the GMD is not running). Takes no lock. */
export interface StateMapSnapshot {
  path: string;
  identity: StateMapIdentity;
  generation: bigint;
  /** The file was not closed cleanly (or its GMD is running now). */
  open: boolean;
  /** Raw cells as on disk, one byte per region. */
  cells: Uint8Array;
}

export async function readStateMapFile(path: string, expect?: Partial<StateMapIdentity>): Promise<StateMapSnapshot> {
  let fh: FileHandle;
  try {
    fh = await openFile(path, 'r');
  } catch (e) {
    throw ioError(e, path, 'open');
  }
  try {
    const { header, cells } = await readMap(path, fh, expect);
    return {
      path,
      identity: { gmdName: header.gmdName, minor: header.minor, deviceSize: header.deviceSize, regionSize: header.regionSize },
      generation: header.generation,
      open: (header.flags & FLAG_OPEN) !== 0,
      cells,
    };
  } finally {
    await fh.close();
  }
}

async function readMap(path: string, fh: FileHandle, expect: Partial<StateMapIdentity> | undefined) {
  const size = (await fh.stat()).size;
  if (size < CELLS_OFFSET) {
    throw new StateMapError('STATEMAP_ERR_CORRUPT', `state map ${path} is truncated (${size} bytes, the header alone needs ${CELLS_OFFSET}); refusing to use it`);
  }
  const head = Buffer.alloc(CELLS_OFFSET);
  await fh.read(head, 0, CELLS_OFFSET, 0);
  const { header, slot } = pickHeader(path, head.subarray(0, SLOT_SIZE), head.subarray(SLOT_SIZE));
  checkIdentity(path, header, expect);
  const bytes = cellBytesFor(header.regionCount);
  if (size < CELLS_OFFSET + bytes) {
    throw new StateMapError('STATEMAP_ERR_CORRUPT', `state map ${path} is truncated: ${header.regionCount} regions need ${CELLS_OFFSET + bytes} bytes, the file has ${size}; refusing to use it`);
  }
  const packed = Buffer.alloc(bytes);
  let done = 0;
  while (done < bytes) {
    const { bytesRead } = await fh.read(packed, done, bytes - done, CELLS_OFFSET + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  const cells = unpackCells(path, packed, header.regionCount);
  return { header, slot, packed, cells };
}

function ioError(e: unknown, path: string, what: string): StateMapError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' && what === 'create') return new StateMapError('STATEMAP_ERR_NOT_FOUND', `cannot create state map ${path}: directory ${dirname(path)} does not exist`, { cause: e });
  if (code === 'ENOENT') return new StateMapError('STATEMAP_ERR_NOT_FOUND', `state map ${path} does not exist (create it with 'georm configure')`, { cause: e });
  if (code === 'EEXIST') return new StateMapError('STATEMAP_ERR_EXISTS', `state map ${path} already exists; refusing to overwrite it`, { cause: e });
  return new StateMapError('STATEMAP_ERR_IO', `cannot ${what} state map ${path}: ${(e as Error).message}`, { cause: e });
}

async function syncDir(dir: string): Promise<void> {
  try {
    const d = await openFile(dir, 'r');
    try { await d.sync(); } finally { await d.close(); }
  } catch {
    // Some filesystems refuse fsync on directories; the file itself is synced.
  }
}

/**
 * One writer per map file: `<path>.lock` holds the owner's pid. A lock left by a dead process
 * (kill -9) is taken over; one held by a live process is refused.
 */
async function acquireLock(path: string, lockPath: string): Promise<void> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(lockPath, 'wx', 0o600);
      writeSync(fd, `${process.pid} ${processStartTime(process.pid) ?? ''}\n`);
      closeSync(fd);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(e, path, 'lock');
    }
    const [pidText, startText] = (await readFile(lockPath, 'utf8').catch(() => '')).trim().split(/\s+/);
    const pid = Number.parseInt(pidText ?? '', 10);
    // Same pid but another start time: the owner died and its pid was reused; the lock is stale.
    const sameProcess = !startText || processStartTime(pid) === null || processStartTime(pid) === startText;
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid) && sameProcess) {
      throw new StateMapError('STATEMAP_ERR_LOCKED', `state map ${path} is in use by process ${pid} (lock ${lockPath})`);
    }
    await unlink(lockPath).catch(() => undefined);
  }
  throw new StateMapError('STATEMAP_ERR_LOCKED', `cannot take the lock ${lockPath} of state map ${path}`);
}

/** Start time of a process in clock ticks since boot (/proc/PID/stat field 22), or null if unknown. */
function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: count fields after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
