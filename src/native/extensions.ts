import type { FileExtensions } from '../../nbd/index.js';
import { blockDeviceSize, nativeAvailable, pread, punchHoleAsync, pwrite, seekData, seekHole, zeroRangeAsync } from './index.js';

/**
 * The platform calls nbd/'s FileBackend takes as `extensions`: given when the addon loaded, empty
 * otherwise, so the backend falls back (TRIM a no-op, zeros written, everything reported as data).
 * Hole punching and zero ranges are the threadpool variants: they can take seconds on a large range.
 */
export function nativeFileExtensions(): FileExtensions {
  return nativeAvailable ? {
    seekData, seekHole, punchHole: punchHoleAsync, zeroRange: zeroRangeAsync, blockDeviceSize, pread, pwrite,
  } : {};
}
