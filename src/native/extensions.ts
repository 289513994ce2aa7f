import { blockDeviceSize, nativeAvailable, punchHole, seekData, seekHole, zeroRange } from './index.js';

/**
 * The platform calls nbd/'s FileBackend accepts (its `FileExtensions`, same shape): given when the
 * addon loaded, empty otherwise, so the backend falls back (TRIM no-op, zeros written, no extents).
 */
export interface FileExtensions {
  seekData?(fd: number, offset: number): number | null;
  seekHole?(fd: number, offset: number): number;
  punchHole?(fd: number, offset: number, length: number): void;
  zeroRange?(fd: number, offset: number, length: number): void;
  blockDeviceSize?(fd: number): number;
}

export function nativeFileExtensions(): FileExtensions {
  return nativeAvailable ? { seekData, seekHole, punchHole, zeroRange, blockDeviceSize } : {};
}
