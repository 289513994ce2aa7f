/**
 * File operations on state map files, outside a running map: creating a new file, reading and
 * validating one (header slots, identity, cells), the read-only snapshot used by show-state and dump,
 * the resize that follows a device's size, the map's lock (`<path>.lock`, a pid lock) and the
 * translation of file system errors into StateMapErrors.
 */
import { open as openFile, rename, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { acquirePidLock, releasePidLock } from '../util/pidlock.js';
import {
  CELLS_OFFSET, CELL_BITS, CELL_CLEAN, CELL_STALE, FLAG_OPEN, FORMAT_VERSION, SLOT_SIZE,
  StateMapError, cellBytesFor, checkIdentity, encodeHeader, newGenerationId, packCells, pickHeader, regionCountFor, unpackCells,
  validateIdentity, type StateMapHeader, type StateMapIdentity,
} from './format.js';

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

/** Writes a new, all-clean map file (refuses to overwrite one: STATEMAP_ERR_EXISTS), durably. */
export async function createMapFile(path: string, id: StateMapIdentity): Promise<void> {
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
}

/**
 * Size follows the device: rewrites a closed map for a new device size (seed §6.5.4, growing a
 * volume). Existing cells keep their values; regions beyond the old end get `newRegions` — 'stale'
 * on the side whose data the other must receive (the primary), 'clean' on the other side, or the
 * two maps diverge. Shrinking drops the cells past the new end. The file is replaced atomically
 * (write beside, fsync, rename), under the map's lock.
 */
export async function resizeStateMap(path: string, deviceSize: number, newRegions: 'stale' | 'clean'): Promise<void> {
  const lockPath = await lockMap(path);
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
    await releasePidLock(lockPath);
  }
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

/**
 * Reads an open map file: the valid header slot with the higher sequence, the identity check
 * against `expect`, and the cells (packed as on disk, and one byte per region).
 */
export async function readMap(path: string, fh: FileHandle, expect: Partial<StateMapIdentity> | undefined) {
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

export function ioError(e: unknown, path: string, what: string): StateMapError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' && what === 'create') return new StateMapError('STATEMAP_ERR_NOT_FOUND', `cannot create state map ${path}: directory ${dirname(path)} does not exist`, { cause: e });
  if (code === 'ENOENT') return new StateMapError('STATEMAP_ERR_NOT_FOUND', `state map ${path} does not exist (create it with 'georm configure')`, { cause: e });
  if (code === 'EEXIST') return new StateMapError('STATEMAP_ERR_EXISTS', `state map ${path} already exists; refusing to overwrite it`, { cause: e });
  return new StateMapError('STATEMAP_ERR_IO', `cannot ${what} state map ${path}: ${(e as Error).message}`, { cause: e });
}

/** fsync of a directory, so a created or renamed file's entry is durable too. */
export async function syncDir(dir: string): Promise<void> {
  try {
    const d = await openFile(dir, 'r');
    try { await d.sync(); } finally { await d.close(); }
  } catch {
    // Some filesystems refuse fsync on directories; the file itself is synced.
  }
}

/**
 * One writer per map file: takes `<path>.lock` (util/pidlock.ts) and returns its path. A lock held by
 * a live process is refused (STATEMAP_ERR_LOCKED).
 */
export async function lockMap(path: string): Promise<string> {
  const lockPath = `${path}.lock`;
  let outcome;
  try {
    outcome = await acquirePidLock(lockPath);
  } catch (e) {
    throw ioError(e, path, 'lock');
  }
  if (outcome.taken) return lockPath;
  if (outcome.heldBy !== null) throw new StateMapError('STATEMAP_ERR_LOCKED', `state map ${path} is in use by process ${outcome.heldBy} (lock ${lockPath})`);
  throw new StateMapError('STATEMAP_ERR_LOCKED', `cannot take the lock ${lockPath} of state map ${path}`);
}
