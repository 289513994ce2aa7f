/**
 * The group-commit writer of a state map: the on-disk image of the cells (4 bits per region, with
 * the pages changed since they were last written), the header with its two alternating slots, and
 * the single loop that writes them.
 *
 * Everything requested while a commit runs is written together by the next one, with one fdatasync
 * for all of it (a Batch). Page and header writes are strictly serial, so images of one page never
 * race; the fdatasync of a batch runs in the background while the next batch's pages are written, up
 * to MAX_SYNCS at once, and batches are resolved strictly in order (a batch is durable only when
 * every earlier one is). Lazy writes (cleaning only) go through the same loop without an fdatasync.
 * After a failed write every waiter gets STATEMAP_ERR_IO and nothing more is written.
 */
import type { FileHandle } from 'node:fs/promises';
import { CELLS_OFFSET, PAGE_SIZE, SLOT_SIZE, StateMapError, encodeHeader, type StateMapHeader } from './format.js';

/** A durable commit being collected or written: the regions it marks and who waits for it. */
export interface Batch {
  id: number;
  regions: number[];
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: Error) => void;
  callbacks: Array<(err?: Error) => void>;
}

/** Counters the writer shares with its map's stats(). */
export interface WriterCounters { commits: number; lazyWrites: number }

/** fdatasyncs allowed in flight at once (each on a thread-pool thread). */
const MAX_SYNCS = 2;
const RESOLVED: Promise<void> = Promise.resolve();

export class CommitWriter {
  /** The header as last written or to be written (headerDirty). */
  header: StateMapHeader;
  private slot: 0 | 1;
  private headerDirty = false;
  /** Regions whose marking is in a batch not yet durable, and that batch. */
  readonly unsynced = new Map<number, Batch>();
  private readonly dirtyPages = new Set<number>();
  /** Regions zeroed in the image whose page has not been written since: bounded by the map. */
  pendingCleans = 0;
  /** The first write error; from then on every commit fails with it. */
  failed: StateMapError | null = null;
  private next: Batch | null = null;
  private batchIds = 0;
  private committing = false;
  private scheduled = false;
  private lazyWanted = false;
  private syncTail: Promise<void> = RESOLVED;
  private syncsInFlight = 0;

  /** `disk`: the packed cells as in the file; `alCapacity` is recorded in each header written. */
  constructor(private readonly path: string, private readonly fh: FileHandle, header: StateMapHeader, slot: 0 | 1,
    private readonly disk: Buffer, private readonly alCapacity: number, private readonly counters: WriterCounters) {
    this.header = header;
    this.slot = slot;
  }

  /** Region r's cell in the disk image. */
  nib(r: number): number {
    const b = this.disk[r >> 1]!;
    return r & 1 ? b >> 4 : b & 0xf;
  }

  setNib(r: number, v: number): void {
    const i = r >> 1;
    const b = this.disk[i]!;
    this.disk[i] = r & 1 ? (b & 0x0f) | (v << 4) : (b & 0xf0) | v;
    this.dirtyPages.add((i / PAGE_SIZE) | 0);
  }

  /** Every cell of the image set to `cell` (0x0 or 0xf), every page to be written. */
  fill(cell: number, regionCount: number): void {
    this.disk.fill(cell | (cell << 4));
    if (regionCount & 1) this.disk[this.disk.length - 1] = cell;
    for (let p = 0; p * PAGE_SIZE < this.disk.length; p++) this.dirtyPages.add(p);
  }

  get hasDirtyPages(): boolean { return this.dirtyPages.size > 0; }

  /** The header changes with the next durable commit. */
  setHeader(h: StateMapHeader): void {
    this.header = h;
    this.headerDirty = true;
  }

  /** The batch now collecting requests (a new one if none is), whose commit is kicked off. */
  collecting(): Batch {
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
  durable(): Promise<void> {
    return this.collecting().promise;
  }

  /** Writes the dirty pages soon, without an fdatasync of their own. */
  lazyWrite(): void {
    this.lazyWanted = true;
    this.kick();
  }

  private kick(): void {
    if (this.committing || this.scheduled) return;
    this.scheduled = true;
    // setImmediate: every request that arrived in the same I/O phase joins this commit.
    setImmediate(() => { this.scheduled = false; void this.commitLoop(); });
  }

  /** The single writer loop. */
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
          this.counters.lazyWrites++;
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
      this.counters.commits++;
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
}
