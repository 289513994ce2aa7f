/**
 * On-disk layout of a state map file (all integers little-endian):
 *
 *   [0, 4096)       header slot A
 *   [4096, 8192)    header slot B
 *   [8192, …)       cells: 4 bits per region, two regions per byte (even region = low nibble)
 *
 * The header is written alternately to slot A and B with a rising sequence number, so a header
 * update torn by a crash leaves the other slot intact: open() takes the valid slot with the higher
 * sequence. Each slot carries a SHA-256 of its fields; a slot whose digest does not match is invalid,
 * and a file with no valid slot is refused (never guessed at).
 *
 * Cells need no checksum of their own: a torn page write can only mix old and new values of cells
 * whose change had not yet been acknowledged as durable, and every mix is a safe state (see
 * statemap.ts). Values 0x8–0xe are not defined and make the file corrupt.
 */
import { createHash, randomBytes } from 'node:crypto';
import { GeormError } from '../util/errors.js';

export const MAGIC = Buffer.from('GEORMMAP', 'latin1');
export const FORMAT_VERSION = 1;
export const SLOT_SIZE = 4096;
export const CELLS_OFFSET = 2 * SLOT_SIZE;
export const PAGE_SIZE = 4096;
export const CELL_BITS = 4;
export const MAX_NAME_BYTES = 128;
/** Bytes of a slot covered by the digest; the digest follows. */
const HEADER_FIELDS = 224;
const HEADER_BYTES = HEADER_FIELDS + 32;

export const CELL_CLEAN = 0x0;
export const CELL_STALE = 0xf;
/** Highest "inconsistent" level: 0x1–0x7 count writes in flight (saturating). */
export const CELL_INFLIGHT_MAX = 0x7;

/** Header flag: the map is open for writing; found set at open = the last run did not close cleanly. */
export const FLAG_OPEN = 0x1;

export type StateMapErrorCode =
  | 'STATEMAP_ERR_CORRUPT' | 'STATEMAP_ERR_MISMATCH' | 'STATEMAP_ERR_NOT_FOUND' | 'STATEMAP_ERR_EXISTS'
  | 'STATEMAP_ERR_BUSY' | 'STATEMAP_ERR_LOCKED' | 'STATEMAP_ERR_IO' | 'STATEMAP_ERR_CLOSED' | 'STATEMAP_ERR_INVALID';

export class StateMapError extends GeormError {
  declare readonly code: StateMapErrorCode;
  constructor(code: StateMapErrorCode, message: string, options?: { cause?: unknown; exitCode?: number }) {
    super(code, message, options);
    this.name = 'StateMapError';
  }
}

export interface StateMapIdentity { gmdName: string; minor: number; deviceSize: number; regionSize: number }

export interface StateMapHeader extends StateMapIdentity {
  version: number;
  cellBits: number;
  flags: number;
  seq: bigint;
  generation: bigint;
  regionCount: number;
  cellsOffset: number;
  /** Activity-log capacity (regions) of the last writer: bounds the extra resync after its crash. */
  alCapacity: number;
  createdMs: number;
  updatedMs: number;
}

export const DEFAULT_REGION_SIZE = 32 * 1024;
/** Upper bound on regions (64 TiB at 32 KiB regions): keeps every in-memory cell array allocatable. */
export const MAX_REGIONS = 2 ** 31;

export function regionCountFor(deviceSize: number, regionSize: number): number {
  return Math.ceil(deviceSize / regionSize);
}

export function cellBytesFor(regionCount: number): number {
  return Math.ceil(regionCount / 2);
}

export function newGenerationId(): bigint {
  // Never 0, so 0 can mean "unknown" in messages between peers.
  let g = 0n;
  while (g === 0n) g = randomBytes(8).readBigUInt64LE(0);
  return g;
}

