/**
 * A Backend over a regular file or a block device, through plain fs calls with explicit positions
 * (pread/pwrite in the threadpool) and fdatasync for FLUSH and FUA. What Node cannot do by itself
 * (SEEK_DATA/SEEK_HOLE, hole punching, zero ranges, BLKGETSIZE64) comes from optional extensions
 * that the native addon supplies; without them TRIM is a no-op (allowed: TRIM is advisory),
 * WRITE_ZEROES writes zeros, and BLOCK_STATUS reports everything as data (flags() says so).
 */
import fs from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Backend, BackendFlags, Extent, WriteOptions, ZeroOptions } from './backend.js';
import { NbdErrno, STATE_HOLE, STATE_ZERO, DEFAULT_MAX_PAYLOAD } from './protocol/constants.js';
import { nbdError } from './errno.js';

/**
 * What an operation begun after close() gets. Node's code for it would be EBADF, but that also
 * means a bug (a wrong fd); this one is expected during shutdown and tells which file. Its errno
 * (ESHUTDOWN) is what an NBD client is told.
 */
function closedError(path: string): Error & { errno: number; code: string } {
  return Object.assign(nbdError(NbdErrno.ESHUTDOWN, `${path} is closed`), { code: 'NBD_ERR_BACKEND_CLOSED' });
}

/**
 * Platform calls the native addon provides, all optional. All are synchronous on an fd except the
 * fallocate calls, which can take seconds on a large range of a block device and so run off the
 * event loop; their errors carry the errno name as `code` (EOPNOTSUPP when a mode is refused).
 */
