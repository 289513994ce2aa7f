/**
 * The GMD's messages between the two sides, carried by GeoMessage (one GeoMessage endpoint per GMD
 * process, so service numbers are per GMD). Data messages have a fixed 16-byte header read with
 * hand-written Buffer reads; control messages are small JSON objects (cold path).
 */

import type { Mode, Role } from '../config/vocabulary.js';
import { getU32, putU32 } from '../../nbd/protocol/bytes.js';

export const SVC_WRITE = 0x21;     // mirror or resync write: header + data
export const SVC_READ = 0x22;      // resync pull: header (offset, length) -> data
export const SVC_FLUSH = 0x23;     // flush the peer's volume
export const SVC_ZERO = 0x24;      // zero / trim a range on the peer
export const SVC_CONTROL = 0x25;   // JSON, ControlMessage below: hello, join, leave, down, cells, or-map, clear-map, clean-regions, resync-done, zero-runs, facts
export const SVC_WRITEV = 0x26;    // several mirror writes in one message: u32 count, then (header + data) each (encodeBatch*/checkWriteBatch)

export const KIND_APP = 0;         // application write being mirrored
export const KIND_RESYNC = 1;      // resync copy (counted separately in statistics)
export const FLAG_FUA = 1;
export const FLAG_TRIM = 2;        // SVC_ZERO: a TRIM: zero, deallocating (punching) where the volume can
export const FLAG_NO_HOLE = 4;     // SVC_ZERO: NBD_CMD_FLAG_NO_HOLE: zero in place, keep the range allocated

export const HEADER_BYTES = 16;

/** Header: u8 kind, u8 flags, u16 reserved, u32 length, u64 offset (as two u32, offsets < 2^53). */
export function encodeHeader(kind: number, flags: number, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_BYTES);
  writeHeader(b, 0, kind, flags, offset, length);
  return b;
}

/** Writes a header into `b` at `at` (batches write all their headers into one buffer; once per mirrored write). */
export function writeHeader(b: Buffer, at: number, kind: number, flags: number, offset: number, length: number): void {
  b[at] = kind; b[at + 1] = flags; b[at + 2] = 0; b[at + 3] = 0;
  putU32(b, at + 4, length);
  putU32(b, at + 8, Math.floor(offset / 0x100000000));
  putU32(b, at + 12, offset);
}

export interface DataHeader { kind: number; flags: number; offset: number; length: number }

/** Parses and range-checks a header; `size` is the device size. Returns null for malformed input. */
export function decodeHeader(p: Buffer, size: number): DataHeader | null {
  if (p.length < HEADER_BYTES) return null;
  const length = headerLength(p, 0);
  const offset = headerOffset(p, 0);
  if (offset + length > size || length === 0) return null;
  return { kind: p[0]!, flags: headerFlags(p, 0), offset, length };
}

// Field readers of the header at `at` (the write path reads batches with these: no object per entry).
export function headerFlags(p: Buffer, at: number): number { return p[at + 1]!; }
export function headerLength(p: Buffer, at: number): number { return getU32(p, at + 4); }
export function headerOffset(p: Buffer, at: number): number { return getU32(p, at + 8) * 0x100000000 + getU32(p, at + 12); }

/**
 * SVC_WRITEV, a batch of mirrored writes: a u32 entry count, then each entry's header and data.
 * The sender (batcher.ts) fills a buffer in place: entries from WRITEV_FIRST_ENTRY on, the count
 * last (putBatchCount).
 */
export const WRITEV_COUNT_BYTES = 4;
export const WRITEV_FIRST_ENTRY = WRITEV_COUNT_BYTES;

export function putBatchCount(b: Buffer, count: number): void { putU32(b, 0, count); }

/**
 * Checks a whole write batch before any of it is applied (bad input changes no data): every entry
 * complete, non-empty, inside a device of `size` bytes, nothing after the last. Returns the entry
 * count, or -1 for a malformed batch. Walk the entries with `at = nextEntry(p, at)` from WRITEV_FIRST_ENTRY.
 */
export function checkWriteBatch(p: Buffer, size: number): number {
  if (p.length < WRITEV_COUNT_BYTES) return -1;
  const n = getU32(p, 0);
  let at = WRITEV_FIRST_ENTRY;
  for (let i = 0; i < n; i++) {
    if (at + HEADER_BYTES > p.length) return -1;
    const length = headerLength(p, at);
    if (length === 0 || headerOffset(p, at) + length > size || at + HEADER_BYTES + length > p.length) return -1;
    at = nextEntry(p, at);
  }
  return at === p.length ? n : -1;
}

/** Where the entry after the one at `at` begins. */
export function nextEntry(p: Buffer, at: number): number { return at + HEADER_BYTES + headerLength(p, at); }

/** The data of the entry at `at` (a view into the message, no copy). */
export function entryData(p: Buffer, at: number): Buffer { return p.subarray(at + HEADER_BYTES, at + HEADER_BYTES + headerLength(p, at)); }

/** Device states as the seed names them. */
export type GmdState = 'DEFINED' | 'STOPPED' | 'STARTING' | 'AVAILABLE';
export type GmdRole = Role;
export type GmdMode = Mode;

/** What a GMD tells its peer about itself (reply to `hello`). */
export interface PeerInfo {
  machine: string;
  gmd: string;
  minor: number;
  size: number;
  mode: GmdMode;
  role: GmdRole;
  state: GmdState;
  /** Non-clean cells in its state map. */
  mapDirty: boolean;
  /** Remote peers it is mirroring to right now. */
  activePeers: string[];
  regionSize: number;
  configDigest: string;
}

export type ControlMessage =
  | { op: 'hello'; from: PeerInfo }
  | { op: 'join'; from: PeerInfo }
  | { op: 'leave' }
  | { op: 'down'; reason: string }
  | { op: 'cells' }
  | { op: 'or-map'; cells: string }          // base64, 1 byte per region
  | { op: 'clear-map' }
  | { op: 'clean-regions'; regions: number[] }
  | { op: 'resync-done' }
  | { op: 'zero-runs'; offset: number; length: number } // reply { runs: ZeroRun[] | null } (zero-runs.ts)
  | { op: 'facts' };
