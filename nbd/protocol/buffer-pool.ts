/**
 * Reusable buffers for the I/O path. A fresh Buffer per request means a fresh ArrayBuffer with
 * external memory, and at hundreds of MB/s V8 spends more time collecting those than the server
 * spends serving (measured: ~half the CPU of 1 MiB requests). Small pieces are carved from 1 MiB
 * slabs (freed by the GC once every piece is gone); large ones come from size-class free lists and
 * go back when the caller releases them (after the socket write or the backend write completed).
 */
const SLAB_SIZE = 1024 * 1024;
/** Pieces up to this size come from slabs. */
export const SLAB_MAX_PIECE = 64 * 1024;
const CLASS = 64 * 1024;
/** Upper bound of idle pooled memory, per process. */
const POOL_MAX_BYTES = 128 * 1024 * 1024;

let slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
let slabPos = 0;
const free = new Map<number, Buffer[]>();
const bases = new WeakMap<ArrayBuffer, Buffer>();
let idleBytes = 0;

/** A buffer of exactly `n` bytes (uninitialised): from a slab when small, else from the pool. */
export function getBuffer(n: number): Buffer {
  if (n <= SLAB_MAX_PIECE) {
    if (slabPos + n > SLAB_SIZE) { slab = Buffer.allocUnsafeSlow(SLAB_SIZE); slabPos = 0; }
    const b = slab.subarray(slabPos, slabPos + n);
    slabPos = (slabPos + n + 7) & ~7;
    return b;
  }
  return getPooledBuffer(n);
}

/**
 * A buffer of exactly `n` bytes (uninitialised) from the pool whatever its size, for memory that
 * comes back through `releaseBuffer` at a high rate (a mirror's write batches, reassembled messages):
 * reused pages cost no page faults and no fresh external memory.
 */
export function getPooledBuffer(n: number): Buffer {
  const cls = Math.max(1, Math.ceil(n / CLASS)) * CLASS;
  const list = free.get(cls);
  let base = list?.pop();
  if (base) idleBytes -= cls;
  else {
    base = Buffer.allocUnsafeSlow(cls);
    bases.set(base.buffer as ArrayBuffer, base);
  }
  return base.subarray(0, n);
}

/**
 * Small buffers that come back: free lists per exact length, for sizes that recur at high rates
 * (NBD WRITE payloads, a mirror's copies of them). A slab piece is fresh memory each time, and V8
 * counts every fresh ArrayBuffer byte against the old generation's limit until the next full GC:
 * at 20k 4 KiB writes/s that alone forced a Mark-Compact every few hundred milliseconds. Reused
 * buffers allocate nothing. Only buffers from here are tracked (a WeakSet as big as the pool).
 */
const reusable = new WeakSet<Buffer>();
const idleReusable = new WeakSet<Buffer>();
const freeReusable = new Map<number, Buffer[]>();

/** A buffer of exactly `n` bytes (uninitialised) that `releaseBuffer` takes back for reuse. */
export function getReusableBuffer(n: number): Buffer {
  if (n > SLAB_MAX_PIECE) return getBuffer(n);
  const b = freeReusable.get(n)?.pop();
  if (b) {
    idleReusable.delete(b);
    idleBytes -= n;
    return b;
  }
  const piece = getBuffer(n);
  reusable.add(piece);
  return piece;
}

/** True when `b` came from the pool (as opposed to a slab), i.e. should be released after use. */
export function isPooled(b: Buffer): boolean {
  return b.length > SLAB_MAX_PIECE && bases.has(b.buffer as ArrayBuffer);
}

/**
 * Returns a pooled or reusable buffer (or any view of a pooled one) for reuse; the caller must not
 * touch it afterwards. Others are ignored.
 */
export function releaseBuffer(b: Buffer): void {
  const base = bases.get(b.buffer as ArrayBuffer);
  if (base) {
    if (idleBytes + base.length > POOL_MAX_BYTES) return;
    let list = free.get(base.length);
    if (!list) { list = []; free.set(base.length, list); }
    if (list.includes(base)) return; // double release: keep one entry
    list.push(base);
    idleBytes += base.length;
    return;
  }
  if (b.length > SLAB_MAX_PIECE || !reusable.has(b) || idleReusable.has(b) || idleBytes + b.length > POOL_MAX_BYTES) return;
  let list = freeReusable.get(b.length);
  if (!list) { list = []; freeReusable.set(b.length, list); }
  list.push(b);
  idleReusable.add(b);
  idleBytes += b.length;
}