export interface FileExtensions {
  /** Next data offset at or after `offset`, or null when there is none (ENXIO). */
  seekData?(fd: number, offset: number): number | null;
  seekHole?(fd: number, offset: number): number;
  /** fallocate(PUNCH_HOLE | KEEP_SIZE), settled when done; `fd` stays open until then. */
  punchHole?(fd: number, offset: number, length: number): Promise<void>;
  /** fallocate(ZERO_RANGE | KEEP_SIZE), settled when done; `fd` stays open until then. */
  zeroRange?(fd: number, offset: number, length: number): Promise<void>;
  blockDeviceSize?(fd: number): number;
  /**
   * preadv2(RWF_NOWAIT) / pwritev2(RWF_NOWAIT): transfer only if it needs no waiting (page cache
   * hit, no writeback throttling); returns the byte count, or -1 when it would block (EAGAIN).
   * With these the server never blocks its event loop yet skips the threadpool for cached I/O.
   */
  preadNoWait?(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number;
  pwriteNoWait?(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number;
  /**
   * One plain pread(2)/pwrite(2), as fs.readSync/fs.writeSync make, for the inline path: the same
   * call without Node's layers around it (validation, a request object, trace checks).
   */
  pread?(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number;
  pwrite?(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number;
}

/**
 * Where reads and writes run. 'async': always the libuv threadpool. 'inline': on the event loop
 * thread. 'auto' (default): inline while inline transfers stay fast, which is the page-cache case
 * and saves two thread handoffs per request; a few slow transfers in a row (over 2 ms: real disk
 * I/O or writeback throttling) send everything to the threadpool for the next second, so the event
 * loop is blocked by at most about three slow transfers per second. With the RWF_NOWAIT
 * extensions, inline attempts never block at all.
 */
export type IoMode = 'auto' | 'inline' | 'async';

export interface FileBackendOptions {
  readOnly: boolean;
  /** Overrides the process-wide extensions set with setFileExtensions(). */
  extensions?: FileExtensions;
  /** See IoMode; default from GEORM_NBD_IO ('auto' | 'inline' | 'async'), else 'auto'. */
  io?: IoMode;
}

const INLINE_SLOW_MS = 2;
const INLINE_BACKOFF_MS = 1000;
/**
 * Back off once the decaying count of slow inline transfers passes this: a few slow ones in a row
 * (disk I/O) trigger it, a single one (the thread was preempted on a busy machine) does not.
 */
const INLINE_SLOW_SCORE = 2.5;
/** Larger transfers always use the threadpool: copying them inline would hold the loop too long. */
const INLINE_MAX = 128 * 1024;

let defaultExtensions: FileExtensions = {};
/** Installs platform extensions for every FileBackend opened afterwards (the addon calls this). */
export function setFileExtensions(ext: FileExtensions): void { defaultExtensions = ext; }

const ZERO_CHUNK = 1024 * 1024;
let zeroBuf: Buffer | undefined;

type RwCall = (fd: number, buf: Buffer, bufOffset: number, length: number, position: number) => number;

export class FileBackend implements Backend {
  /** Set when close() begins; from then on every operation is refused (closedError). */
  private closed = false;
  private closing: Promise<void> | null = null;
  /**
   * Operations using the fd right now, counted from admission (enter) until their last system call
   * has settled (leave): threadpool reads, writes, fdatasync and fallocate alike. close() waits for
   * zero before closing the fd: closing it under one would let the next open() in this process (a
   * state map, a log, another volume) reuse the number, and the pending pwrite would land there.
   * A plain integer, so the write path pays an increment and a decrement, no allocation.
   */
  private busy = 0;
  private idle: (() => void) | null = null;
  private readonly flagSet: BackendFlags;
  /** performance.now() until which inline I/O is off ('auto' after a slow inline transfer). */
  private inlineOffUntil = 0;
  private slowScore = 0;
  private readonly inline: boolean;
  /** The inline transfers: RWF_NOWAIT when offered (-1: would block), else one plain system call. */
  private readonly readNow: RwCall;
  private readonly writeNow: RwCall;
  /** Counters for diagnostics and tests. */
  readonly stats = { inline: 0, async: 0, slowInline: 0 };

  private constructor(readonly path: string, readonly fd: number, private readonly bytes: number,
    readonly readOnly: boolean, readonly isBlockDevice: boolean, private readonly ext: FileExtensions, readonly io: IoMode) {
    this.inline = io !== 'async';
    this.readNow = ext.preadNoWait ?? ext.pread ?? fs.readSync;
    this.writeNow = ext.pwriteNoWait ?? ext.pwrite ?? fs.writeSync;
    this.flagSet = {
      readOnly,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canZero: true,
      canFastZero: !!ext.zeroRange || !!ext.punchHole,
      canCache: true,
      // One fd shared by all connections: a FLUSH (fdatasync) on any of them covers every write.
      canMultiConn: true,
      // A block device answers SEEK_DATA with "all data" (the kernel's generic llseek): no holes to tell.
      canExtents: !isBlockDevice && !!ext.seekData && !!ext.seekHole,
      rotational: false,
    };
  }

  /** Opens a regular file or block device. Errors keep Node's `code` (ENOENT, EACCES, EISDIR…). */
  static async open(path: string, opts: FileBackendOptions): Promise<FileBackend> {
    const ext = opts.extensions ?? defaultExtensions;
    const fd = await new Promise<number>((resolve, reject) => fs.open(path, opts.readOnly ? 'r' : 'r+', (e, fd) => (e ? reject(e) : resolve(fd))));
    try {
      const st = fs.fstatSync(fd);
      let size: number;
      if (st.isBlockDevice()) size = ext.blockDeviceSize ? ext.blockDeviceSize(fd) : await sysfsBlockSize(st.rdev);
      else if (st.isFile()) size = st.size;
      else throw Object.assign(new Error(`${path} is neither a regular file nor a block device`), { code: 'EINVAL' });
      const envIo = process.env.GEORM_NBD_IO;
      const io: IoMode = opts.io ?? (envIo === 'inline' || envIo === 'async' ? envIo : 'auto');
      return new FileBackend(path, fd, size, opts.readOnly, st.isBlockDevice(), ext, io);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  size(): number { return this.bytes; }
  flags(): BackendFlags { return this.flagSet; }
  blockSizes(): { minimum: number; preferred: number; maximum: number } {
    return { minimum: 1, preferred: 4096, maximum: DEFAULT_MAX_PAYLOAD };
  }

  /** Admits an operation (see `busy`); false once close() has begun. */
  private enter(): boolean {
    if (this.closed) return false;
    this.busy++;
    return true;
  }

  /** Ends an admitted operation; the last one out lets a waiting close() go on. */
  private leave(): void {
    if (--this.busy === 0 && this.idle !== null) {
      const idle = this.idle;
      this.idle = null;
      idle();
    }
  }

  /** Runs `op` as one admitted operation: its steps may span many system calls, close() waits for all. */
  private async admitted<T>(op: () => Promise<T>): Promise<T> {
    if (!this.enter()) throw closedError(this.path);
    try { return await op(); } finally { this.leave(); }
  }

  read(offset: number, length: number): Promise<Buffer> {
    if (!this.enter()) return Promise.reject(closedError(this.path));
    const buf = Buffer.allocUnsafe(length);
    return new Promise((resolve, reject) => this.readRest(buf, 0, length, offset, (e) => (e ? reject(e) : resolve(buf))));
  }

  /** Whether the next transfer of `length` bytes may be tried inline. */
  private inlineOk(length: number): boolean {
    if (!this.inline || length > INLINE_MAX) return false;
    if (this.inlineOffUntil !== 0) {
      if (performance.now() < this.inlineOffUntil) return false;
      this.inlineOffUntil = 0;
    }
    return true;
  }

  private inlineTook(start: number): void {
    if (this.io !== 'auto') return;
    if (performance.now() - start > INLINE_SLOW_MS) {
      this.stats.slowInline++;
      this.slowScore = this.slowScore * 0.9 + 1;
      if (this.slowScore > INLINE_SLOW_SCORE) {
        this.slowScore = 0;
        this.inlineOffUntil = performance.now() + INLINE_BACKOFF_MS;
      }
    } else if (this.slowScore !== 0) {
      this.slowScore = this.slowScore < 0.01 ? 0 : this.slowScore * 0.9;
    }
  }

  readInto(offset: number, length: number, buf: Buffer, bufOffset: number, cb: (err: Error | null) => void): void {
    if (!this.enter()) { cb(closedError(this.path)); return; }
    if (this.inlineOk(length)) {
      let n: number;
      const t0 = performance.now();
      try {
        n = this.readNow(this.fd, buf, bufOffset, length, offset);
      } catch (e) {
        this.leave();
        cb(e as Error);
        return;
      }
      this.inlineTook(t0);
      if (n === length) { this.stats.inline++; this.leave(); cb(null); return; }
      if (n === 0) { buf.fill(0, bufOffset, bufOffset + length); this.stats.inline++; this.leave(); cb(null); return; }
      if (n > 0) { bufOffset += n; offset += n; length -= n; }
    }
    this.stats.async++;
    this.readRest(buf, bufOffset, length, offset, cb);
  }

  writeCb(offset: number, data: Buffer, fua: boolean, cb: (err: Error | null) => void): void {
    if (!this.enter()) { cb(closedError(this.path)); return; }
    // FUA waits for fdatasync anyway, which never belongs on the event loop.
    if (!fua && this.inlineOk(data.length)) {
      let n: number;
      const t0 = performance.now();
      try {
        n = this.writeNow(this.fd, data, 0, data.length, offset);
      } catch (e) {
        this.leave();
        cb(e as Error);
        return;
      }
      this.inlineTook(t0);
      if (n === data.length) { this.stats.inline++; this.leave(); cb(null); return; }
      if (n > 0) { data = data.subarray(n); offset += n; }
    }
    this.stats.async++;
    this.writeRest(data, 0, data.length, offset, fua, cb);
  }

  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    if (!this.enter()) return Promise.reject(closedError(this.path));
    return new Promise((resolve, reject) => this.writeRest(data, 0, data.length, offset, opts.fua, (e) => (e ? reject(e) : resolve())));
  }

  flush(): Promise<void> {
    if (!this.enter()) return Promise.reject(closedError(this.path));
    return new Promise((resolve, reject) => this.syncRest((e) => (e ? reject(e) : resolve())));
  }

  /*
   * The chains below run an operation's system calls on the threadpool and end with one leave():
   * whoever starts one has counted it, with enter() for an operation or step() for a step within
   * one. Ending the count inside the chain's own callback keeps the hot path free of a wrapper
   * closure per request.
   */

  /** Counts a step of an admitted operation: never refused, as the operation keeps the fd open. */
  private step(): void { this.busy++; }

  /** pread until `length` bytes (past the end of a file the rest reads as zeros); ends one count. */
  private readRest(buf: Buffer, off: number, length: number, pos: number, cb: (e: Error | null) => void): void {
    fs.read(this.fd, buf, off, length, pos, (e, n) => {
      if (!e && n !== length && n !== 0) { this.readRest(buf, off + n, length - n, pos + n, cb); return; }
      if (!e && n === 0) buf.fill(0, off, off + length);
      this.leave();
      cb(e);
    });
  }

  /** pwrite until all `length` bytes are written, fdatasync after with `sync`; ends one count. */
  private writeRest(buf: Buffer, off: number, length: number, pos: number, sync: boolean, cb: (e: Error | null) => void): void {
    fs.write(this.fd, buf, off, length, pos, (e, n) => {
      if (!e && n !== length) { this.writeRest(buf, off + n, length - n, pos + n, sync, cb); return; }
      if (!e && sync) { this.syncRest(cb); return; }
      this.leave();
      cb(e);
    });
  }

  /** fdatasync; ends one count. */
  private syncRest(cb: (e: Error | null) => void): void {
    fs.fdatasync(this.fd, (e) => { this.leave(); cb(e); });
  }

  /** fdatasync as a step of an admitted operation (trim or zero with FUA). */
  private syncStep(): Promise<void> {
    this.step();
    return new Promise((resolve, reject) => this.syncRest((e) => (e ? reject(e) : resolve())));
  }

  trim(offset: number, length: number, opts: WriteOptions): Promise<void> {
    return this.admitted(async () => {
      const punch = this.ext.punchHole;
      if (!punch) return; // advisory: doing nothing is correct
      try { await punch(this.fd, offset, length); } catch (e) {
        if (!refused(e)) throw e;
        return; // the filesystem or device cannot punch holes: advisory, so nothing is done
      }
      if (opts.fua) await this.syncStep();
    });
  }

  /**
   * WRITE_ZEROES: fallocate when it can (ZERO_RANGE, or a punched hole when holes are allowed; the
   * hole first with `deallocate`), else zeros written — unless FAST_ZERO, which gets ENOTSUP with
   * the data untouched. A filesystem or device that refuses a mode (tmpfs has no ZERO_RANGE, vfat
   * neither mode, a block device wants aligned ranges) falls through to the next way.
   */
  zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    return this.admitted(async () => {
      if (!await this.fallocZero(offset, length, opts.noHole, opts.deallocate === true)) {
        if (opts.fastZero) throw nbdError(NbdErrno.ENOTSUP, 'no fast zeroing on this backend');
        await this.writeZeros(offset, length);
      }
      if (opts.fua) await this.syncStep();
    });
  }

  /** Zeroes the range by fallocate; false when neither allowed mode is available or accepted. */
  private async fallocZero(offset: number, length: number, noHole: boolean, holeFirst: boolean): Promise<boolean> {
    const { punchHole, zeroRange } = this.ext;
    const punch = !noHole && punchHole ? punchHole : undefined;
    const ways = holeFirst ? [punch, zeroRange] : [zeroRange, punch];
    for (const way of ways) {
      if (!way) continue;
      // One way at a time: the next is tried only once this one was refused.
      try { await way(this.fd, offset, length); return true; } catch (e) {
        if (!refused(e)) throw e;
      }
    }
    return false;
  }

  /** Zeros written, a chunk at a time, as steps of an admitted operation (zero()). */
  private async writeZeros(offset: number, length: number): Promise<void> {
    zeroBuf ??= Buffer.alloc(ZERO_CHUNK);
    for (let done = 0; done < length;) {
      const n = Math.min(ZERO_CHUNK, length - done);
      this.step();
      await new Promise<void>((resolve, reject) => this.writeRest(zeroBuf!, 0, n, offset + done, false, (e) => (e ? reject(e) : resolve())));
      done += n;
    }
  }

  async cache(): Promise<void> { /* the page cache does this already; nothing to prefetch explicitly */ }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    // Synchronous lseek calls: nothing to wait for, only a closed fd to keep away from.
    if (this.closed) throw closedError(this.path);
    const { seekData, seekHole } = this.ext;
    if (!seekData || !seekHole) return [{ length, flags: 0 }];
    const end = offset + length;
    const out: Extent[] = [];
    let pos = offset;
    while (pos < end && out.length < 1024) {
      const data = seekData(this.fd, pos);
      if (data === null || data >= end) { out.push({ length: end - pos, flags: STATE_HOLE | STATE_ZERO }); break; }
      if (data > pos) { out.push({ length: data - pos, flags: STATE_HOLE | STATE_ZERO }); pos = data; continue; }
      const hole = Math.min(seekHole(this.fd, pos), end);
      out.push({ length: hole - pos, flags: 0 });
      pos = hole;
    }
    return out;
  }

  /**
   * Refuses new operations at once, waits for those admitted before (see `busy`), then closes the
   * fd. Every caller gets the same promise, settled once the fd is closed.
   */
  close(): Promise<void> {
    this.closing ??= this.closeWhenIdle();
    return this.closing;
  }

  private async closeWhenIdle(): Promise<void> {
    this.closed = true;
    // Only admitted operations add counts now, so the count only falls: zero is reached once.
    if (this.busy > 0) await new Promise<void>((resolve) => { this.idle = resolve; });
    await new Promise<void>((resolve) => fs.close(this.fd, () => resolve()));
  }
}

/** An fallocate mode the filesystem or device does not do (or not for this alignment): try another way. */
function refused(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'EINVAL';
}

/** Block device size from sysfs (/sys/dev/block/MAJ:MIN/size counts 512-byte sectors). */
async function sysfsBlockSize(rdev: number): Promise<number> {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & 0xfff00);
  const text = await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8').catch(() => {
    throw Object.assign(new Error(`cannot determine the size of block device ${major}:${minor} (no sysfs entry; the native addon provides BLKGETSIZE64)`), { code: 'EINVAL' });
  });
  return Number(text.trim()) * 512;
}
