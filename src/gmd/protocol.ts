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
export const SVC_CONTROL = 0x25;
export const SVC_WRITEV = 0x26;    // several mirror writes in one message: u32 count, then (header + data) each   // JSON: hello, join, leave, down, cells, or-map, clear-map, clean-regions, info

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
  const length = getU32(p, 4);
  const offset = getU32(p, 8) * 0x100000000 + getU32(p, 12);
  if (offset + length > size || length === 0) return null;
  return { kind: p[0]!, flags: p[1]!, offset, length };
}

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
