import type { FileExtensions } from '../../nbd/index.js';
import { blockDeviceSize, nativeAvailable, pread, punchHole, pwrite, seekData, seekHole, zeroRange } from './index.js';

/**
 * The platform calls nbd/'s FileBackend takes as `extensions`: given when the addon loaded, empty
 * otherwise, so the backend falls back (TRIM a no-op, zeros written, everything reported as data).
 */
export function nativeFileExtensions(): FileExtensions {
  return nativeAvailable ? { seekData, seekHole, punchHole, zeroRange, blockDeviceSize, pread, pwrite } : {};
}