/** Checks an identity before it is written into a new file. */
export function validateIdentity(id: StateMapIdentity): void {
  const bad = (msg: string) => new StateMapError('STATEMAP_ERR_INVALID', `invalid state map identity: ${msg}`);
  if (typeof id.gmdName !== 'string' || id.gmdName.length === 0) throw bad('GMD name is empty');
  if (Buffer.byteLength(id.gmdName, 'utf8') > MAX_NAME_BYTES) throw bad(`GMD name longer than ${MAX_NAME_BYTES} bytes`);
  if (!Number.isInteger(id.minor) || id.minor < 0 || id.minor > 1023) throw bad(`minor ${id.minor} outside 0–1023`);
  if (!Number.isSafeInteger(id.deviceSize) || id.deviceSize <= 0) throw bad(`device size ${id.deviceSize} must be a positive whole number of bytes`);
  if (!Number.isInteger(id.regionSize) || id.regionSize < 512 || id.regionSize > 2 ** 30 || (id.regionSize & (id.regionSize - 1)) !== 0) {
    throw bad(`region size ${id.regionSize} must be a power of two between 512 B and 1 GiB`);
  }
  if (regionCountFor(id.deviceSize, id.regionSize) > MAX_REGIONS) {
    throw bad(`a ${id.deviceSize}-byte device needs more than ${MAX_REGIONS} regions of ${id.regionSize} B; use a larger region size`);
  }
}

export function encodeHeader(h: StateMapHeader): Buffer {
  const b = Buffer.alloc(SLOT_SIZE);
  MAGIC.copy(b, 0);
  b.writeUInt16LE(h.version, 8);
  b.writeUInt16LE(HEADER_BYTES, 10);
  b.writeUInt8(h.cellBits, 12);
  b.writeUInt8(h.flags, 13);
  b.writeBigUInt64LE(h.seq, 16);
  b.writeBigUInt64LE(h.generation, 24);
  b.writeBigUInt64LE(BigInt(h.deviceSize), 32);
  b.writeUInt32LE(h.regionSize, 40);
  b.writeUInt32LE(h.minor, 44);
  b.writeBigUInt64LE(BigInt(h.regionCount), 48);
  b.writeBigUInt64LE(BigInt(h.cellsOffset), 56);
  b.writeUInt32LE(h.alCapacity, 64);
  b.writeBigUInt64LE(BigInt(h.createdMs), 72);
  b.writeBigUInt64LE(BigInt(h.updatedMs), 80);
  const name = Buffer.from(h.gmdName, 'utf8');
  b.writeUInt16LE(name.length, 88);
  name.copy(b, 90);
  digest(b.subarray(0, HEADER_FIELDS)).copy(b, HEADER_FIELDS);
  return b;
}

function digest(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

/** Decodes one slot; returns a reason string when the slot is not a valid header. */
export function decodeHeader(b: Buffer): StateMapHeader | string {
  if (b.length < HEADER_BYTES) return 'header slot truncated';
  if (!b.subarray(0, 8).equals(MAGIC)) return 'no state map magic';
  if (!digest(b.subarray(0, HEADER_FIELDS)).equals(b.subarray(HEADER_FIELDS, HEADER_BYTES))) return 'header checksum mismatch';
  const version = b.readUInt16LE(8);
  if (version !== FORMAT_VERSION) return `unsupported format version ${version} (this georm reads version ${FORMAT_VERSION})`;
  const cellBits = b.readUInt8(12);
  if (cellBits !== CELL_BITS) return `unsupported cell size ${cellBits} bits`;
  const nameLen = b.readUInt16LE(88);
  if (nameLen === 0 || nameLen > MAX_NAME_BYTES) return `bad GMD name length ${nameLen}`;
  const deviceSize = b.readBigUInt64LE(32);
  const regionCount = b.readBigUInt64LE(48);
  const cellsOffset = b.readBigUInt64LE(56);
  if (deviceSize > BigInt(Number.MAX_SAFE_INTEGER) || regionCount > BigInt(MAX_REGIONS) || cellsOffset !== BigInt(CELLS_OFFSET)) {
    return 'header fields out of range';
  }
  const h: StateMapHeader = {
    version, cellBits,
    flags: b.readUInt8(13),
    seq: b.readBigUInt64LE(16),
    generation: b.readBigUInt64LE(24),
    deviceSize: Number(deviceSize),
    regionSize: b.readUInt32LE(40),
    minor: b.readUInt32LE(44),
    regionCount: Number(regionCount),
    cellsOffset: Number(cellsOffset),
    alCapacity: b.readUInt32LE(64),
    createdMs: Number(b.readBigUInt64LE(72)),
    updatedMs: Number(b.readBigUInt64LE(80)),
    gmdName: b.toString('utf8', 90, 90 + nameLen),
  };
  try {
    validateIdentity(h);
  } catch (e) {
    return (e as Error).message;
  }
  if (h.regionCount !== regionCountFor(h.deviceSize, h.regionSize)) return 'region count does not match device and region size';
  return h;
}

/**
 * Picks the current header from both slots. Throws STATEMAP_ERR_CORRUPT naming both slots' defects
 * when neither is valid.
 */
export function pickHeader(path: string, slotA: Buffer, slotB: Buffer): { header: StateMapHeader; slot: 0 | 1 } {
  const a = decodeHeader(slotA);
  const b = decodeHeader(slotB);
  if (typeof a === 'string' && typeof b === 'string') {
    if (a === 'no state map magic' && b === 'no state map magic') {
      throw new StateMapError('STATEMAP_ERR_CORRUPT', `${path} is not a georm state map (no magic number); refusing to use it`);
    }
    throw new StateMapError('STATEMAP_ERR_CORRUPT', `state map ${path} is corrupt: slot A: ${a}; slot B: ${b}; refusing to use it (recreate it with 'georm dirty' on the side holding the data)`);
  }
  if (typeof a === 'string') return { header: b as StateMapHeader, slot: 1 };
  if (typeof b === 'string') return { header: a, slot: 0 };
  if (a.gmdName !== b.gmdName || a.minor !== b.minor || a.regionSize !== b.regionSize) {
    // Two valid slots that disagree on identity never happen through this code: something else wrote here.
    throw new StateMapError('STATEMAP_ERR_CORRUPT', `state map ${path} is corrupt: its two header copies describe different devices`);
  }
  return a.seq >= b.seq ? { header: a, slot: 0 } : { header: b, slot: 1 };
}

/** Throws STATEMAP_ERR_MISMATCH when the file's identity differs from what the caller expects. */
export function checkIdentity(path: string, have: StateMapIdentity, expect: Partial<StateMapIdentity> | undefined): void {
  if (!expect) return;
  const diffs: string[] = [];
  if (expect.gmdName !== undefined && expect.gmdName !== have.gmdName) diffs.push(`GMD name '${have.gmdName}' (expected '${expect.gmdName}')`);
  if (expect.minor !== undefined && expect.minor !== have.minor) diffs.push(`minor ${have.minor} (expected ${expect.minor})`);
  if (expect.deviceSize !== undefined && expect.deviceSize !== have.deviceSize) diffs.push(`device size ${have.deviceSize} (expected ${expect.deviceSize})`);
  if (expect.regionSize !== undefined && expect.regionSize !== have.regionSize) diffs.push(`region size ${have.regionSize} (expected ${expect.regionSize})`);
  if (diffs.length) {
    throw new StateMapError('STATEMAP_ERR_MISMATCH', `state map ${path} belongs to another device: ${diffs.join(', ')}; refusing to use it`);
  }
}

/** Checks every cell value; returns unpacked cells (1 byte per region). */
export function unpackCells(path: string, packed: Buffer, regionCount: number): Uint8Array {
  const cells = new Uint8Array(regionCount);
  const full = regionCount >> 1;
  for (let i = 0; i < full; i++) {
    const byte = packed[i]!;
    cells[2 * i] = byte & 0xf;
    cells[2 * i + 1] = byte >> 4;
  }
  if (regionCount & 1) {
    const byte = packed[full]!;
    if (byte >> 4 !== 0) throw new StateMapError('STATEMAP_ERR_CORRUPT', `state map ${path} is corrupt: padding after the last cell is not zero`);
    cells[regionCount - 1] = byte & 0xf;
  }
  for (let r = 0; r < regionCount; r++) {
    const v = cells[r]!;
    if (v > CELL_INFLIGHT_MAX && v !== CELL_STALE) {
      throw new StateMapError('STATEMAP_ERR_CORRUPT', `state map ${path} is corrupt: region ${r} has undefined cell value 0x${v.toString(16)}`);
    }
  }
  return cells;
}

export function packCells(cells: Uint8Array): Buffer {
  const out = Buffer.alloc(cellBytesFor(cells.length));
  for (let r = 0; r < cells.length; r++) out[r >> 1] = out[r >> 1]! | ((cells[r]! & 0xf) << ((r & 1) << 2));
  return out;
}
